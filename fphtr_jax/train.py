"""Training and evaluation loop for FPHTR.

Reads top to bottom: optimizer, train state, loss, train/eval/predict steps,
then `train_and_evaluate`, the outer loop that owns everything stateful
(data iterators, writers, checkpoints, progress).
"""

import contextlib
import functools
import os
import signal
import sys
import threading
import time
from typing import Any

import flax
from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm
from absl import logging
from clu import metric_writers, metrics, periodic_actions
from flax.training import train_state

from fphtr_jax import checkpointing, decoding, sharding, visualize
from fphtr_jax import metrics as text_metrics
from fphtr_jax import tokenizer as tokenizer_lib
from fphtr_jax.models import fphtr, resnet


class TrainState(train_state.TrainState):
  batch_stats: Any
  # Steps whose update was dropped because the loss, a gradient or a new
  # parameter was not finite: in all, and in a row up to this step.
  skipped_steps: jax.Array
  skipped_in_a_row: jax.Array


@flax.struct.dataclass
class LearningRate(metrics.LastValue):
  """The last step's learning rate, whether or not the step was skipped."""

  @classmethod
  def from_model_output(cls, learning_rate, **_):
    return cls(total=learning_rate, count=jnp.array(1, jnp.int32))


@flax.struct.dataclass
class TrainMetrics(metrics.Collection):
  """Averages over the steps since the last log, skipped steps masked out."""
  loss: metrics.Average.from_output("loss")
  attention_loss: metrics.Average.from_output("attention_loss")
  accuracy: metrics.Average.from_output("accuracy")
  grad_norm: metrics.Average.from_output("grad_norm")
  learning_rate: LearningRate


@flax.struct.dataclass
class EvalMetrics(metrics.Collection):
  loss: metrics.Average.from_output("loss")
  accuracy: metrics.Average.from_output("accuracy")


# --- Config checks -------------------------------------------------------------

def _require(ok: bool, field: str, value, expected: str):
  if not ok:
    raise ValueError(f"config.{field}={value!r} is invalid: expected {expected}.")


