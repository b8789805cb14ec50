"""A trained run, ready to decode: its config, model, weights and vocabulary.

Shared by `evaluate` and `predict`. A run's workdir holds the resolved config
(config.json, also inside every checkpoint), the vocabulary and the Orbax
checkpoints; `restore_run` rebuilds the model from them. An exported model
folder (`fphtr_jax.export`: config.json, vocab.json, weights.msgpack) is read
by `load_model`; the tools take it as `--model=DIR` instead of `--workdir`
(`open_run`). The command lines of both tools take
`--config.section.field=value` overrides of the saved config
(`--config.decode.beam_size=4`), parsed by `cli.parse_flags_with_run_config`.
"""

import contextlib
import dataclasses
import json
import os
from typing import Any, Callable

from absl import flags, logging
import flax
from flax import traverse_util
import flax.linen as nn
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from configs import default as default_config
from fphtr_jax import checkpointing, config_validation, sharding, train
from fphtr_jax import tokenizer as tokenizer_lib

FLAGS = flags.FLAGS
CONFIG_FILENAME = "config.json"
# An exported model folder (fphtr_jax.export): these two beside config.json and vocab.json.
WEIGHTS_FILENAME = "weights.msgpack"
MODEL_INFO_FILENAME = "model.json"


# Flags of both command lines; --config is defined once the workdir is known
# (cli.parse_flags_with_run_config). The trainer, which reads a trained run here
# for train.init_from, has a --workdir of its own.
if "workdir" not in FLAGS:
  flags.DEFINE_string("workdir", None, "Workdir of a training run (config, checkpoints).")
flags.DEFINE_string(
  "model", None, "An exported model folder (python -m fphtr_jax.export), instead of --workdir."
)
flags.DEFINE_string(
  "checkpoint",
  "latest",
  "Which checkpoint: 'latest', 'best' (lowest validation CER) or a step "
  "number of the latest checkpoints.",
)


def _to_config_dict(value, in_tuple: bool = False):
  """JSON -> ConfigDict as the config files write it: tuples, optional (None) strings."""
  if isinstance(value, dict):
    return ml_collections.ConfigDict({k: _to_config_dict(v) for k, v in value.items()})
  if isinstance(value, list):
    return tuple(_to_config_dict(v, in_tuple=True) for v in value)
  if value is None and not in_tuple:  # The unset optional fields of the configs are paths.
    return ml_collections.config_dict.placeholder(str)
  return value


def _merge(config: ml_collections.ConfigDict, saved: dict):
  """Overwrites `config`'s fields with the saved ones, recursively; adds unknown ones."""
  for key, value in saved.items():
    if isinstance(value, dict) and isinstance(config.get(key), ml_collections.ConfigDict):
      _merge(config[key], value)
    elif value is None and key in config:
      config[key] = None  # keeps the field's placeholder type
    else:
      with config.ignore_type():
        config[key] = _to_config_dict(value)


class ConfigFileError(ValueError):
  """A run's config.json that cannot be used; the message names the file."""


# Sections every saved config has (others, like `decode`, came later).
REQUIRED_SECTIONS = ("model", "data", "train")


def read_config_file(path: str) -> dict:
  """The saved config in `path` (a run's config.json), as a dict.

  Raises:
    ConfigFileError: the file cannot be read, is not JSON, or lacks sections.
  """
  fix = "delete it to read the config saved in the newest checkpoint instead"
  try:
    with open(path, encoding="utf-8") as f:
      saved = json.load(f)
  except json.JSONDecodeError as error:
    raise ConfigFileError(
      f"{path} is not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}): {fix}."
    ) from None
  except (OSError, ValueError) as error:
    raise ConfigFileError(
      f"{path} cannot be read ({checkpointing.describe_error(error)}): {fix}."
    ) from None
  if not isinstance(saved, dict):
    raise ConfigFileError(
      f"{path} holds a JSON {type(saved).__name__}, not a run's config (an object with "
      f"sections {', '.join(REQUIRED_SECTIONS)}): {fix}."
    )
  missing = [s for s in REQUIRED_SECTIONS if not isinstance(saved.get(s), dict)]
  if missing:
    raise ConfigFileError(
      f"{path} is not a run's config: it has no {', '.join(missing)} "
      f"section{'s' if len(missing) > 1 else ''}: {fix}."
    )
  return saved


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config of the run in `workdir` (its config.json, else its latest checkpoint).

  Fields that the run's config lacks (added to the project after it was
  trained, like `decode`) take the values of configs/default.py.

  Raises:
    ConfigFileError: config.json is unreadable, not JSON, or not a config.
    FileNotFoundError: there is neither config.json nor a checkpoint.
    checkpointing.DamagedCheckpointError: no config.json, and no checkpoint
      whose config can be read.
  """
  path = os.path.join(workdir, CONFIG_FILENAME)
  if os.path.exists(path):
    saved = read_config_file(path)
  else:
    checkpointer = checkpointing.Checkpointer(workdir, read_only=True)
    try:
      saved = checkpointer.restore_config()
    finally:
      checkpointer.close()
    if saved is None:
      raise FileNotFoundError(
        f"{workdir} has no {CONFIG_FILENAME} and no checkpoint: is it the "
        "--workdir of a training run?"
      )
  config = default_config.get_config()
  _merge(config, saved)
  return config


@flax.struct.dataclass
class InferenceState:
  """The parts of a train state that inference needs (duck-types train.TrainState)."""

  apply_fn: Callable = flax.struct.field(pytree_node=False)
  params: Any
  batch_stats: Any


@dataclasses.dataclass
class Run:
  """A restored training run."""

  config: ml_collections.ConfigDict
  model: Any
  state: InferenceState
  tokenizer: tokenizer_lib.Tokenizer
  step: int
  which: str  # "latest" or "best"
  mesh: jax.sharding.Mesh

  @property
  def variables(self) -> dict:
    return {"params": self.state.params, "batch_stats": self.state.batch_stats}

  @contextlib.contextmanager
  def mesh_context(self):
    """Context for jitted calls: the mesh and the config's logical axis rules."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(sharding.logical_rules(self.config.mesh)):
      yield


