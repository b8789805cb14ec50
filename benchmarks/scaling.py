r"""Train-step time and per-device memory for each sharding preset on 1-8 devices.

  python -m benchmarks.scaling [--devices=1,2,4,8] [--presets=data,fsdp,tensor_parallel]
      [--steps=5] [--warmup=1] [--batch_size=8] [--config=tiny]

Each device count runs in its own process with that many simulated CPU
devices (XLA_FLAGS=--xla_force_host_platform_device_count=N), or on the real
accelerators with --real_devices (GPUs/TPUs: N of them from the one process).
Presets are the mesh presets of fphtr_jax/sharding.py: "data" (no preset,
data parallel), "fsdp" (fsdp = all N devices) and "tensor_parallel"
(tensor = 2, data = N / 2), applied to the chosen model config.

Prints one JSON line per (devices, preset), e.g.
  {"devices": 4, "preset": "fsdp", "mesh": {"data": 1, "fsdp": 4, "tensor": 1},
   "step_s": ..., "examples_per_s": ..., "param_bytes_per_device": ...,
   "opt_state_bytes_per_device": ..., "step_time_vs_baseline": ...,
   "state_bytes_vs_baseline": ..., "flops_per_step": ..., "jax_flops_per_s": ...,
   "matmul_peak_flops_per_s": ..., "share_of_peak": ...}
The baseline is 1 device, data parallel, measured in the same run. The batch
is global and fixed (strong scaling). Simulated CPU devices share the host's
cores, so their step times show the cost of a layout's communication and
partitioning, not the speedup real devices give; the memory figures are exact.

The utilisation fields (see benchmarks/utilisation.py): `flops_per_step`, the
FLOPs of the compiled step by XLA's cost analysis, one device's share times
the devices (work a layout repeats on several devices, e.g. the optimizer
update of replicated parameters, counts on each); `jax_flops_per_s`, those
FLOPs over the median step time; `matmul_peak_flops_per_s`, the FLOP/s of a
large square matmul in the model's compute dtype run on every device of the
case at once (on simulated CPU devices, smaller matmuls that together do
about the work of one), measured in the same worker after the steps;
`share_of_peak`, the ratio.
"""

import json
import os
import statistics
import subprocess
import sys
import time

from absl import app, flags

PRESETS = ("data", "fsdp", "tensor_parallel")

_DEVICES = flags.DEFINE_list("devices", ["1", "2", "4", "8"], "Device counts to run.")
_PRESETS = flags.DEFINE_list("presets", list(PRESETS), f"Sharding presets, from {PRESETS}.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per case (median reported).")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed steps per case after compilation.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Global batch size.")
_CONFIG = flags.DEFINE_enum("config", "tiny", ["tiny", "default"], "Model and image size.")
_REAL = flags.DEFINE_bool(
  "real_devices", False, "Use the machine's accelerators instead of simulated CPU devices."
)
_WORKER = flags.DEFINE_integer("worker", 0, "Internal: run the cases on this many devices.")


