"""Training losses: token cross-entropy and the guided cross-attention loss."""

import jax
import jax.numpy as jnp
import optax

from fphtr_jax.tokenizer import PAD_ID


def token_loss(logits, targets, weights, label_smoothing: float = 0.0):
  """Cross-entropy over non-PAD target tokens, and token accuracy.

  logits float32 [B, T, V]; targets int32 [B, T]; weights float32 [B, T].
  Returns (mean loss, mean accuracy) over the weighted tokens.
  """
  labels = jax.nn.one_hot(targets, logits.shape[-1])
  if label_smoothing:
    labels = optax.smooth_labels(labels, label_smoothing)
  losses = optax.softmax_cross_entropy(logits.astype(jnp.float32), labels)
  correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
  total = jnp.maximum(weights.sum(), 1.0)
  return (losses * weights).sum() / total, (correct * weights).sum() / total


def attention_loss(attention, glyph_centres, weights, image_shape, stride, sigma: float):
  """Guided cross-attention: -log of the attention mass near each token's glyph.

  attention: float32 [B, T, S], one layer's cross-attention averaged over
    heads, over the encoder's row-major grid of S cells.
  glyph_centres: float32 [B, T, 2], (y, x) in image pixels of target token t.
  weights: float32 [B, T]; image_shape: (H, W); stride: pixels per cell (y, x);
  sigma: width of the Gaussian around each glyph, in cells.

  Returns the weighted mean over tokens of -log(sum_s attention * gaussian),
  the Gaussian peaking at 1 on the glyph: 0 when all attention is there.
  """
  rows = -(-image_shape[0] // stride[0])
  cols = attention.shape[-1] // rows

  def distance(cells, size, coordinate):  # [B, T, cells], in cells
    return ((jnp.arange(cells) + 0.5) * size - 0.5 - coordinate[..., None]) / size

  dy = distance(rows, stride[0], glyph_centres[..., 0])
  dx = distance(cols, stride[1], glyph_centres[..., 1])
  gaussian = jnp.exp(-(dy[..., :, None] ** 2 + dx[..., None, :] ** 2) / (2 * sigma**2))
  mass = (attention * gaussian.reshape(attention.shape)).sum(-1)
  losses = -jnp.log(mass + 1e-6)
  return (losses * weights).sum() / jnp.maximum(weights.sum(), 1.0)


def split_batch(batch):
  """Teacher forcing: (decoder inputs, targets, weights) from <SOS> ... <EOS> <PAD> tokens.

  inputs / targets int32 [B, T - 1]; weights float32 [B, T - 1], 0 at <PAD>
  targets and for the examples whose batch["mask"] is 0.
  """
  tokens = batch["tokens"]
  inputs, targets = tokens[:, :-1], tokens[:, 1:]
  weights = (targets != PAD_ID).astype(jnp.float32)
  if "mask" in batch:
    weights = weights * batch["mask"][:, None]
  return inputs, targets, weights
