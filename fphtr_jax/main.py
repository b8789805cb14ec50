"""Trains FPHTR, on one host or on many.

  python -m fphtr_jax.main --config=configs/default.py --workdir=/tmp/fphtr \
      --config.train.num_steps=1000

Multi-host: every host runs the same command with the same --workdir (a
shared file system, or a gs:// bucket on Cloud TPU). `jax.distributed` is
initialised before anything touches a device:

  --distributed=auto   (default) when the environment shows several processes:
                       SLURM's srun with more than one task, JAX_COORDINATOR_ADDRESS
                       set, or a Cloud TPU slice of more than one host;
  --distributed=on     always, letting JAX read the cluster (SLURM, Open MPI,
                       Cloud TPU VMs, Kubernetes);
  --coordinator_address=HOST:PORT --num_processes=N --process_id=I
                       explicitly, e.g. on machines without a cluster manager.

Each process then reads its own share of every batch, only process 0 writes
logs and TensorBoard summaries, and all processes write the Orbax checkpoints
together. See launch/ for ready-made launchers.
"""

import json
import os
import re

from absl import app, flags, logging
from clu import platform
import jax
from ml_collections import config_flags

from fphtr_jax import checkpointing, cli, config_validation, distributed, train, workdir

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and the resolved config.")
config_flags.DEFINE_config_file("config", None, "Training configuration file.", lock_config=True)
flags.DEFINE_enum(
  "distributed",
  "auto",
  ["auto", "on", "off"],
  "Initialise jax.distributed: auto = when the environment shows several "
  "processes (srun, JAX_COORDINATOR_ADDRESS, a multi-host TPU slice).",
)
flags.DEFINE_string(
  "coordinator_address",
  None,
  "HOST:PORT of process 0's coordinator, for an explicit multi-host run.",
)
flags.DEFINE_integer("num_processes", None, "Number of processes of an explicit multi-host run.")
flags.DEFINE_integer("process_id", None, "This process's index, 0 .. num_processes - 1.")
flags.mark_flags_as_required(["config", "workdir"])


# Checked as the flags are parsed: a mistake is one line before anything starts.
flags.register_validator("workdir", lambda v: v is None or bool(v), message="expected a folder")
flags.register_validator(
  "coordinator_address",
  lambda v: v is None or re.fullmatch(r".+:[0-9]+", v) is not None,
  message="expected HOST:PORT, e.g. 10.0.0.1:1234",
)
flags.register_validator(
  "num_processes", lambda v: v is None or v >= 1, message="expected 1 or more"
)
flags.register_validator("process_id", lambda v: v is None or v >= 0, message="expected 0 or more")
flags.register_multi_flags_validator(
  ["process_id", "num_processes"],
  lambda f: None in (f["process_id"], f["num_processes"]) or f["process_id"] < f["num_processes"],
  message="--process_id must be below --num_processes (0 .. N - 1)",
)


def check_resume(config, workdir: str):
  """A workdir with checkpoints resumes: `config` must keep the model they were trained with."""
  checkpoints = os.path.join(workdir, checkpointing.CHECKPOINT_DIR)
  if not os.path.isdir(checkpoints) or not any(n.isdigit() for n in os.listdir(checkpoints)):
    return
  try:
    with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
      saved = json.load(f)
  except (OSError, ValueError):
    return  # the trainer reads the config saved in the checkpoints, and says what is wrong
  if isinstance(saved, dict):
    try:
      config_validation.check_against_checkpoint(config, saved, workdir)
    except ValueError as error:
      raise cli.CommandLineError(str(error)) from None


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}: the trainer takes only flags.")
  try:
    cli.check_config(FLAGS.config)
    cli.check_writable_dir(FLAGS.workdir, "workdir")  # made by the trainer, once it starts
    check_resume(FLAGS.config, FLAGS.workdir)
  except cli.CommandLineError as error:
    cli.fail(str(error))
  try:
    distributed.initialize_distributed(
      FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
    )
  except app.UsageError as error:
    cli.fail(str(error))
  logging.info(
    "JAX process %d / %d, local devices: %s",
    jax.process_index(),
    jax.process_count(),
    jax.local_devices(),
  )
  platform.work_unit().set_task_status(
    f"process_index: {jax.process_index()}, process_count: {jax.process_count()}"
  )
  platform.work_unit().create_artifact(platform.ArtifactType.DIRECTORY, FLAGS.workdir, "workdir")
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except workdir.WorkdirInUseError as error:  # another run owns it: nothing to show but that
    cli.fail(str(error), status=1)


if __name__ == "__main__":
  jax.config.config_with_absl()
  app.run(main, flags_parser=cli.parse_flags_with_config_file)