def parse_checkpoint(checkpoint: str) -> tuple[str, int | None]:
  """--checkpoint value -> (which manager, step or None for its newest)."""
  if checkpoint in ("latest", "best"):
    return checkpoint, None
  if checkpoint.isdigit():
    return "latest", int(checkpoint)
  raise ValueError(
    f"--checkpoint={checkpoint!r} is invalid: expected 'latest', 'best' or a step number."
  )


CHECKPOINT_ADVICE = "pick another with --checkpoint=latest (the newest intact one), best or a step"


def _run_config(workdir: str, checkpointer: checkpointing.Checkpointer) -> dict | None:
  """The config the run was trained with: config.json, else its newest intact checkpoint's."""
  path = os.path.join(workdir, CONFIG_FILENAME)
  if os.path.exists(path):
    with contextlib.suppress(ConfigFileError):
      return read_config_file(path)
  with contextlib.suppress(checkpointing.DamagedCheckpointError):
    return checkpointer.restore_config()
  return None


def restore_run(
  workdir: str,
  config: ml_collections.ConfigDict,
  checkpoint: str = "latest",
  advice: str = CHECKPOINT_ADVICE,
) -> Run:
  """Rebuilds the model of `config` and restores a checkpoint of `workdir` into it.

  Only reads the workdir. With "latest" or "best", a damaged newest checkpoint
  is skipped with a warning and the newest intact one restored.

  Args:
    workdir: the training run's workdir.
    config: its config (`load_config`), possibly with overrides; those of the
      fields that fix the model's shapes must match the checkpoint's.
    checkpoint: "latest", "best" or a step number, as a string.
    advice: ends the message of a damaged checkpoint's error: how to pick another.

  Returns:
    The Run, its state placed on the mesh of config.mesh.

  Raises:
    ValueError: `checkpoint` is invalid, or `config` has another model shape.
    FileNotFoundError: no such checkpoint.
    checkpointing.DamagedCheckpointError: the step asked for, or every
      checkpoint, cannot be read.
  """
  config_validation.validate_config(config)
  which, step = parse_checkpoint(checkpoint)
  mesh = sharding.create_mesh(config.mesh)
  sharding.check_batch_size(config.eval.batch_size, mesh, "eval.batch_size")
  checkpointer = checkpointing.Checkpointer(workdir, read_only=True)
  try:
    manager = checkpointer.best if which == "best" else checkpointer.latest
    found = checkpointing.read_first_intact(
      manager,
      lambda step: _restore_step(workdir, checkpointer, which, step, config, mesh),
      step,
      checkpointer.damaged,
      advice,
    )
    if found is None:
      raise FileNotFoundError(f"No {which} checkpoint in {manager.directory}.")
  finally:
    checkpointer.close()
  step, (model, restored, tokenizer) = found
  logging.info("Restored the %s checkpoint of step %d from %s.", which, step, workdir)
  state = InferenceState(
    apply_fn=model.apply, params=restored["params"], batch_stats=restored.get("batch_stats", {})
  )
  return Run(
    config=config, model=model, state=state, tokenizer=tokenizer, step=step, which=which, mesh=mesh
  )


def _model_shapes(model, config, mesh):
  """(boxed variable shapes of `model`, their shardings on `mesh`): nothing computed."""
  images, tokens = train.init_inputs(config)
  rules = sharding.logical_rules(config.mesh)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(
      lambda: model.init({"params": jax.random.key(0)}, images, tokens, train=False)
    )
    return boxed, sharding.logical_to_shardings(boxed, mesh, rules)


