"""Fine-tuning: a new run that starts from a trained one (`train.init_from`).

A new run (its workdir has no checkpoint) with `train.init_from` set takes
the source run's parameters and BatchNorm statistics, with a fresh optimizer
state and schedule at step 0. Its vocabulary is the source's followed by the
characters of `data.charset` that the source lacks (`merge_charsets`), so
every source character keeps its token id, its embedding row and its output
row; a new character gets the new model's freshly initialised rows. The
source is read with `inference.restore_run` (newest intact checkpoint, damaged
ones skipped), or `inference.load_model` for an exported model folder (its
float16 parameters made float32 again), and nothing else of its model may
differ: another shape is an error naming the parameter, both shapes and the
config field.

`train.freeze` names parameter groups to keep fixed (`frozen_labels`, used
by optimizer.py); a frozen encoder also runs in inference mode (train.py).
"""

import copy
import dataclasses
import os
from typing import Any, NamedTuple

from flax import traverse_util
import flax.linen as nn
import jax
import ml_collections

from fphtr_jax import checkpointing, config_validation
from fphtr_jax import tokenizer as tokenizer_lib

# Parameters with one row per token: path in the model's "params" -> the vocabulary axis.
# Rows are token ids (fphtr_jax/tokenizer.py), special ids first.
VOCAB_AXES = {
  ("text_decoder", "embed", "embedding"): 0,  # [vocab, d_model]
  ("text_decoder", "head", "kernel"): 1,  # [d_model, vocab]
  ("text_decoder", "head", "bias"): 0,  # [vocab]
}
SELECTORS = ("latest", "best")
FORMS = (
  "a trained run's workdir (its newest intact checkpoint), WORKDIR:best, WORKDIR:STEP, "
  f"a checkpoint folder (WORKDIR/{checkpointing.CHECKPOINT_DIR}/STEP, "
  f"WORKDIR/{checkpointing.BEST_DIR}/STEP), or an exported model folder (fphtr_jax.export)"
)


def merge_charsets(source: str, new: str) -> str:
  """The source's characters, in their order, then those of `new` it lacks, in theirs."""
  return source + "".join(dict.fromkeys(c for c in new if c not in source))


class InitFrom(NamedTuple):
  """A parsed `train.init_from`."""

  workdir: str
  checkpoint: str  # as inference.parse_checkpoint takes it: "latest", "best" or a step
  best_step: int | None  # WORKDIR/best/STEP: the best checkpoint must be that step


def parse_init_from(value: str) -> InitFrom:
  """`train.init_from` -> (workdir, checkpoint, best step); see FORMS for what it takes."""
  if ":" in value:
    head, tail = value.rsplit(":", 1)
    if tail in SELECTORS or tail.isdigit():
      return InitFrom(_local_path(head), tail, None)
  path = _local_path(value)
  parent, leaf = os.path.split(path)
  if leaf in (checkpointing.CHECKPOINT_DIR, checkpointing.BEST_DIR):  # WORKDIR/best: its best
    return InitFrom(parent, "best" if leaf == checkpointing.BEST_DIR else "latest", None)
  run, folder = os.path.split(parent)
  if leaf.isdigit() and folder == checkpointing.CHECKPOINT_DIR:
    return InitFrom(run, leaf, None)
  if leaf.isdigit() and folder == checkpointing.BEST_DIR:
    return InitFrom(run, "best", int(leaf))
  return InitFrom(path, "latest", None)


def _local_path(path: str) -> str:
  """`~` expanded and trailing slashes dropped, for local paths; remote ones as they are."""
  if "://" in path:
    return path.rstrip("/")
  return os.path.normpath(os.path.expanduser(path))


@dataclasses.dataclass
class Source:
  """A trained run's checkpoint, read to start a new run from."""

  init_from: str  # train.init_from, as given
  workdir: str
  which: str  # "latest" or "best"
  step: int
  config: ml_collections.ConfigDict  # the source run's config
  tokenizer: tokenizer_lib.Tokenizer
  params: Any  # on this run's mesh
  batch_stats: Any


def restore_source(config: ml_collections.ConfigDict) -> Source:
  """Reads the checkpoint that config.train.init_from names; writes nothing.

  The source's parameters are placed on config.mesh (its shardings of the
  source's own model). Raises ValueError, its message starting with
  `train.init_from=...`, when the source cannot be read.
  """
  # Imported here: inference defines the command-line flags of evaluate and
  # predict, which the trainer's own --workdir would clash with at import.
  from fphtr_jax import inference  # pylint: disable=g-import-not-at-top

  value = config.train.init_from
  where = parse_init_from(value)
  if "://" not in where.workdir and not os.path.isdir(where.workdir):
    raise ValueError(f"train.init_from={value!r}: {where.workdir} is no folder; expected {FORMS}.")
  advice = "name another with train.init_from=WORKDIR:STEP, or WORKDIR for the newest intact one"
  is_model = inference.is_model_dir(where.workdir)
  if is_model and where.checkpoint != "latest":
    raise ValueError(f"train.init_from={value!r}: a model folder holds one model; name the folder.")
  try:
    source_config = inference.load_config(where.workdir)
    # The source's model, restored onto this run's devices.
    source_config.mesh = copy.deepcopy(config.mesh)
    source_config.eval.batch_size = config.eval.batch_size
    if is_model:
      run = inference.load_model(where.workdir, source_config)
    else:
      run = inference.restore_run(where.workdir, source_config, where.checkpoint, advice=advice)
  except (ValueError, OSError) as error:
    raise ValueError(f"train.init_from={value!r}: {error}") from None
  if where.best_step is not None and run.step != where.best_step:
    raise ValueError(
      f"train.init_from={value!r}: the best checkpoint of {where.workdir} is step {run.step}, "
      f"not {where.best_step} (a run keeps one); use {where.workdir}:best."
    )
  return Source(
    init_from=value,
    workdir=where.workdir,
    which=run.which,
    step=run.step,
    config=run.config,
    tokenizer=run.tokenizer,
    params=run.state.params,
    batch_stats=run.state.batch_stats,
  )