def preset_config(preset: str, num_devices: int, base: str, batch_size: int):
  """The `base` config with the preset's mesh rules, sized for `num_devices`."""
  from configs import default, tiny

  config = {"tiny": tiny, "default": default}[base].get_config()
  config.mesh.preset = "" if preset == "data" else preset
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = {
    "data": (num_devices, 1, 1),
    "fsdp": (1, num_devices, 1),
    "tensor_parallel": (num_devices // 2, 1, 2),
  }[preset]
  config.train.batch_size = batch_size
  return config


def run_cases(num_devices: int):
  """Times each preset on the first `num_devices` devices; prints JSON lines."""
  import functools

  import flax.linen as nn
  import jax
  import numpy as np

  from benchmarks import utilisation
  from fphtr_jax import optimizer, sharding, train
  from fphtr_jax import tokenizer as tokenizer_lib

  devices = jax.devices()[:num_devices]
  if len(devices) < num_devices:
    raise ValueError(f"--devices asks for {num_devices} devices; there are {len(devices)}.")
  for preset in _PRESETS.value:
    if preset == "tensor_parallel" and num_devices < 2:
      continue  # tensor = 2 needs two devices
    if preset == "fsdp" and num_devices < 2:
      continue  # the same as data parallel on one device
    config = preset_config(preset, num_devices, _CONFIG.value, _BATCH.value)
    tokenizer = tokenizer_lib.Tokenizer(config.data.charset)
    mesh = sharding.create_mesh(config.mesh, devices)
    model = train.create_model(config, tokenizer)
    rng = jax.random.key(0, impl=config.train.rng_impl)
    state, shardings = train.create_train_state(config, model, mesh, rng)
    d = config.data
    data_rng = np.random.default_rng(0)
    batch = {
      "image": data_rng.standard_normal((_BATCH.value, d.image_height, d.image_width, 1)).astype(
        np.float32
      ),
      "tokens": data_rng.integers(
        3, tokenizer.vocab_size, (_BATCH.value, d.max_len), dtype=np.int32
      ),
    }
    _, schedule = optimizer.create_optimizer(config.train)
    step = jax.jit(
      functools.partial(train.train_step, label_smoothing=0.0, schedule=schedule),
      in_shardings=(shardings, sharding.batch_sharding(mesh), None),
      out_shardings=(shardings, None),
      donate_argnums=0,
    )
    times = []
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.logical_rules(config.mesh)):
      global_batch = sharding.put_batch(batch, mesh)
      start = time.perf_counter()
      traced = step.trace(state, global_batch, rng)
      compiled = traced.lower().compile()
      state, metrics = compiled(state, global_batch, rng)
      jax.block_until_ready((state, metrics))
      compile_s = time.perf_counter() - start
      flops = utilisation.flops(compiled, traced.jaxpr, num_devices=num_devices)
      for index in range(_WARMUP.value + _STEPS.value):
        start = time.perf_counter()
        state, metrics = compiled(state, global_batch, rng)
        jax.block_until_ready((state, metrics))
        if index >= _WARMUP.value:
          times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    peak = utilisation.matmul_peak_flops_per_s(config.model.dtype, devices)
    print(
      json.dumps(
        {
          "devices": num_devices,
          "preset": preset,
          "mesh": dict(mesh.shape),
          "platform": devices[0].platform,
          "config": _CONFIG.value,
          "batch": _BATCH.value,
          "step_s": round(step_s, 5),
          "examples_per_s": round(_BATCH.value / step_s, 2),
          "compile_and_first_step_s": round(compile_s, 2),
          "param_bytes_per_device": sharding.bytes_per_device(state.params, devices[0]),
          "opt_state_bytes_per_device": sharding.bytes_per_device(state.opt_state, devices[0]),
          "loss": float(metrics.compute()["loss"]),
          **utilisation.fields(flops, step_s, peak),
        }
      ),
      flush=True,
    )


def main(argv):
  del argv
  if _WORKER.value:
    run_cases(_WORKER.value)
    return
  results = []
  for count in map(int, _DEVICES.value):
    if _REAL.value:
      env = dict(os.environ)
    else:
      flag = f"--xla_force_host_platform_device_count={count}"
      env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip(),
      }
    args = [a for a in sys.argv[1:] if not a.startswith("--worker")]
    worker = subprocess.run(
      [sys.executable, "-m", "benchmarks.scaling", *args, f"--worker={count}"],
      env=env,
      stdout=subprocess.PIPE,
      text=True,
      check=True,
    )
    results += [json.loads(line) for line in worker.stdout.splitlines() if line.startswith("{")]
  baseline = next((r for r in results if r["devices"] == 1 and r["preset"] == "data"), None)
  for result in results:
    if baseline is not None:
      state_bytes = result["param_bytes_per_device"] + result["opt_state_bytes_per_device"]
      result["step_time_vs_baseline"] = round(result["step_s"] / baseline["step_s"], 3)
      result["state_bytes_vs_baseline"] = round(
        state_bytes / (baseline["param_bytes_per_device"] + baseline["opt_state_bytes_per_device"]),
        3,
      )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
  app.run(main)
