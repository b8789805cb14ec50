"""A trained run, ready to decode: its config, model, weights and vocabulary.

Shared by `evaluate` and `predict`. A run's workdir holds the resolved config
(config.json, also inside every checkpoint), the vocabulary and the Orbax
checkpoints; `restore_run` rebuilds the model from them. The command lines of
both tools take `--config.section.field=value` overrides of that saved config
(`--config.decode.beam_size=4`), parsed by `parse_flags_with_saved_config`.
"""

import contextlib
import dataclasses
import json
import os
import sys
from typing import Any, Callable

from absl import flags, logging
import flax
import flax.linen as nn
import jax
import ml_collections
from ml_collections import config_flags
import orbax.checkpoint as ocp

from configs import default as default_config
from fphtr_jax import checkpointing, config_validation, sharding, train
from fphtr_jax import tokenizer as tokenizer_lib

FLAGS = flags.FLAGS
CONFIG_FILENAME = "config.json"


# Flags of both command lines; --config is defined once the workdir is known
# (parse_flags_with_saved_config).
flags.DEFINE_string("workdir", None, "Workdir of a training run (config, checkpoints).")
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


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config of the run in `workdir` (its config.json, else its latest checkpoint).

  Fields that the run's config lacks (added to the project after it was
  trained, like `decode`) take the values of configs/default.py.
  """
  path = os.path.join(workdir, CONFIG_FILENAME)
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      saved = json.load(f)
  else:
    manager = ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), checkpointing.CHECKPOINT_DIR)
    )
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(
        f"{workdir} has no {CONFIG_FILENAME} and no checkpoint: is it the "
        "--workdir of a training run?"
      )
    saved = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
    manager.close()
  config = default_config.get_config()
  _merge(config, saved)
  return config


def _flag_value(argv: list[str], name: str) -> str | None:
  for index, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      return arg.split("=", 1)[1]
    if arg == f"--{name}" and index + 1 < len(argv):
      return argv[index + 1]
  return None


def parse_flags_with_saved_config(argv: list[str]) -> list[str]:
  """absl flags parser: defines --config from the workdir's saved config, then parses.

  So `--config.decode.beam_size=4` overrides a field of the run's own config,
  checked against that field's type. Pass to `app.run(main, flags_parser=...)`.
  """
  workdir = _flag_value(argv, "workdir")
  asks_help = any(arg in ("--help", "-h", "--helpfull") for arg in argv)
  if workdir is None and not asks_help:
    sys.stderr.write(
      "FATAL Flags parsing error: --workdir (the training run's workdir) is "
      "required.\nPass --helpfull to see the flags.\n"
    )
    sys.exit(1)
  # Without a workdir an empty config is enough to print the help.
  config = ml_collections.ConfigDict() if workdir is None else load_config(workdir)
  config_flags.DEFINE_config_dict(
    "config", config, "The run's saved config; override fields with --config.section.field=value."
  )
  try:
    return FLAGS(argv)
  except flags.Error as e:
    sys.stderr.write(f"FATAL Flags parsing error: {e}\nPass --helpfull to see the flags.\n")
    sys.exit(1)


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


def restore_run(workdir: str, config: ml_collections.ConfigDict, checkpoint: str = "latest") -> Run:
  """Rebuilds the model of `config` and restores a checkpoint of `workdir` into it.

  Args:
    workdir: the training run's workdir.
    config: its config (`load_config`), possibly with overrides.
    checkpoint: "latest", "best" or a step number, as a string.

  Returns:
    The Run, its state placed on the mesh of config.mesh.
  """
  config_validation.validate_config(config)
  which, step = parse_checkpoint(checkpoint)
  mesh = sharding.create_mesh(config.mesh)
  sharding.check_batch_size(config.eval.batch_size, mesh, "eval.batch_size")
  checkpointer = checkpointing.Checkpointer(workdir, config.checkpoint)
  manager = checkpointer.best if which == "best" else checkpointer.latest
  steps = manager.all_steps()
  if step is None and not steps:
    raise FileNotFoundError(f"No {which} checkpoint in {manager.directory}.")
  if step is not None and step not in steps:
    raise FileNotFoundError(
      f"No checkpoint of step {step} in {manager.directory}; it has steps {sorted(steps)}."
    )
  # The model's size depends on the vocabulary: read it before building the model.
  step = max(steps) if step is None else step
  vocab = manager.restore(step, args=ocp.args.Composite(vocab=ocp.args.JsonRestore()))
  tokenizer = tokenizer_lib.Tokenizer.from_json(vocab["vocab"])
  model = train.create_model(config, tokenizer)
  # Shapes and shardings only, then the parameters and BatchNorm statistics
  # straight into place; the optimizer state stays on disk.
  images, tokens = train.init_inputs(config)
  rules = sharding.logical_rules(config.mesh)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(
      lambda: model.init({"params": jax.random.key(0)}, images, tokens, train=False)
    )
    shardings = sharding.logical_to_shardings(boxed, mesh, rules)
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
  checkpointer.close()
  logging.info("Restored the %s checkpoint of step %d from %s.", which, step, workdir)
  state = InferenceState(
    apply_fn=model.apply, params=restored["params"], batch_stats=restored.get("batch_stats", {})
  )
  return Run(
    config=config, model=model, state=state, tokenizer=tokenizer, step=step, which=which, mesh=mesh
  )
