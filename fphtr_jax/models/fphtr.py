"""FPHTR: a ResNet encoder reads the page, a transformer decoder writes its text.

Variables: "params" (float32, every leaf boxed with logical axis names),
"batch_stats" (BatchNorm running statistics), and, for step-by-step decoding,
"cache".

Decoding with the KV cache:

  cache = init_cache(model, batch_size, memory_len)   # zeros, position 0
  memory = model.apply(variables, images, train=False, method=FPHTR.encode)
  logits, mutated = model.apply(
      {**variables, "cache": cache}, memory, tokens[:, :1], train=False,
      decode=True, method=FPHTR.decode, mutable=["cache"])
  cache = mutated["cache"]   # feed the next token with this cache

Each call consumes one token per example ([B, 1]) at the next position and
returns logits [B, 1, vocab_size]; up to `max_len` steps fit in the cache.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fphtr_jax.models import decoder as decoder_lib
from fphtr_jax.models import resnet

ENCODERS = tuple(resnet.RESNETS)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# config.model fields that become FPHTR attributes unchanged.
_CONFIG_FIELDS = (
  "encoder",
  "encoder_width",
  "encoder_last_stride",
  "d_model",
  "num_layers",
  "num_heads",
  "mlp_dim",
  "dropout_rate",
  "pre_norm",
)


class FPHTR(nn.Module):
  """Image-to-sequence model for full-page handwriting recognition.

  Attributes:
    vocab_size: tokens, including <PAD>=0, <SOS>=1, <EOS>=2.
    max_len: longest token sequence (position table and cache length).
    encoder: resnet18 | resnet34 | resnet50.
    encoder_width: ResNet stem/first-stage channels (64 = torchvision).
    encoder_last_stride: (height, width) stride of the last ResNet stage.
    d_model, num_layers, num_heads, mlp_dim, dropout_rate: decoder size.
    pre_norm: pre-norm decoder layers (with a final LayerNorm).
    dtype: compute dtype; parameters and logits stay float32.
  """

  vocab_size: int
  max_len: int
  encoder: str = "resnet18"
  encoder_width: int = 64
  encoder_last_stride: tuple[int, int] = (2, 2)
  d_model: int = 260
  num_layers: int = 6
  num_heads: int = 4
  mlp_dim: int = 1024
  dropout_rate: float = 0.1
  pre_norm: bool = False
  dtype: Any = jnp.float32

  def setup(self):
    self.image_encoder = resnet.ImageEncoder(
      encoder=self.encoder,
      width=self.encoder_width,
      last_stride=tuple(self.encoder_last_stride),
      d_model=self.d_model,
      dropout_rate=self.dropout_rate,
      dtype=self.dtype,
    )
    self.text_decoder = decoder_lib.TextDecoder(
      vocab_size=self.vocab_size,
      max_len=self.max_len,
      d_model=self.d_model,
      num_layers=self.num_layers,
      num_heads=self.num_heads,
      mlp_dim=self.mlp_dim,
      dropout_rate=self.dropout_rate,
      pre_norm=self.pre_norm,
      dtype=self.dtype,
    )

  def __call__(self, images, tokens, *, train: bool):
    """Teacher-forced logits.

    Args:
      images: float32 [B, H, W, 1].
      tokens: int32 [B, T] decoder input, starting with <SOS>.
      train: batch statistics and dropout on (needs a "dropout" rng and a
        mutable "batch_stats").

    Returns:
      float32 [B, T, vocab_size]; position t predicts token t + 1.
    """
    memory = self.encode(images, train=train)
    return self.decode(memory, tokens, train=train)

  def encode(self, images, *, train: bool):
    """float32 [B, H, W, 1] -> memory [B, ceil(H/32) * ceil(W/32), d_model] in dtype."""
    return self.image_encoder(images, train=train)

  def decode(self, memory, tokens, *, train: bool, decode: bool = False):
    """memory [B, S, d_model], tokens int32 [B, T] -> float32 [B, T, vocab_size].

    With decode=True, tokens is [B, 1] and the "cache" collection (see
    init_cache) must be passed in and mutable.
    """
    return self.text_decoder(memory, tokens, train=train, decode=decode)


def create_model(model_config, vocab_size: int, max_len: int) -> FPHTR:
  """Builds FPHTR from config.model, checking the fields it depends on."""
  if model_config.encoder not in resnet.RESNETS:
    raise ValueError(f"model.encoder={model_config.encoder!r} is unknown; use one of {ENCODERS}.")
  if model_config.dtype not in DTYPES:
    raise ValueError(f"model.dtype={model_config.dtype!r} is unknown; use one of {tuple(DTYPES)}.")
  if model_config.d_model % model_config.num_heads:
    raise ValueError(
      f"model.d_model={model_config.d_model} must be divisible by "
      f"model.num_heads={model_config.num_heads}."
    )
  if model_config.d_model % 4:
    raise ValueError(
      f"model.d_model={model_config.d_model} must be divisible by 4 "
      "(the 2D position encoding needs a sin/cos pair per axis)."
    )
  return FPHTR(
    vocab_size=vocab_size,
    max_len=max_len,
    dtype=DTYPES[model_config.dtype],
    **{name: model_config[name] for name in _CONFIG_FIELDS},
  )


def init_cache(model: FPHTR, batch_size: int, memory_len: int):
  """An empty decoding cache: zeros, every cache_index at 0.

  Args:
    model: the FPHTR whose decoder the cache is for.
    batch_size: examples decoded together (batch x beams for beam search).
    memory_len: S, the encoder memory length (cells of the feature grid).

  Returns:
    The "cache" collection; self-attention caches hold model.max_len steps.
  """
  memory = jnp.zeros((batch_size, memory_len, model.d_model), model.dtype)
  tokens = jnp.zeros((batch_size, 1), jnp.int32)
  # Shapes only: no parameters are computed; every cache entry starts at zero.
  shapes = jax.eval_shape(
    lambda: model.init(
      jax.random.key(0), memory, tokens, train=False, decode=True, method=FPHTR.decode
    )["cache"]
  )
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