def validate_config(config: ml_collections.ConfigDict):
  """Fails early, naming the field, on values that would fail hours later."""
  for section in ("model", "data", "train", "eval", "checkpoint", "mesh", "decode"):
    _require(section in config, section, None, "a config section")
  t, e, c, d, m = config.train, config.eval, config.checkpoint, config.data, config.model
  _require(t.num_steps > 0, "train.num_steps", t.num_steps, "a positive integer")
  _require(t.batch_size > 0, "train.batch_size", t.batch_size, "a positive integer")
  _require(t.learning_rate > 0, "train.learning_rate", t.learning_rate, "a positive float")
  _require(t.optimizer in ("adam", "adamw"), "train.optimizer", t.optimizer, "'adam' or 'adamw'")
  _require(t.schedule in ("constant", "cosine"), "train.schedule", t.schedule,
           "'constant' or 'cosine'")
  _require(t.warmup_steps >= 0, "train.warmup_steps", t.warmup_steps, "0 or more")
  _require(t.grad_clip_norm >= 0, "train.grad_clip_norm", t.grad_clip_norm, "0 (off) or more")
  _require(0 <= t.label_smoothing < 1, "train.label_smoothing", t.label_smoothing, "in [0, 1)")
  _require(t.attention_loss_weight >= 0, "train.attention_loss_weight", t.attention_loss_weight,
           "0 (off) or more")
  _require(t.attention_sigma > 0, "train.attention_sigma", t.attention_sigma,
           "a positive number of feature cells")
  if t.attention_loss_weight:
    _require(d.source == "embedded", "train.attention_loss_weight", t.attention_loss_weight,
             "0 with data.source='iam' (only synthetic pages know where each character is)")
  _require(t.max_skipped_steps >= 0, "train.max_skipped_steps", t.max_skipped_steps,
           "0 or more")
  _require(t.log_every_steps > 0, "train.log_every_steps", t.log_every_steps, "a positive integer")
  _require(e.every_steps > 0, "eval.every_steps", e.every_steps, "a positive integer")
  _require(e.batch_size > 0, "eval.batch_size", e.batch_size, "a positive integer")
  _require(e.num_examples > 0, "eval.num_examples", e.num_examples, "a positive integer")
  _require(c.every_steps > 0, "checkpoint.every_steps", c.every_steps, "a positive integer")
  _require(c.max_to_keep > 0, "checkpoint.max_to_keep", c.max_to_keep, "a positive integer")
  _require(tuple(m.encoder_last_stride) in ((2, 2), (2, 1), (1, 2), (1, 1)),
           "model.encoder_last_stride", m.encoder_last_stride, "(2, 2), (2, 1), (1, 2) or (1, 1)")
  for field, stride in zip(("image_height", "image_width"),
                           resnet.encoder_stride(m.encoder_last_stride)):
    _require(d[field] >= stride, f"data.{field}", d[field],
             f"at least {stride} pixels (the encoder's stride)")
  _require(d.curriculum_steps >= 0, "data.curriculum_steps", d.curriculum_steps, "0 or more")
  _require(0 <= d.single_line_pages <= 1, "data.single_line_pages", d.single_line_pages,
           "a share in [0, 1]")
  _require(d.max_image_pixels > 0, "data.max_image_pixels", d.max_image_pixels,
           "a positive number of pixels")
  _require(d.max_len >= 3, "data.max_len", d.max_len, "at least 3 (<SOS>, a character, <EOS>)")
  _require(d.source in ("embedded", "iam"), "data.source", d.source, "'embedded' or 'iam'")
  _require(0 <= d.synthetic_proba <= 1, "data.synthetic_proba", d.synthetic_proba, "in [0, 1]")
  if d.source == "iam":
    _require(bool(d.get("iam_dir")), "data.iam_dir", d.get("iam_dir"),
             "the folder of your IAM download, e.g. --config.data.iam_dir=~/data/iam "
             "(configs/iam_*.py define the IAM fields)")
    _require(d.level in ("word", "line", "form"), "data.level", d.level,
             "'word', 'line' or 'form'")
    _require(0 < d.get("iam_scale", 0.5) <= 1, "data.iam_scale", d.get("iam_scale"), "in (0, 1]")
    _require(d.get("iam_split", "aachen") in ("aachen", "random"), "data.iam_split",
             d.get("iam_split"), "'aachen' or 'random'")
    _require(d.get("iam_bad_image", "skip") in ("skip", "error"), "data.iam_bad_image",
             d.get("iam_bad_image"), "'skip' or 'error'")
  dec = config.decode
  _require(dec.beam_size >= 1, "decode.beam_size", dec.beam_size, "1 (greedy) or more")
  _require(dec.length_penalty >= 0, "decode.length_penalty", dec.length_penalty, "0 or more")
  _require(dec.max_len == 0 or 2 <= dec.max_len <= d.max_len, "decode.max_len", dec.max_len,
           f"0 (= data.max_len) or 2 to data.max_len={d.max_len}")


# --- Model and train state -----------------------------------------------------

