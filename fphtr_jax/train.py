"""Training loop for FPHTR.

Reads top to bottom: train state, train step, then `train_and_evaluate`, the
outer loop that owns everything stateful (data iterators, writers,
checkpoints, progress). Losses are in losses.py, the optimizer in
optimizer.py, the evaluation in evaluation.py, config checks in
config_validation.py, the stop-on-signal handling in preemption.py and the
workdir's lock in workdir.py.
"""

import functools
import os
import signal
import sys
import threading
import time
from typing import Any

from absl import logging
from clu import metric_writers, metrics, periodic_actions
import flax
import flax.linen as nn
from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections
import optax
import tqdm

from fphtr_jax import (
  checkpointing,
  config_validation,
  evaluation,
  finetune,
  hparams,
  losses,
  optimizer,
  preemption,
  sharding,
  visualize,
)
from fphtr_jax import tokenizer as tokenizer_lib
from fphtr_jax import workdir as workdir_lib
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


# --- Model and train state -----------------------------------------------------


def create_model(config, tokenizer) -> fphtr.FPHTR:
  return fphtr.create_model(config.model, tokenizer.vocab_size, config.data.max_len)


def init_inputs(config) -> tuple[jax.Array, jax.Array]:
  """Dummy (images float32 [1, H, W, 1], decoder tokens int32 [1, T - 1]) for model.init."""
  d = config.data
  return (
    jnp.zeros((1, d.image_height, d.image_width, 1), jnp.float32),
    jnp.zeros((1, d.max_len - 1), jnp.int32),
  )


def create_train_state(config, model, mesh, rng) -> tuple[TrainState, Any]:
  """Initialises the state directly in its sharded layout.

  `jax.eval_shape` gives the shapes and logical axis names without computing
  anything; the jitted init then writes each shard on its device, so no host
  ever holds a full unsharded copy. Parameters and optimizer state are
  float32 whatever model.dtype computes in. Returns (state, state_shardings).
  """
  images, tokens = init_inputs(config)
  tx, _ = optimizer.create_optimizer(config.train)

  def init(rng):
    variables = model.init({"params": rng, "dropout": rng}, images, tokens, train=False)
    return TrainState.create(
      apply_fn=model.apply,
      params=variables["params"],
      batch_stats=variables.get("batch_stats", {}),
      tx=tx,
      skipped_steps=jnp.zeros((), jnp.int32),
      skipped_in_a_row=jnp.zeros((), jnp.int32),
    )

  rules = sharding.logical_rules(config.mesh)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(init, rng)
    shardings = sharding.logical_to_shardings(boxed, mesh, rules)
    state = jax.jit(lambda r: nn.unbox(init(r)), out_shardings=shardings)(rng)
  logging.info(
    "Train state on %s: parameters %.1f MiB, optimizer state %.1f MiB per device.",
    dict(mesh.shape),
    sharding.bytes_per_device(state.params) / 2**20,
    sharding.bytes_per_device(state.opt_state) / 2**20,
  )
  return state, shardings


# --- Steps ---------------------------------------------------------------------


