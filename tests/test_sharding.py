"""Shardings on 8 simulated CPU devices train like one device.

Data parallel (data=8), FSDP (data=4, fsdp=2) and tensor parallel (data=4,
tensor=2) runs of configs/tiny.py start from the same parameters and give the
single-device losses for several steps; their parameters are laid out as the
mesh rules say; bfloat16 compute tracks float32; gradient accumulation over
micro-batches equals one step on the whole batch.

The simulated devices must be configured before JAX starts, so the runs
happen in subprocesses: this file run as a script, one process per group of
cases, two groups side by side.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # 8-device subprocesses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_DEVICES = 8
NUM_STEPS = 3
BATCH_SIZE = 16
ACCUM_STEPS = 2

# name: (mesh sizes, rules preset, model.dtype, train.grad_accum_steps)
CASES = {
  "single": (dict(data=1, fsdp=1, tensor=1), None, "float32", 1),
  "data": (dict(data=8, fsdp=1, tensor=1), None, "float32", 1),
  "fsdp": (dict(data=4, fsdp=2, tensor=1), "fsdp", "float32", 1),
  "tensor": (dict(data=4, fsdp=1, tensor=2), "tensor_parallel", "float32", 1),
  "bfloat16": (dict(data=8, fsdp=1, tensor=1), None, "bfloat16", 1),
  "accum": (dict(data=8, fsdp=1, tensor=1), None, "float32", ACCUM_STEPS),
}
# Two processes, run side by side; each compiles its cases one after another.
GROUPS = (("single", "fsdp", "tensor"), ("data", "bfloat16", "accum"))
# Parameters whose layout the tests check, as "/"-joined paths.
INSPECTED = (
  "image_encoder/resnet/conv1/kernel",
  "image_encoder/projection/kernel",
  "text_decoder/embed/embedding",
  "text_decoder/layers_0/self_attention/query/kernel",
  "text_decoder/layers_0/self_attention/out/kernel",
  "text_decoder/layers_0/mlp_in/kernel",
  "text_decoder/layers_0/mlp_out/kernel",
  "text_decoder/layers_0/norm1/scale",
)


def make_config(case: str, cache_dir: str):
  """configs/tiny.py with the case's mesh, rules, dtype and accumulation."""
  from configs import tiny

  mesh, preset, dtype, accum = CASES[case]
  config = tiny.get_config()
  config.mesh.preset = preset or ""  # The preset's mesh rules on the tiny model.
  config.mesh.update(mesh)
  config.model.dtype = dtype
  config.model.dropout_rate = 0.0
  config.train.grad_accum_steps = accum
  config.train.batch_size = BATCH_SIZE
  # threefry draws the same numbers whatever the sharding, so every mesh
  # starts from the same parameters.
  config.train.rng_impl = "threefry2x32"
  config.data.cache_dir = cache_dir
  return config