def create_optimizer(train_config) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Adam(W) with an optional linear warmup, cosine decay and global-norm clipping."""
  lr, warmup = train_config.learning_rate, train_config.warmup_steps
  if train_config.schedule == "cosine":
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, lr, warmup, decay_steps=max(train_config.num_steps, warmup + 1))
  elif warmup:
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup])
  else:
    schedule = optax.constant_schedule(lr)
  if train_config.optimizer == "adamw":
    optimizer = optax.adamw(schedule, weight_decay=train_config.weight_decay)
  else:
    optimizer = optax.adam(schedule)
  if train_config.grad_clip_norm:
    optimizer = optax.chain(optax.clip_by_global_norm(train_config.grad_clip_norm), optimizer)
  return optimizer, schedule


def create_model(config, tokenizer) -> fphtr.FPHTR:
  return fphtr.create_model(config.model, tokenizer.vocab_size, config.data.max_len)


def create_train_state(config, model, mesh, rng) -> tuple[TrainState, Any]:
  """Initialises the state directly in its sharded layout.

  `jax.eval_shape` gives the shapes and logical axis names without computing
  anything; the jitted init then writes each shard on its device, so no host
  ever holds a full unsharded copy. Parameters and optimizer state are
  float32 whatever model.dtype computes in. Returns (state, state_shardings).
  """
  d = config.data
  images = jnp.zeros((1, d.image_height, d.image_width, 1), jnp.float32)
  tokens = jnp.zeros((1, d.max_len - 1), jnp.int32)
  optimizer, _ = create_optimizer(config.train)

  def init(rng):
    variables = model.init({"params": rng, "dropout": rng}, images, tokens, train=False)
    return TrainState.create(apply_fn=model.apply, params=variables["params"],
                             batch_stats=variables.get("batch_stats", {}), tx=optimizer,
                             skipped_steps=jnp.zeros((), jnp.int32),
                             skipped_in_a_row=jnp.zeros((), jnp.int32))

  rules = sharding.logical_rules(config.mesh)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(init, rng)
    shardings = sharding.logical_to_shardings(boxed, mesh, rules)
    state = jax.jit(lambda r: nn.unbox(init(r)), out_shardings=shardings)(rng)
  logging.info("Train state on %s: parameters %.1f MiB, optimizer state %.1f MiB per device.",
               dict(mesh.shape), sharding.bytes_per_device(state.params) / 2**20,
               sharding.bytes_per_device(state.opt_state) / 2**20)
  return state, shardings


# --- Steps ---------------------------------------------------------------------

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
  gaussian = jnp.exp(-(dy[..., :, None] ** 2 + dx[..., None, :] ** 2) / (2 * sigma ** 2))
  mass = (attention * gaussian.reshape(attention.shape)).sum(-1)
  losses = -jnp.log(mass + 1e-6)
  return (losses * weights).sum() / jnp.maximum(weights.sum(), 1.0)


def _split_batch(batch):
  """Decoder input, targets and weights from <SOS> ... <EOS> <PAD> tokens."""
  tokens = batch["tokens"]
  inputs, targets = tokens[:, :-1], tokens[:, 1:]
  weights = (targets != tokenizer_lib.PAD_ID).astype(jnp.float32)
  if "mask" in batch:
    weights = weights * batch["mask"][:, None]
  return inputs, targets, weights


def _micro_batches(batch, num_micro: int):
  """[B, ...] arrays -> [num_micro, B / num_micro, ...], micro-batch i = rows i, i + n, ...

  Interleaved rather than contiguous: every device's block of the batch holds
  its share of every micro-batch, so no example moves between devices.
  """
  size = batch["tokens"].shape[0]
  if size % num_micro:
    raise ValueError(f"train.grad_accum_steps={num_micro} does not divide the batch of {size} "
                     f"examples; train.batch_size must be a multiple of train.grad_accum_steps.")

  def split(x):
    x = x.reshape((size // num_micro, num_micro) + x.shape[1:]).swapaxes(0, 1)
    return nn.with_logical_constraint(x, (None, "batch") + (None,) * (x.ndim - 2))

  return jax.tree.map(split, batch)


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(tree)]))


def configured_train_step(config: ml_collections.ConfigDict):
  """`train_step` with config.train's loss, schedule and accumulation bound in."""
  t = config.train
  _, schedule = create_optimizer(t)
  return functools.partial(
      train_step, label_smoothing=t.label_smoothing, schedule=schedule,
      grad_accum_steps=t.grad_accum_steps, attention_loss_weight=t.attention_loss_weight,
      attention_sigma=t.attention_sigma,
      encoder_stride=resnet.encoder_stride(config.model.encoder_last_stride))