def _micro_batches(batch, num_micro: int):
  """[B, ...] arrays -> [num_micro, B / num_micro, ...], micro-batch i = rows i, i + n, ...

  Interleaved rather than contiguous: every device's block of the batch holds
  its share of every micro-batch, so no example moves between devices.
  """
  size = batch["tokens"].shape[0]
  if size % num_micro:
    raise ValueError(
      f"train.grad_accum_steps={num_micro} does not divide the batch of {size} "
      f"examples; train.batch_size must be a multiple of train.grad_accum_steps."
    )

  def split(x):
    x = x.reshape((size // num_micro, num_micro) + x.shape[1:]).swapaxes(0, 1)
    return nn.with_logical_constraint(x, (None, "batch") + (None,) * (x.ndim - 2))

  return jax.tree.map(split, batch)


def _all_finite(tree) -> jax.Array:
  """bool scalar: whether every entry of `tree` is finite.

  Read off one global norm: it is finite exactly when every entry is, unless
  it overflows float32 (entries beyond about 1e19, a diverged step, which is
  then skipped too). A test per array, selected on, doubled the time XLA's
  CPU backend takes to compile the train step.
  """
  return jnp.isfinite(optax.tree.norm(tree))


def configured_train_step(config: ml_collections.ConfigDict):
  """`train_step` with config.train's loss, schedule and accumulation bound in."""
  t = config.train
  _, schedule = optimizer.create_optimizer(t)
  return functools.partial(
    train_step,
    label_smoothing=t.label_smoothing,
    schedule=schedule,
    grad_accum_steps=t.grad_accum_steps,
    attention_loss_weight=t.attention_loss_weight,
    attention_sigma=t.attention_sigma,
    encoder_stride=resnet.encoder_stride(config.model.encoder_last_stride),
    frozen_encoder="encoder" in tuple(t.freeze),
  )


def train_step(
  state: TrainState,
  batch,
  rng,
  *,
  label_smoothing: float,
  schedule,
  grad_accum_steps: int = 1,
  attention_loss_weight: float = 0.0,
  attention_sigma: float = 1.0,
  encoder_stride=(32, 32),
  frozen_encoder: bool = False,
):
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

  With frozen_encoder (train.freeze holds "encoder") the encoder runs as at
  inference: BatchNorm with its running statistics, which stay as they are,
  no dropout, and no gradient; the optimizer leaves its parameters alone.
  """
  dropout_rng = jax.random.fold_in(rng, state.step)
  total_weight = jnp.maximum(losses.split_batch(batch)[2].sum(), 1.0)

  guided = attention_loss_weight > 0

  def loss_fn(params, batch_stats, micro_batch, dropout_rng):
    inputs, targets, weights = losses.split_batch(micro_batch)
    images = micro_batch["image"]
    variables = {"params": params, "batch_stats": batch_stats}
    mutable = ["batch_stats", "intermediates"] if guided else ["batch_stats"]
    if frozen_encoder:
      memory = state.apply_fn(variables, images, train=False, method=fphtr.FPHTR.encode)
      logits, updates = state.apply_fn(
        variables,
        jax.lax.stop_gradient(memory),
        inputs,
        train=True,
        rngs={"dropout": dropout_rng},
        mutable=mutable,
        method=fphtr.FPHTR.decode,
      )
    else:
      logits, updates = state.apply_fn(
        variables, images, inputs, train=True, rngs={"dropout": dropout_rng}, mutable=mutable
      )
    loss, accuracy = losses.token_loss(logits, targets, weights, label_smoothing)
    guide = jnp.float32(0)
    if guided:
      layers = jax.tree.leaves(updates["intermediates"])
      guide = sum(
        losses.attention_loss(
          a,
          micro_batch["glyph_centres"],
          weights,
          images.shape[1:3],
          encoder_stride,
          attention_sigma,
        )
        for a in layers
      ) / len(layers)
    # Losses average over this micro-batch's tokens; reweight to the batch's.
    share = jnp.maximum(weights.sum(), 1.0) / total_weight
    total = (loss + attention_loss_weight * guide) * share
    return total, (loss * share, guide * share, accuracy * share, updates["batch_stats"])

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if grad_accum_steps == 1:
    (_, (loss, guide, accuracy, batch_stats)), grads = grad_fn(
      state.params, state.batch_stats, batch, dropout_rng
    )
  else:

    def accumulate(carry, micro):
      grads, batch_stats, loss, guide, accuracy = carry
      micro_batch, index = micro
      (_, (micro_loss, micro_guide, micro_accuracy, batch_stats)), micro_grads = grad_fn(
        state.params, batch_stats, micro_batch, jax.random.fold_in(dropout_rng, index)
      )
      grads = jax.tree.map(jnp.add, grads, micro_grads)
      return (
        grads,
        batch_stats,
        loss + micro_loss,
        guide + micro_guide,
        accuracy + micro_accuracy,
      ), None

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    (grads, batch_stats, loss, guide, accuracy), _ = jax.lax.scan(
      accumulate,
      (zeros, state.batch_stats) + (jnp.float32(0),) * 3,
      (_micro_batches(batch, grad_accum_steps), jnp.arange(grad_accum_steps)),
    )

  updated = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  finite = _all_finite((loss, guide, grads, updated.params, updated.batch_stats))
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  new_state = updated.replace(
    params=keep(updated.params, state.params),
    opt_state=keep(updated.opt_state, state.opt_state),
    batch_stats=keep(updated.batch_stats, state.batch_stats),
    skipped_steps=state.skipped_steps + (~finite).astype(jnp.int32),
    skipped_in_a_row=jnp.where(finite, 0, state.skipped_in_a_row + 1),
  )
  # Metrics take [1]-shaped outputs so that the mask leaves skipped steps out.
  step_metrics = TrainMetrics.single_from_model_output(
    loss=loss[None],
    attention_loss=guide[None],
    accuracy=accuracy[None],
    grad_norm=optax.tree.norm(grads)[None],
    learning_rate=schedule(state.step),
    mask=finite[None],
  )
  return new_state, step_metrics


# --- The loop ------------------------------------------------------------------


def _check_skipped_steps(state, step: int, max_skipped: int, checkpointer):
  """Aborts when more than `max_skipped` steps in a row had non-finite values."""
  in_a_row = int(state.skipped_in_a_row)
  if in_a_row > max_skipped:
    checkpointer.wait()
    last = checkpointer.latest_step()
    where = (
      f"The last checkpoint, step {last} in {checkpointer.latest.directory}, holds the "
      "parameters from before these steps."
      if last is not None
      else "No checkpoint was saved yet."
    )
    raise FloatingPointError(
      f"Stopped at step {step}: the last {in_a_row} steps had a non-finite loss, gradient "
      f"or parameter and were skipped (train.max_skipped_steps={max_skipped}). {where} "
      "Lower train.learning_rate, set train.grad_clip_norm, or check the data."
    )


def _write_config(config, workdir: str):
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))


def _load_tokenizer(
  config, workdir: str, checkpointer, source: finetune.Source | None = None
) -> tokenizer_lib.Tokenizer:
  """The config's vocabulary, checked against the checkpoints already in `workdir`.

  With train.init_from, the vocabulary of the run it started from (`source`,
  or once the workdir has checkpoints, theirs) followed by the config's
  characters that it lacks.
  """
  saved = checkpointer.restore_vocab()
  charset = config.data.charset
  if config.train.init_from:
    base = source.tokenizer if saved is None else saved
    charset = finetune.merge_charsets(base.charset, charset)
  tokenizer = tokenizer_lib.Tokenizer(charset)
  if saved is not None and saved != tokenizer:
    raise ValueError(
      f"The checkpoints in {workdir} were trained with data.charset={saved.charset!r}, "
      f"but the config has {tokenizer.charset!r}. Use another --workdir or the same charset."
    )
  config_validation.check_against_checkpoint(config, checkpointer.restore_config(), workdir)
  return tokenizer


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str):
  """Trains `config` in `workdir`, resuming from its latest checkpoint.

  Everything that can refuse the run (the config, the mesh, the workdir's
  lock and checkpoints, the data sources) is checked before anything in the
  workdir is written, so a refused run leaves the workdir as it was.
  """
  config_validation.validate_config(config)
  workdir_lib.check_workdir(workdir)
  mesh = sharding.create_mesh(config.mesh)
  config_validation.check_mesh(config, mesh)

  # Signal handlers can only be installed from the main thread. With several
  # processes, SIGTERM is left to JAX's preemption notifier, so that all
  # processes agree on the step to save at (reached_preemption below); a
  # Ctrl-C reaches one process only, so it stops at once, as usual.
  in_main_thread = threading.current_thread() is threading.main_thread()
  multi_process = jax.process_count() > 1
  signals = () if multi_process or not in_main_thread else (signal.SIGTERM, signal.SIGINT)
  stop = preemption.StopRequest(signals)
  # Only process 0 owns the workdir: the others share process 0's run.
  lock = workdir_lib.WorkdirLock(workdir, take=jax.process_index() == 0)
  with stop, lock:
    stop.at_exit(lock.release)
    return _train(config, workdir, mesh, stop)


def _train(config, workdir: str, mesh, stop: preemption.StopRequest):
  """The body of `train_and_evaluate`, run while this process holds the workdir."""
  from input_pipeline import datasets  # TensorFlow is only needed by the outer loop.

  is_main = jax.process_index() == 0
  # Opening the managers deletes unfinished saves: only under the lock.
  checkpointer = checkpointing.Checkpointer(workdir, config.checkpoint)
  stop.watch_saves(
    lambda: checkpointer.latest.is_saving_in_progress() or checkpointer.best.is_saving_in_progress()
  )
  datasets.resolve_charset(config)  # data.charset="auto": the saved vocabulary holds the characters
  source = None
  if config.train.init_from and checkpointer.latest_step() is None:
    source = finetune.restore_source(config)
  elif config.train.init_from:
    logging.info(
      "Resuming from the checkpoints in %s; train.init_from=%s is not read.",
      workdir,
      config.train.init_from,
    )
  tokenizer = _load_tokenizer(config, workdir, checkpointer, source)
  # The data are tokenized by data.charset: it becomes a fine-tuning run's merged one.
  if tokenizer.charset != config.data.charset:
    config.data.charset = tokenizer.charset

  rng = jax.random.key(config.train.seed, impl=config.train.rng_impl)
  init_rng, dropout_rng = jax.random.split(rng)
  model = create_model(config, tokenizer)
  if source is not None:  # before the model is compiled: another shape is refused at once
    finetune.check_model(source, model, init_inputs(config), config)
  state, state_shardings = create_train_state(config, model, mesh, init_rng)
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  logging.info("Model: %s encoder, %.2fM parameters.", config.model.encoder, num_params / 1e6)
  if source is not None:
    state = finetune.start_from_source(state, state_shardings, source, config)
    logging.info(
      "Starting from the %s checkpoint, step %d, of %s (vocabulary %d -> %d tokens).",
      source.which,
      source.step,
      source.workdir,
      source.tokenizer.vocab_size,
      tokenizer.vocab_size,
    )

  if checkpointer.latest_step() is not None:
    abstract = checkpointing.abstract_like(state, state_shardings)
    state, _ = checkpointer.restore(abstract)
    logging.info("Resumed from step %d in %s.", int(state.step), workdir)
  start_step = int(state.step)
  # Stopping before the first step loses nothing: the run starts here again.
  stop.finished(start_step)
  stop.saved(start_step)

  # Loads the word banks and checks fonts and text files (or IAM's files).
  train_ds, eval_ds = datasets.create_datasets(
    config,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    start_step=start_step,
  )
  train_iter = train_ds.as_numpy_iterator()

  if is_main:  # Only once every check above has passed.
    _write_config(config, workdir)
    tokenizer.save(workdir)

  batch_sharding = sharding.batch_sharding(mesh)
  rules = sharding.logical_rules(config.mesh)
  p_train_step = jax.jit(
    configured_train_step(config),
    in_shardings=(state_shardings, batch_sharding, None),
    out_shardings=(state_shardings, None),
    donate_argnums=0,
  )
  evaluator = evaluation.Evaluator(model, config, tokenizer, mesh)

  writer = metric_writers.create_default_writer(workdir, just_logging=not is_main)
  if is_main:  # at every (re)start: the hardware may have changed
    run_hparams = hparams.write_run_hparams(workdir, config)
    logging.info(
      "Running on %d %s device(s) (%s).",
      run_hparams["run.device_count"],
      run_hparams["run.device_kind"],
      run_hparams["run.backend"],
    )
  num_steps = config.train.num_steps
  report_progress = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer)
  progress_bar = tqdm.tqdm(
    total=num_steps,
    initial=start_step,
    unit="step",
    dynamic_ncols=True,
    disable=not (is_main and sys.stderr.isatty()),
  )
  train_metrics = None
  last_log_time, last_log_step, input_wait = time.time(), start_step, 0.0

  logging.info("Training from step %d to %d.", start_step, num_steps)
  multi_process = jax.process_count() > 1
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    for step in range(start_step + 1, num_steps + 1):
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        wait_start = time.perf_counter()
        batch = next(train_iter)
        input_wait += time.perf_counter() - wait_start
        batch = sharding.put_batch(batch, mesh)
        state, update = p_train_step(state, batch, dropout_rng)
        stop.finished(step)
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
        progress_bar.set_postfix(
          loss=f"{summary['train/loss']:.3f}", ex_s=f"{summary['train/examples_per_s']:.1f}"
        )
        train_metrics, last_log_time, last_log_step, input_wait = None, now, step, 0.0

      if step % config.eval.every_steps == 0 or step == num_steps:
        with report_progress.timed("eval"):
          summary, predictions, pages = evaluator(state, eval_ds, num_images=config.eval.num_images)
        writer.write_scalars(
          step, {f"eval/{k}": summary[k] for k in ("loss", "accuracy", "cer", "wer")}
        )
        if pages:
          writer.write_images(step, {"eval/pages": visualize.stack_images(pages)})
        writer.write_texts(
          step,
          {
            "eval/sample": visualize.markdown_pairs(
              [(p["reference"], p["hypothesis"]) for p in predictions[:4]]
            )
          },
        )
        checkpointer.save_if_best(
          step, state, tokenizer, {"step": step, "cer": summary["cer"], "wer": summary["wer"]}
        )
        # Decoding is slow: restart the rate clock after eval.
        last_log_time = time.time()

      # Read once: a signal may land anywhere in this block.
      stopping = stop.requested or (multi_process and checkpointer.reached_preemption(step))
      if step % config.checkpoint.every_steps == 0 or step == num_steps or stopping:
        with report_progress.timed("checkpoint"):
          if checkpointer.save(step, state, tokenizer, config, force=stopping):
            stop.saved(step)
      writer.flush()
      if stopping:
        logging.warning(
          "Stopped by %s at step %d; checkpoint saved in %s. Run the same command again to resume.",
          stop.signal_name or "SIGTERM",
          step,
          workdir,
        )
        break

  progress_bar.close()
  checkpointer.wait()
  checkpointer.close()
  writer.close()
  return state