def _shape_mismatch(source: Source, config, what: str) -> ValueError:
  differ = config_validation.state_shape_differences(
    config, source.config.to_dict(), config_validation.PARAM_SHAPE_FIELDS
  )
  fields = [f"{field}={new!r} here, {old!r} in the source" for field, new, old in differ]
  likely = "; ".join(fields) if fields else "a model.* field differs"
  return ValueError(
    f"train.init_from={source.init_from!r}: the source's model has another shape: {what} "
    f"({likely}). Fine-tuning keeps the source's model: set those fields to the source's "
    f"values (its config.json), or train from scratch without train.init_from."
  )


def _without(shape: tuple, axis: int) -> tuple:
  return shape[:axis] + shape[axis + 1 :]


def check_shapes(source: Source, fresh: dict, config):
  """Raises ValueError unless `fresh` ({"params", "batch_stats"}) fits the source's variables.

  Every parameter and statistic must have the source's shape, except that the
  vocabulary axis of VOCAB_AXES may have grown; the error names the first
  that differs, both shapes and the config fields that differ from the source's.
  """
  missing = [p for p in VOCAB_AXES if p not in traverse_util.flatten_dict(fresh["params"])]
  if missing:  # the model renamed them: rows could not be copied by token id
    raise ValueError(f"The model has no parameter {'/'.join(missing[0])} (finetune.VOCAB_AXES).")
  for collection, theirs in (("params", source.params), ("batch_stats", source.batch_stats)):
    old = traverse_util.flatten_dict(theirs)
    new = traverse_util.flatten_dict(fresh.get(collection, {}))
    for path in sorted(set(old) | set(new)):
      name = f"{collection}/{'/'.join(path)}"
      if path not in old or path not in new:
        side = "this config's model" if path in new else "the source's model"
        raise _shape_mismatch(source, config, f"only {side} has {name}")
      shape, wanted = tuple(old[path].shape), tuple(new[path].shape)
      axis = VOCAB_AXES.get(path) if collection == "params" else None
      if axis is None:
        fits = shape == wanted
      else:  # one more row per new character
        fits = _without(shape, axis) == _without(wanted, axis) and shape[axis] <= wanted[axis]
      if not fits:
        raise _shape_mismatch(source, config, f"{name} is {shape} there and {wanted} here")


def check_model(source: Source, model, inputs, config):
  """`check_shapes` for `model`'s variables, from their shapes alone: nothing is compiled.

  `inputs`: the (images, tokens) of its init (train.init_inputs).
  """
  init = lambda: model.init({"params": jax.random.key(0)}, *inputs, train=False)
  check_shapes(source, nn.unbox(jax.eval_shape(init)), config)


def start_from_source(state, shardings, source: Source, config):
  """A fresh train state (step 0) with the source's parameters and BatchNorm statistics.

  Args:
    state: the new run's freshly initialised train state (train.create_train_state).
    shardings: its shardings; the result is laid out the same way.
    source: from `restore_source`; `check_shapes` checks it here again.
    config: the new run's config (for the error message).

  Returns:
    `state` with every parameter taken from the source, except the rows of
    tokens the source lacks (VOCAB_AXES: ids from source.tokenizer.vocab_size
    on), which keep their fresh values; the optimizer state is initialised
    anew for these parameters.
  """
  fresh = {"params": state.params, "batch_stats": state.batch_stats}
  check_shapes(source, fresh, config)

  def merge(fresh_params, source_params, source_stats):
    merged = traverse_util.flatten_dict(source_params)
    for path, axis in VOCAB_AXES.items():
      new = traverse_util.flatten_dict(fresh_params)[path]
      merged[path] = jax.lax.dynamic_update_slice_in_dim(new, merged[path], 0, axis)
    params = traverse_util.unflatten_dict(merged)
    return params, source_stats, state.tx.init(params)

  params, batch_stats, opt_state = jax.jit(
    merge, out_shardings=(shardings.params, shardings.batch_stats, shardings.opt_state)
  )(state.params, source.params, source.batch_stats)
  return state.replace(params=params, batch_stats=batch_stats, opt_state=opt_state)


def frozen_labels(params, freeze) -> Any:
  """`params`' tree with "freeze" on the leaves of the groups in `freeze`, "train" elsewhere.

  `freeze`: names of config_validation.FREEZE_GROUPS ("encoder", "decoder"),
  each the first key of its parameters' paths. A parameter boxed with its
  logical axis names (at init) gets one label, so that the optimizer state
  of a frozen one is no box around nothing.
  """
  frozen = {config_validation.FREEZE_GROUPS[name] for name in freeze}
  return jax.tree_util.tree_map_with_path(
    lambda path, _: "freeze" if path[0].key in frozen else "train",
    params,
    is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned),
  )