def train_step(state: TrainState, batch, rng, *, label_smoothing: float, schedule,
               grad_accum_steps: int = 1, attention_loss_weight: float = 0.0,
               attention_sigma: float = 1.0, encoder_stride=(32, 32)):
  """One optimizer step on a global batch; returns (new state, TrainMetrics).

  A step whose loss, gradients or new parameters are not all finite is
  skipped: parameters, optimizer and BatchNorm state stay as they were, the
  step counter still advances (the data position is a function of it), and
  `skipped_steps` / `skipped_in_a_row` count it. Its metrics are masked out.

  With grad_accum_steps = n > 1 the batch is split into n micro-batches of
  B / n examples that run one after another (lax.scan, so activations of only
  one micro-batch are alive); their gradients are summed, each micro-batch's
  loss weighted by its share of the batch's target tokens. The step then equals
  a step on the whole batch except for BatchNorm, which normalises each
  micro-batch with its own statistics and updates its running averages once
  per micro-batch. Losses and gradients are float32 whatever model.dtype is.

  With attention_loss_weight > 0 the batch holds "glyph_centres" and the
  loss adds that weight times `attention_loss` of every decoder layer
  (averaged); `loss` in the metrics stays the token loss alone.
  """
  dropout_rng = jax.random.fold_in(rng, state.step)
  total_weight = jnp.maximum(_split_batch(batch)[2].sum(), 1.0)

  guided = attention_loss_weight > 0

  def loss_fn(params, batch_stats, micro_batch, dropout_rng):
    inputs, targets, weights = _split_batch(micro_batch)
    images = micro_batch["image"]
    logits, updates = state.apply_fn(
        {"params": params, "batch_stats": batch_stats}, images, inputs,
        train=True, rngs={"dropout": dropout_rng},
        mutable=["batch_stats", "intermediates"] if guided else ["batch_stats"])
    loss, accuracy = token_loss(logits, targets, weights, label_smoothing)
    guide = jnp.float32(0)
    if guided:
      layers = jax.tree.leaves(updates["intermediates"])
      guide = sum(attention_loss(a, micro_batch["glyph_centres"], weights, images.shape[1:3],
                                 encoder_stride, attention_sigma) for a in layers) / len(layers)
    # Losses average over this micro-batch's tokens; reweight to the batch's.
    share = jnp.maximum(weights.sum(), 1.0) / total_weight
    total = (loss + attention_loss_weight * guide) * share
    return total, (loss * share, guide * share, accuracy * share, updates["batch_stats"])

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if grad_accum_steps == 1:
    (_, (loss, guide, accuracy, batch_stats)), grads = grad_fn(
        state.params, state.batch_stats, batch, dropout_rng)
  else:
    def accumulate(carry, micro):
      grads, batch_stats, loss, guide, accuracy = carry
      micro_batch, index = micro
      (_, (micro_loss, micro_guide, micro_accuracy, batch_stats)), micro_grads = grad_fn(
          state.params, batch_stats, micro_batch, jax.random.fold_in(dropout_rng, index))
      grads = jax.tree.map(jnp.add, grads, micro_grads)
      return (grads, batch_stats, loss + micro_loss, guide + micro_guide,
              accuracy + micro_accuracy), None

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    (grads, batch_stats, loss, guide, accuracy), _ = jax.lax.scan(
        accumulate, (zeros, state.batch_stats) + (jnp.float32(0),) * 3,
        (_micro_batches(batch, grad_accum_steps), jnp.arange(grad_accum_steps)))

  updated = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  finite = _all_finite((loss, guide, grads, updated.params, updated.batch_stats))
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  new_state = updated.replace(
      params=keep(updated.params, state.params),
      opt_state=keep(updated.opt_state, state.opt_state),
      batch_stats=keep(updated.batch_stats, state.batch_stats),
      skipped_steps=state.skipped_steps + (~finite).astype(jnp.int32),
      skipped_in_a_row=jnp.where(finite, 0, state.skipped_in_a_row + 1))
  # Metrics take [1]-shaped outputs so that the mask leaves skipped steps out.
  step_metrics = TrainMetrics.single_from_model_output(
      loss=loss[None], attention_loss=guide[None], accuracy=accuracy[None],
      grad_norm=optax.tree.norm(grads)[None],
      learning_rate=schedule(state.step), mask=finite[None])
  return new_state, step_metrics


