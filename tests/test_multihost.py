"""Two JAX processes on localhost train like one process over the same global batch.

Each process has 2 simulated CPU devices and joins the other through
`jax.distributed` (a coordinator on a free local port, gloo collectives); it
reads only its own half of every global batch. Both train a few steps, save an
Orbax checkpoint together, train on, then restore it and train the same steps
again. A single process with 4 devices trains on the whole batches for
comparison. The processes are this file run as a script.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # two JAX processes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_PROCESSES = 2
DEVICES_PER_PROCESS = 2
SAVE_STEP = 3
NUM_STEPS = 5


def make_config(cache_dir: str):
  from configs import tiny

  config = tiny.get_config()
  config.model.dropout_rate = 0.0
  config.train.batch_size = 8  # global: 4 examples per process, 2 per device
  config.train.rng_impl = "threefry2x32"  # the same parameters on any mesh
  config.checkpoint.async_save = True
  config.data.cache_dir = cache_dir
  return config


def run_process(process_id: int, num_processes: int, port: int, cache_dir: str, workdir: str):
  """Trains NUM_STEPS steps, saving at SAVE_STEP, then resumes from it; returns a summary."""
  import functools

  import flax.linen as nn
  import jax

  from fphtr_jax import distributed

  if num_processes > 1:
    assert distributed.initialize_distributed(
      "auto",
      coordinator_address=f"localhost:{port}",
      num_processes=num_processes,
      process_id=process_id,
    )
  # Where jax.distributed is initialised, its CPU collectives must be gloo.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")

  from fphtr_jax import checkpointing, optimizer, sharding, train
  from fphtr_jax import tokenizer as tokenizer_lib
  from input_pipeline import datasets

  config = make_config(cache_dir)
  mesh = sharding.create_mesh(config.mesh)  # data = all devices of all processes
  tokenizer = tokenizer_lib.Tokenizer(config.data.charset)
  model = train.create_model(config, tokenizer)
  state, shardings = train.create_train_state(
    config, model, mesh, jax.random.key(config.train.seed, impl=config.train.rng_impl)
  )
  _, schedule = optimizer.create_optimizer(config.train)
  step_fn = jax.jit(
    functools.partial(train.train_step, label_smoothing=0.0, schedule=schedule),
    in_shardings=(shardings, sharding.batch_sharding(mesh), None),
    out_shardings=(shardings, None),
  )

  def train_steps(state, start_step: int, num_steps: int):
    train_ds, _ = datasets.create_datasets(
      config,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      start_step=start_step,
    )
    iterator = train_ds.as_numpy_iterator()
    losses, first_images = [], None
    for _ in range(num_steps):
      local = next(iterator)
      first_images = local["image"] if first_images is None else first_images
      state, metrics = step_fn(state, sharding.put_batch(local, mesh), jax.random.key(1))
      losses.append(float(metrics.compute()["loss"]))
    return state, losses, first_images

  checkpointer = checkpointing.Checkpointer(workdir, config.checkpoint)
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.logical_rules(config.mesh)):
    state, losses, local_images = train_steps(state, 0, SAVE_STEP)
    checkpointer.save(SAVE_STEP, state, tokenizer, config)
    checkpointer.wait()
    trained_on, later_losses, _ = train_steps(state, SAVE_STEP, NUM_STEPS - SAVE_STEP)

    # A restart: shapes and shardings only, the values come from the checkpoint.
    restarted = checkpointing.Checkpointer(workdir, config.checkpoint)
    restored, restored_tokenizer = restarted.restore(
      checkpointing.abstract_like(trained_on, shardings)
    )
    resumed_step = int(restored.step)
    _, resumed_losses, _ = train_steps(restored, resumed_step, NUM_STEPS - resumed_step)

    # What evaluation relies on: every process can read the whole global batch.
    train_ds, _ = datasets.create_datasets(
      config, process_index=jax.process_index(), process_count=jax.process_count()
    )
    first_batch = sharding.put_batch(next(train_ds.as_numpy_iterator()), mesh)
    global_tokens = sharding.to_host(first_batch["tokens"])
  checkpointer.close()
  restarted.close()
  return {
    "process_index": jax.process_index(),
    "process_count": jax.process_count(),
    "global_devices": jax.device_count(),
    "local_devices": jax.local_device_count(),
    "losses": losses + later_losses,
    "resumed_step": resumed_step,
    "resumed_losses": resumed_losses,
    "tokenizer_restored": restored_tokenizer == tokenizer,
    "local_batch": list(local_images.shape),
    "local_images_checksum": float(np.abs(local_images).sum()),
    "global_tokens": global_tokens.tolist(),
  }


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launch(args, num_devices: int, out_path):
  # Unoptimised code compiles in about half the time; every process uses it alike.
  env = {
    **os.environ,
    "PYTHONPATH": ROOT,
    "JAX_PLATFORMS": "cpu",
    "XLA_FLAGS": f"--xla_force_host_platform_device_count={num_devices} "
    "--xla_backend_optimization_level=0",
  }
  return subprocess.Popen(
    [sys.executable, os.path.abspath(__file__), *map(str, args), out_path],
    cwd=ROOT,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


@pytest.fixture(scope="module")
def runs(bank_cache_dir, tmp_path_factory):
  """Two cooperating processes and, beside them, one process alone."""
  from configs import tiny
  from input_pipeline.sources import synthetic

  config = tiny.get_config()
  config.data.cache_dir = bank_cache_dir
  synthetic.load_banks(config)  # rendered once, before the processes start

  tmp = tmp_path_factory.mktemp("multihost")
  port = _free_port()
  launched = []
  for process_id in range(NUM_PROCESSES):
    out = str(tmp / f"process{process_id}.json")
    launched.append(
      (
        out,
        _launch(
          [process_id, NUM_PROCESSES, port, bank_cache_dir, tmp / "two_processes"],
          DEVICES_PER_PROCESS,
          out,
        ),
      )
    )
  out = str(tmp / "single.json")
  launched.append(
    (
      out,
      _launch(
        [0, 1, 0, bank_cache_dir, tmp / "one_process"], NUM_PROCESSES * DEVICES_PER_PROCESS, out
      ),
    )
  )
  results = []
  try:
    for out, process in launched:
      log, _ = process.communicate(timeout=1800)
      assert process.returncode == 0, log[-5000:]
      with open(out) as f:
        results.append(json.load(f))
  finally:
    for _, process in launched:
      if process.poll() is None:
        process.kill()
  return {"processes": results[:NUM_PROCESSES], "single": results[-1], "tmp": tmp}


def test_processes_form_one_mesh_and_read_their_own_data(runs):
  first, second = runs["processes"]
  for index, result in enumerate(runs["processes"]):
    assert result["process_index"] == index
    assert result["process_count"] == NUM_PROCESSES
    assert result["global_devices"] == NUM_PROCESSES * DEVICES_PER_PROCESS
    assert result["local_devices"] == DEVICES_PER_PROCESS
    assert result["local_batch"][0] == 8 // NUM_PROCESSES
  assert first["local_images_checksum"] != second["local_images_checksum"]
  assert runs["single"]["local_batch"][0] == 8


def test_two_processes_match_one_process(runs):
  first, second = runs["processes"]
  assert first["losses"] == second["losses"]  # one global computation
  # Other float32 summation orders than one process (see test_sharding), and
  # Adam's first steps move every parameter by about the learning rate whatever
  # the size of its gradient, so a near-zero gradient summed in another order
  # moves the loss by up to ~4e-4 (relative) within five steps on some CPUs;
  # one step of training changes it by ~6e-3.
  np.testing.assert_allclose(first["losses"], runs["single"]["losses"], rtol=1e-3)
  assert first["losses"][-1] < first["losses"][0], first["losses"]


def test_every_process_reads_the_whole_global_batch(runs):
  first, second = runs["processes"]
  assert np.shape(first["global_tokens"]) == (8, make_config("").data.max_len)
  assert first["global_tokens"] == second["global_tokens"] == runs["single"]["global_tokens"]


def test_checkpoint_is_written_together_and_resumes(runs):
  steps = sorted(os.listdir(runs["tmp"] / "two_processes" / "checkpoints"))
  assert steps == [str(SAVE_STEP)], steps
  for result in runs["processes"]:
    assert result["resumed_step"] == SAVE_STEP
    assert result["tokenizer_restored"]
    np.testing.assert_allclose(result["resumed_losses"], result["losses"][SAVE_STEP:], rtol=1e-6)


def test_distributed_initialisation_follows_the_environment():
  from absl import app

  from fphtr_jax import distributed

  slurm = {
    "SLURM_JOB_ID": "7",
    "SLURM_STEP_NODELIST": "node[1-2]",
    "SLURM_NTASKS": "2",
    "SLURM_PROCID": "0",
  }
  assert distributed.multi_process_environment(slurm)
  assert not distributed.multi_process_environment({**slurm, "SLURM_NTASKS": "1"})
  assert not distributed.multi_process_environment({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2"})
  assert distributed.multi_process_environment({"TPU_WORKER_HOSTNAMES": "10.0.0.2,10.0.0.3"})
  assert not distributed.multi_process_environment({"TPU_WORKER_HOSTNAMES": "10.0.0.2"})
  assert distributed.multi_process_environment({"JAX_COORDINATOR_ADDRESS": "10.0.0.2:1234"})
  assert not distributed.multi_process_environment({})
  with pytest.raises(app.UsageError, match="--num_processes --process_id"):
    distributed.initialize_distributed("auto", coordinator_address="localhost:1234")
  with pytest.raises(app.UsageError, match="--distributed=off"):
    distributed.initialize_distributed("off", "localhost:1234", 2, 0)


if __name__ == "__main__":
  sys.path.insert(0, ROOT)
  process_id, num_processes, port = map(int, sys.argv[1:4])
  cache_dir, workdir, out_path = sys.argv[4:7]
  summary = run_process(process_id, num_processes, port, cache_dir, workdir)
  with open(out_path, "w") as f:
    json.dump(summary, f)
