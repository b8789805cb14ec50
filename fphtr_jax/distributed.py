"""Joining the processes of a multi-host run (jax.distributed), before any device is used."""

import os

from absl import app
import jax


def multi_process_environment(environ=os.environ) -> bool:
  """Whether the environment describes a job of more than one process."""
  if "SLURM_STEP_NODELIST" in environ and int(environ.get("SLURM_NTASKS", "1")) > 1:
    return True  # Inside `srun` with several tasks.
  if environ.get("JAX_COORDINATOR_ADDRESS"):
    return True
  hosts = environ.get("TPU_PROCESS_ADDRESSES") or environ.get("TPU_WORKER_HOSTNAMES") or ""
  return "," in hosts


def initialize_distributed(
  mode: str = "auto",
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
) -> bool:
  """Calls `jax.distributed.initialize` as `mode` says; returns whether it did.

  Must run before JAX initialises its backend (before any jax.devices(),
  array or jit). On CPU the processes exchange data through gloo.
  """
  explicit = {
    "coordinator_address": coordinator_address,
    "num_processes": num_processes,
    "process_id": process_id,
  }
  given = [name for name, value in explicit.items() if value is not None]
  if given and len(given) != len(explicit):
    missing = sorted(set(explicit) - set(given))
    raise app.UsageError(
      f"--{' --'.join(given)} given without --{' --'.join(missing)}: "
      "an explicit multi-host run needs all three."
    )
  if given and mode == "off":
    raise app.UsageError(f"--distributed=off contradicts --{' --'.join(given)}.")
  if mode == "off" or (mode == "auto" and not given and not multi_process_environment()):
    return False
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address, num_processes, process_id)
  return True