def eval_step(state: TrainState, batch):
  """Teacher-forced loss and token accuracy of a batch (padding examples masked)."""
  inputs, targets, weights = _split_batch(batch)
  logits = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats},
                          batch["image"], inputs, train=False)
  loss, accuracy = token_loss(logits, targets, weights)
  return EvalMetrics.single_from_model_output(loss=loss, accuracy=accuracy)


def predict_step(state: TrainState, images, *, model, max_len: int):
  """Greedy transcription: int32 [B, max_len] tokens starting with <SOS>."""
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  return decoding.greedy_decode(model, variables, images, max_len)


# --- Evaluation ----------------------------------------------------------------

def evaluate(p_eval_step, p_predict_step, state, eval_ds, tokenizer, mesh, num_images: int):
  """Scores the eval set: teacher-forced loss/accuracy, greedy CER/WER, sample pages."""
  eval_metrics = None
  references, hypotheses, pages = [], [], []
  for batch in eval_ds.as_numpy_iterator():
    global_batch = sharding.put_batch(batch, mesh)
    update = p_eval_step(state, global_batch)
    eval_metrics = update if eval_metrics is None else eval_metrics.merge(update)
    # The whole global batch on every process, so all score the same examples.
    predicted = sharding.to_host(p_predict_step(state, global_batch["image"]))
    keep = sharding.to_host(global_batch["mask"]) > 0
    refs = tokenizer.decode_batch(sharding.to_host(global_batch["tokens"])[keep])
    hyps = tokenizer.decode_batch(predicted[keep])
    references += refs
    hypotheses += hyps
    if len(pages) < num_images:
      for image, ref, hyp in zip(sharding.to_host(global_batch["image"])[keep], refs, hyps):
        if len(pages) < num_images:
          pages.append(visualize.page_with_text(image, ref, hyp))
  summary = {f"eval/{k}": float(v) for k, v in eval_metrics.compute().items()}
  summary["eval/cer"] = text_metrics.character_error_rate(references, hypotheses)
  summary["eval/wer"] = text_metrics.word_error_rate(references, hypotheses)
  return summary, pages, list(zip(references, hypotheses))


# --- The loop ------------------------------------------------------------------

class StopRequest:
  """Turns SIGTERM/SIGINT into a request to stop at the next step boundary.

  The loop then saves a checkpoint of the finished step and exits cleanly,
  instead of dying mid-step and losing everything since the last save.
  """

  def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
    self.signals = signals
    self.signal_name = None
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    if self.signal_name is not None:  # A second signal: stop right away.
      raise KeyboardInterrupt
    self.signal_name = signal.Signals(signum).name
    logging.warning("%s received: saving a checkpoint after this step, then stopping "
                    "(send it again to stop at once).", self.signal_name)

  def __enter__(self):
    for sig in self.signals:
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  @property
  def requested(self) -> bool:
    return self.signal_name is not None


def _check_skipped_steps(state, step: int, max_skipped: int, checkpointer):
  """Aborts when more than `max_skipped` steps in a row had non-finite values."""
  in_a_row = int(state.skipped_in_a_row)
  if in_a_row > max_skipped:
    checkpointer.wait()
    last = checkpointer.latest_step()
    where = (f"The last checkpoint, step {last} in {checkpointer.latest.directory}, holds the "
             "parameters from before these steps." if last is not None else "No checkpoint "
             "was saved yet.")
    raise FloatingPointError(
        f"Stopped at step {step}: the last {in_a_row} steps had a non-finite loss, gradient "
        f"or parameter and were skipped (train.max_skipped_steps={max_skipped}). {where} "
        "Lower train.learning_rate, set train.grad_clip_norm, or check the data.")


def _write_config(config, workdir: str):
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))