def same_images_per_micro_batch(batch: dict, accum_steps: int) -> dict:
  """Gives every micro-batch of `accum_steps` the same images; texts stay as they are.

  BatchNorm normalises each micro-batch by its own statistics, so in general
  accumulation only approximates the whole-batch step. Micro-batch i holds rows
  i, i + n, i + 2n, ... (n = accum_steps); when row r shows the image of row
  r - r % n, every micro-batch holds the same images, its statistics equal the
  whole batch's, and the accumulated step must equal the whole-batch step
  exactly. The texts still differ between micro-batches, so their weighting by
  target tokens is exercised. (BatchNorm's running averages, updated once per
  micro-batch, still differ; training steps use batch statistics, not those.)
  """
  image = batch["image"]
  return {**batch, "image": image[np.arange(len(image)) // accum_steps * accum_steps]}


def run_cases(cases, cache_dir: str, out_path: str) -> dict:
  """Trains each case NUM_STEPS steps on the same batches; returns what the tests check.

  The final parameters of each case go to `{out_path}.{case}.npz`.
  """
  import functools

  from flax import traverse_util
  import flax.linen as nn
  import jax

  from fphtr_jax import optimizer, sharding, train
  from fphtr_jax import tokenizer as tokenizer_lib
  from input_pipeline import datasets

  assert jax.device_count() == NUM_DEVICES, jax.devices()
  reference = make_config("single", cache_dir)
  train_ds, _ = datasets.create_datasets(reference)
  iterator = train_ds.as_numpy_iterator()
  batches = [same_images_per_micro_batch(next(iterator), ACCUM_STEPS) for _ in range(NUM_STEPS)]
  tokenizer = tokenizer_lib.Tokenizer(reference.data.charset)

  results, initial_states = {}, {}
  for case in cases:
    config = make_config(case, cache_dir)
    mesh_sizes, preset = CASES[case][:2]
    num_devices = int(np.prod(list(mesh_sizes.values())))
    mesh = sharding.create_mesh(config.mesh, jax.devices()[:num_devices])
    model = train.create_model(config, tokenizer)
    # Cases on the same mesh and rules share one initial state (float32
    # parameters whatever the compute dtype); only the model applying it differs.
    key = (tuple(mesh_sizes.values()), preset)
    if key not in initial_states:
      initial_states[key] = train.create_train_state(
        config, model, mesh, jax.random.key(config.train.seed, impl=config.train.rng_impl)
      )
    state, shardings = initial_states[key]
    state, shardings = (tree.replace(apply_fn=model.apply) for tree in (state, shardings))
    params = traverse_util.flatten_dict(state.params, sep="/")
    layout = {
      name: {
        "spec": [list(a) if isinstance(a, tuple) else a for a in params[name].sharding.spec],
        "shard_shape": list(params[name].addressable_shards[0].data.shape),
        "shape": list(params[name].shape),
      }
      for name in INSPECTED
    }
    _, schedule = optimizer.create_optimizer(config.train)
    step = jax.jit(
      functools.partial(
        train.train_step,
        label_smoothing=0.0,
        schedule=schedule,
        grad_accum_steps=config.train.grad_accum_steps,
      ),
      in_shardings=(shardings, sharding.batch_sharding(mesh), None),
      out_shardings=(shardings, None),
    )
    losses = []
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.logical_rules(config.mesh)):
      for batch in batches:
        state, metrics = step(state, sharding.put_batch(batch, mesh), jax.random.key(1))
        losses.append(float(metrics.compute()["loss"]))
    results[case] = {
      "losses": losses,
      "param_dtypes": sorted({str(x.dtype) for x in jax.tree.leaves(state.params)}),
      "param_bytes": sharding.bytes_per_device(state.params),
      "opt_state_bytes": sharding.bytes_per_device(state.opt_state),
      "layout": layout,
    }
    np.savez(
      f"{out_path}.{case}.npz",
      **{k: np.asarray(v) for k, v in traverse_util.flatten_dict(state.params, sep="/").items()},
    )
  return results


@pytest.fixture(scope="module")
def runs(bank_cache_dir, tmp_path_factory):
  """Runs every case in two side-by-side subprocesses of 8 simulated devices each."""
  # Render the word banks once, before the workers would both do it.
  from configs import tiny
  from input_pipeline.sources import synthetic

  config = tiny.get_config()
  config.data.cache_dir = bank_cache_dir
  synthetic.load_banks(config)

  out = tmp_path_factory.mktemp("sharding_runs")
  # Unoptimised code compiles in about half the time; every case uses it alike.
  env = {
    **os.environ,
    "PYTHONPATH": ROOT,
    "JAX_PLATFORMS": "cpu",
    "XLA_FLAGS": f"--xla_force_host_platform_device_count={NUM_DEVICES} "
    "--xla_backend_optimization_level=0",
  }
  workers = []
  for index, group in enumerate(GROUPS):
    path = out / f"group{index}.json"
    workers.append(
      (
        path,
        subprocess.Popen(
          [sys.executable, os.path.abspath(__file__), ",".join(group), bank_cache_dir, str(path)],
          cwd=ROOT,
          env=env,
          stdout=subprocess.PIPE,
          stderr=subprocess.STDOUT,
          text=True,
        ),
      )
    )
  results = {}
  try:
    for path, worker in workers:
      log, _ = worker.communicate(timeout=1800)
      assert worker.returncode == 0, log[-5000:]
      for case, result in json.loads(path.read_text()).items():
        with np.load(f"{path}.{case}.npz") as params:
          results[case] = {**result, "params": dict(params)}
  finally:
    for _, worker in workers:
      if worker.poll() is None:
        worker.kill()
  return results


def _assert_same_parameters(a: dict, b: dict):
  """The same parameters up to float32 rounding, as Adam amplifies it.

  Adam divides each gradient by its own running scale, so where a gradient is
  close to zero a rounding difference between two summation orders can move
  that parameter by up to a learning rate (1e-3): compare typical values.
  """
  assert a.keys() == b.keys()
  differences = np.concatenate([np.abs(a[k] - b[k]).ravel() for k in a])
  assert np.median(differences) < 1e-6, np.median(differences)
  assert np.mean(differences) < 1e-5, np.mean(differences)
  # Blank paper is exactly 0 in the encoder, so many encoder gradients are
  # tiny sums of cancelling terms, and attention key biases get none at all:
  # a few per cent of the parameters differ by more than 1e-5, hardly any by
  # more than 1e-4 (seen: 6% and 0.1% after three steps).
  assert np.mean(differences > 1e-4) < 1e-2, np.mean(differences > 1e-4)


@pytest.mark.parametrize("case", ["data", "fsdp", "tensor"])
def test_sharded_runs_match_one_device(runs, case):
  single, sharded = runs["single"], runs[case]
  # Same computation, other float32 summation orders (BatchNorm statistics and
  # gradients summed across devices): losses agree to ~1e-5 and drift apart
  # a little with every step.
  np.testing.assert_allclose(sharded["losses"], single["losses"], rtol=1e-4)
  assert single["losses"][-1] < single["losses"][0], single["losses"]
  _assert_same_parameters(sharded["params"], single["params"])


def test_data_parallel_replicates_parameters(runs):
  for name, layout in runs["data"]["layout"].items():
    assert all(axes is None for axes in layout["spec"]), (name, layout)
    assert layout["shard_shape"] == layout["shape"], (name, layout)


def test_fsdp_shards_parameters_and_optimizer_state(runs):
  layout = runs["fsdp"]["layout"]
  # "embed" and "conv_out" go to fsdp; "mlp" would too, but the kernel's
  # "embed" dimension took the axis first.
  expected = {
    "image_encoder/resnet/conv1/kernel": [None, None, None, "fsdp"],
    "image_encoder/projection/kernel": [None, "fsdp"],
    "text_decoder/embed/embedding": [None, "fsdp"],
    "text_decoder/layers_0/self_attention/query/kernel": ["fsdp", None, None],
    "text_decoder/layers_0/self_attention/out/kernel": [None, None, "fsdp"],
    "text_decoder/layers_0/mlp_in/kernel": ["fsdp", None],
    "text_decoder/layers_0/mlp_out/kernel": [None, "fsdp"],
    "text_decoder/layers_0/norm1/scale": ["fsdp"],
  }
  for name, spec in expected.items():
    assert layout[name]["spec"] == spec, (name, layout[name])
    split = [
      size // 2 if axes == "fsdp" else size for size, axes in zip(layout[name]["shape"], spec)
    ]
    assert layout[name]["shard_shape"] == split, (name, layout[name])
  # Every device keeps about half of the parameters and of Adam's moments.
  for field in ("param_bytes", "opt_state_bytes"):
    assert runs["fsdp"][field] < 0.55 * runs["single"][field], (
      field,
      runs["fsdp"][field],
      runs["single"][field],
    )


def test_tensor_parallel_splits_heads_and_mlp(runs):
  layout = runs["tensor"]["layout"]
  expected = {
    "text_decoder/layers_0/self_attention/query/kernel": [None, "tensor", None],
    "text_decoder/layers_0/self_attention/out/kernel": ["tensor", None, None],
    "text_decoder/layers_0/mlp_in/kernel": [None, "tensor"],
    "text_decoder/layers_0/mlp_out/kernel": ["tensor", None],
  }
  for name, spec in expected.items():
    assert layout[name]["spec"] == spec, (name, layout[name])
    split = [
      size // 2 if axes == "tensor" else size for size, axes in zip(layout[name]["shape"], spec)
    ]
    assert layout[name]["shard_shape"] == split, (name, layout[name])
  for name in (
    "image_encoder/resnet/conv1/kernel",
    "text_decoder/embed/embedding",
    "text_decoder/layers_0/norm1/scale",
  ):
    assert all(axes is None for axes in layout[name]["spec"]), (name, layout[name])
  assert runs["tensor"]["param_bytes"] < runs["single"]["param_bytes"]


def test_bfloat16_tracks_float32(runs):
  bf16, f32 = runs["bfloat16"], runs["data"]
  assert bf16["param_dtypes"] == ["float32"]  # bfloat16 compute, float32 parameters
  np.testing.assert_allclose(bf16["losses"], f32["losses"], rtol=2e-2)
  assert bf16["losses"][-1] < bf16["losses"][0], bf16["losses"]
  # It does compute in bfloat16: not bit for bit the float32 run.
  assert bf16["losses"][1:] != f32["losses"][1:]


def test_gradient_accumulation_matches_the_whole_batch(runs):
  accum, whole = runs["accum"], runs["data"]
  # Micro-batches sum in another order in float32, as sharded runs do: the
  # same tolerance as there (seen: 1.5e-5 at one of three steps).
  np.testing.assert_allclose(accum["losses"], whole["losses"], rtol=1e-4)
  _assert_same_parameters(accum["params"], whole["params"])


if __name__ == "__main__":
  sys.path.insert(0, ROOT)
  cases, cache_dir, out_path = sys.argv[1].split(","), sys.argv[2], sys.argv[3]
  with open(out_path, "w") as f:
    json.dump(run_cases(cases, cache_dir, out_path), f)
