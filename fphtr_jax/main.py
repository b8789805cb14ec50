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

import os

import jax
from absl import app, flags, logging
from clu import platform
from ml_collections import config_flags

from fphtr_jax import train

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and the resolved config.")
config_flags.DEFINE_config_file("config", None, "Training configuration file.",
                                lock_config=True)
flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                  "Initialise jax.distributed: auto = when the environment shows several "
                  "processes (srun, JAX_COORDINATOR_ADDRESS, a multi-host TPU slice).")
flags.DEFINE_string("coordinator_address", None,
                    "HOST:PORT of process 0's coordinator, for an explicit multi-host run.")
flags.DEFINE_integer("num_processes", None, "Number of processes of an explicit multi-host run.")
flags.DEFINE_integer("process_id", None, "This process's index, 0 .. num_processes - 1.")
flags.mark_flags_as_required(["config", "workdir"])


def multi_process_environment(environ=os.environ) -> bool:
  """Whether the environment describes a job of more than one process."""
  if "SLURM_STEP_NODELIST" in environ and int(environ.get("SLURM_NTASKS", "1")) > 1:
    return True  # Inside `srun` with several tasks.
  if environ.get("JAX_COORDINATOR_ADDRESS"):
    return True
  hosts = environ.get("TPU_PROCESS_ADDRESSES") or environ.get("TPU_WORKER_HOSTNAMES") or ""
  return "," in hosts


def initialize_distributed(mode: str = "auto", coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
  """Calls `jax.distributed.initialize` as `mode` says; returns whether it did.

  Must run before JAX initialises its backend (before any jax.devices(),
  array or jit). On CPU the processes exchange data through gloo.
  """
  explicit = {"coordinator_address": coordinator_address, "num_processes": num_processes,
              "process_id": process_id}
  given = [name for name, value in explicit.items() if value is not None]
  if given and len(given) != len(explicit):
    missing = sorted(set(explicit) - set(given))
    raise app.UsageError(f"--{' --'.join(given)} given without --{' --'.join(missing)}: "
                         "an explicit multi-host run needs all three.")
  if given and mode == "off":
    raise app.UsageError(f"--distributed=off contradicts --{' --'.join(given)}.")
  if mode == "off" or (mode == "auto" and not given and not multi_process_environment()):
    return False
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address, num_processes, process_id)
  return True


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  initialize_distributed(FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes,
                         FLAGS.process_id)
  logging.info("JAX process %d / %d, local devices: %s", jax.process_index(),
               jax.process_count(), jax.local_devices())
  platform.work_unit().set_task_status(
      f"process_index: {jax.process_index()}, process_count: {jax.process_count()}")
  platform.work_unit().create_artifact(platform.ArtifactType.DIRECTORY, FLAGS.workdir, "workdir")
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  jax.config.config_with_absl()
  app.run(main)
