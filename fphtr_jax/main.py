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

import logging as std_logging

from absl import app, flags, logging
from clu import platform
import jax
from ml_collections import config_flags

from fphtr_jax import distributed, train

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


class QuietLibraries(std_logging.Filter):
  """Keeps the console readable: Orbax logs dozens of INFO lines per checkpoint.

  Its warnings and errors still show; --verbosity=1 shows everything.
  """

  def filter(self, record):
    return (
      record.levelno >= std_logging.WARNING
      or logging.get_verbosity() > 0
      or "/orbax/" not in record.pathname
    )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(QuietLibraries())
  distributed.initialize_distributed(
    FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
  )
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
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  jax.config.config_with_absl()
  app.run(main)