# Fields that fix the shapes of the train state: a checkpoint trained with other
# values cannot be resumed.
STATE_SHAPE_FIELDS = ("model.encoder", "model.encoder_width", "model.d_model",
                      "model.num_layers", "model.num_heads", "model.mlp_dim", "model.pre_norm",
                      "data.max_len", "train.optimizer", "train.grad_clip_norm")


def _load_tokenizer(config, workdir: str, checkpointer) -> tokenizer_lib.Tokenizer:
  """The config's vocabulary, checked against the checkpoints already in `workdir`."""
  tokenizer = tokenizer_lib.Tokenizer(config.data.charset)
  saved = checkpointer.restore_vocab()
  if saved is not None and saved != tokenizer:
    raise ValueError(
        f"The checkpoints in {workdir} were trained with data.charset={saved.charset!r}, "
        f"but the config has {tokenizer.charset!r}. Use another --workdir or the same charset.")
  saved_config = checkpointer.restore_config()
  if saved_config is not None:
    differ = []
    for field in STATE_SHAPE_FIELDS:
      section, name = field.split(".")
      old, new = saved_config.get(section, {}).get(name), config[section].get(name)
      if old != new:
        differ.append(f"{field}={new!r} (checkpoint: {old!r})")
    if differ:
      raise ValueError(
          f"The checkpoints in {workdir} were trained with another model: "
          f"{', '.join(differ)}. Use another --workdir, or the checkpoint's values.")
  return tokenizer


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str):
  """Trains `config` in `workdir`, resuming from its latest checkpoint."""
  from input_pipeline import pipeline  # TensorFlow is only needed by the outer loop.

  validate_config(config)
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0

  mesh = sharding.create_mesh(config.mesh)
  sharding.check_batch_size(config.train.batch_size, mesh, "train.batch_size")
  sharding.check_batch_size(config.eval.batch_size, mesh, "eval.batch_size")
  accum = config.train.grad_accum_steps
  _require(accum >= 1 and config.train.batch_size % accum == 0, "train.grad_accum_steps", accum,
           f"a divisor of train.batch_size={config.train.batch_size}")
  sharding.check_batch_size(config.train.batch_size // accum, mesh,
                            "train.batch_size / train.grad_accum_steps")
  checkpointer = checkpointing.Checkpointer(workdir, config.checkpoint)
  tokenizer = _load_tokenizer(config, workdir, checkpointer)
  if is_main:  # Only once the config is known to fit the workdir's checkpoints.
    _write_config(config, workdir)
    tokenizer.save(workdir)

  rng = jax.random.key(config.train.seed, impl=config.train.rng_impl)
  init_rng, dropout_rng = jax.random.split(rng)
  model = create_model(config, tokenizer)
  state, state_shardings = create_train_state(config, model, mesh, init_rng)
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  logging.info("Model: %s encoder, %.2fM parameters.", config.model.encoder, num_params / 1e6)

  if checkpointer.latest_step() is not None:
    abstract = checkpointing.abstract_like(state, state_shardings)
    state, _ = checkpointer.restore(abstract)
    logging.info("Resumed from step %d in %s.", int(state.step), workdir)
  start_step = int(state.step)

  train_ds, eval_ds = pipeline.create_datasets(
      config, process_index=jax.process_index(), process_count=jax.process_count(),
      start_step=start_step)
  train_iter = train_ds.as_numpy_iterator()

  batch_sharding = sharding.batch_sharding(mesh)
  rules = sharding.logical_rules(config.mesh)
  p_train_step = jax.jit(
      configured_train_step(config),
      in_shardings=(state_shardings, batch_sharding, None),
      out_shardings=(state_shardings, None), donate_argnums=0)
  p_eval_step = jax.jit(eval_step, in_shardings=(state_shardings, batch_sharding))
  p_predict_step = jax.jit(functools.partial(predict_step, model=model, max_len=config.data.max_len),
                           in_shardings=(state_shardings, batch_sharding))

  writer = metric_writers.create_default_writer(workdir, just_logging=not is_main)
  if start_step == 0:
    writer.write_hparams(_flat_hparams(config))
  num_steps = config.train.num_steps
  report_progress = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer)
  progress_bar = tqdm.tqdm(total=num_steps, initial=start_step, unit="step", dynamic_ncols=True,
                           disable=not (is_main and sys.stderr.isatty()))
  train_metrics = None
  last_log_time, last_log_step, input_wait = time.time(), start_step, 0.0

  logging.info("Training from step %d to %d.", start_step, num_steps)
  # Signal handlers can only be installed from the main thread.
  in_main_thread = threading.current_thread() is threading.main_thread()
  # With several processes, SIGTERM is left to JAX's preemption notifier, so
  # that all processes agree on the step to save at (reached_preemption below);
  # a Ctrl-C reaches one process only, so it stops at once, as usual.
  multi_process = jax.process_count() > 1
  stop = StopRequest(() if multi_process else (signal.SIGTERM, signal.SIGINT))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules), (
      stop if in_main_thread else contextlib.nullcontext()):
    for step in range(start_step + 1, num_steps + 1):
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        wait_start = time.perf_counter()
        batch = next(train_iter)
        input_wait += time.perf_counter() - wait_start
        batch = sharding.put_batch(batch, mesh)
        state, update = p_train_step(state, batch, dropout_rng)
        train_metrics = update if train_metrics is None else train_metrics.merge(update)
      report_progress(step)
      progress_bar.update(1)

      if step % config.train.log_every_steps == 0 or step == num_steps:
        summary = {f"train/{k}": float(v) for k, v in train_metrics.compute().items()}
        now = time.time()
        steps_per_s = (step - last_log_step) / (now - last_log_time)
        summary["train/examples_per_s"] = steps_per_s * config.train.batch_size
        summary["train/steps_per_s"] = steps_per_s
        summary["train/skipped_steps"] = int(state.skipped_steps)
        _check_skipped_steps(state, step, config.train.max_skipped_steps, checkpointer)
        # Share of the time the loop waited for the input pipeline: near 0
        # when tf.data keeps ahead of the step.
        summary["train/input_wait_fraction"] = input_wait / (now - last_log_time)
        writer.write_scalars(step, summary)
        progress_bar.set_postfix(loss=f"{summary['train/loss']:.3f}",
                                 ex_s=f"{summary['train/examples_per_s']:.1f}")
        train_metrics, last_log_time, last_log_step, input_wait = None, now, step, 0.0

      if step % config.eval.every_steps == 0 or step == num_steps:
        with report_progress.timed("eval"):
          summary, pages, pairs = evaluate(p_eval_step, p_predict_step, state, eval_ds,
                                           tokenizer, mesh, config.eval.num_images)
        writer.write_scalars(step, summary)
        if pages:
          writer.write_images(step, {"eval/pages": visualize.stack_images(pages)})
        writer.write_texts(step, {"eval/sample": visualize.markdown_pairs(pairs[:4])})
        checkpointer.save_if_best(step, state, tokenizer,
                                  {"step": step, "cer": summary["eval/cer"],
                                   "wer": summary["eval/wer"]})
        # Greedy decoding is slow: restart the rate clock after eval.
        last_log_time = time.time()

      # Read once: a signal may land anywhere in this block.
      stopping = stop.requested or (multi_process and checkpointer.reached_preemption(step))
      if step % config.checkpoint.every_steps == 0 or step == num_steps or stopping:
        with report_progress.timed("checkpoint"):
          checkpointer.save(step, state, tokenizer, config, force=stopping)
      writer.flush()
      if stopping:
        logging.warning("Stopped by %s at step %d; checkpoint saved in %s. Run the same "
                        "command again to resume.", stop.signal_name or "SIGTERM", step, workdir)
        break

  progress_bar.close()
  checkpointer.wait()
  checkpointer.close()
  writer.close()
  return state


def _flat_hparams(config) -> dict:
  flat = traverse_util.flatten_dict(config.to_dict(), sep=".")
  return {k: v for k, v in flat.items() if isinstance(v, (int, float, str, bool))}