def _restore_step(workdir: str, checkpointer, which: str, step: int, config, mesh):
  """(model, {"params", "batch_stats"}, tokenizer) of checkpoint `step`; raises if damaged.

  Raises checkpointing.UnusableCheckpointError when `config` changes a shape of the model.
  """
  if which == "latest":
    manager = checkpointer.latest
    # Vocabulary and config; the array files are checked too.
    tokenizer, saved = checkpointer.read_json(step)
  else:
    manager = checkpointer.best
    # The best checkpoints carry no config: the run's is the same.
    saved = _run_config(workdir, checkpointer)
    checkpointing.check_array_files(os.path.join(str(manager.directory), str(step), "state"))
    vocab = checkpointing.read_json_item(manager, step, "vocab")
    tokenizer = tokenizer_lib.Tokenizer.from_json(vocab)
  # An override that changes a shape is refused before anything is restored.
  try:
    config_validation.check_against_checkpoint(
      config, saved, workdir, config_validation.PARAM_SHAPE_FIELDS
    )
  except ValueError as error:
    raise checkpointing.UnusableCheckpointError(str(error)) from None
  # The model's size depends on the vocabulary: read it before building the model.
  model = train.create_model(config, tokenizer)
  # Shapes and shardings only, then the parameters and BatchNorm statistics
  # straight into place; the optimizer state stays on disk.
  boxed, shardings = _model_shapes(model, config, mesh)
  abstract = {
    name: checkpointing.abstract_like(nn.unbox(boxed[name]), shardings[name])
    for name in ("params", "batch_stats")
    if name in boxed
  }
  restored = manager.restore(
    step,
    args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(
        item=abstract,
        restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
        partial_restore=True,
      )
    ),
  )["state"]
  return model, restored, tokenizer


def is_model_dir(path: str) -> bool:
  """Whether `path` is an exported model folder (it has weights.msgpack)."""
  return os.path.isfile(os.path.join(path, WEIGHTS_FILENAME))


def load_model(model_dir: str, config: ml_collections.ConfigDict) -> Run:
  """The exported model in `model_dir` (fphtr_jax.export), on the mesh of config.mesh.

  Args:
    model_dir: the folder: weights.msgpack, config.json, vocab.json, model.json.
    config: its config (`load_config(model_dir)`), possibly with overrides;
      those of the fields that fix the model's shapes must match its own.

  Raises:
    ValueError: `config` has another model shape, or the weights do not fit it.
    OSError: a file of the folder cannot be read.
  """
  config_validation.validate_config(config)
  config_validation.check_against_checkpoint(
    config,
    read_config_file(os.path.join(model_dir, CONFIG_FILENAME)),
    model_dir,
    config_validation.PARAM_SHAPE_FIELDS,
  )
  mesh = sharding.create_mesh(config.mesh)
  sharding.check_batch_size(config.eval.batch_size, mesh, "eval.batch_size")
  tokenizer = tokenizer_lib.Tokenizer.load(model_dir)
  model = train.create_model(config, tokenizer)
  boxed, shardings = _model_shapes(model, config, mesh)
  path = os.path.join(model_dir, WEIGHTS_FILENAME)
  with open(path, "rb") as f:
    saved = flax.serialization.msgpack_restore(f.read())
  restored = {}
  for name in ("params", "batch_stats"):
    if name not in boxed:
      continue
    wanted = traverse_util.flatten_dict(nn.unbox(boxed[name]))
    found = traverse_util.flatten_dict(saved.get(name, {}))
    for key in sorted(wanted.keys() ^ found.keys()):
      where = "missing from the file" if key in wanted else "not in the model of its config"
      raise ValueError(f"{path}: {name} {'/'.join(key)} is {where}.")
    for key, want in wanted.items():
      if tuple(found[key].shape) != tuple(want.shape):
        raise ValueError(
          f"{path}: {name} {'/'.join(key)} has shape {tuple(found[key].shape)}, the model "
          f"of its config {tuple(want.shape)}."
        )
    values = {key: np.asarray(found[key]).astype(want.dtype) for key, want in wanted.items()}
    restored[name] = jax.device_put(traverse_util.unflatten_dict(values), shardings[name])
  with open(os.path.join(model_dir, MODEL_INFO_FILENAME), encoding="utf-8") as f:
    step = int(json.load(f).get("step", 0))
  logging.info("Loaded the exported model of step %d from %s.", step, model_dir)
  state = InferenceState(
    apply_fn=model.apply, params=restored["params"], batch_stats=restored.get("batch_stats", {})
  )
  return Run(
    config=config,
    model=model,
    state=state,
    tokenizer=tokenizer,
    step=step,
    which="model",
    mesh=mesh,
  )


def open_run(config: ml_collections.ConfigDict) -> Run:
  """The tools' run: --model's exported model, else --workdir's --checkpoint."""
  if FLAGS.model:
    return load_model(FLAGS.model, config)
  return restore_run(FLAGS.workdir, config, FLAGS.checkpoint)
