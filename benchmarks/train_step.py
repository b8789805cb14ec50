r"""FPHTR train-step time: the compiled JAX step beside the reference PyTorch model.

  python -m benchmarks.train_step [--cases=resnet18_line,resnet34_page] [--steps=10]
      [--warmup=2] [--notorch] [--dtype=bfloat16] [--rng_impl=unsafe_rbg]
  python -m benchmarks.train_step --config=configs/fullpage.py [--config.model.dtype=bfloat16]

With --config, the one case timed is that config's own step (model, image
size, batch, tokens, loss settings), JAX only: e.g. a recipe's step time on
an accelerator. On a GPU the line also holds the device's peak memory.

The model is configs/default.py's (d_model 260, 6 post-norm layers, 4 heads,
MLP 1024, dropout 0.1, Adam 2e-4, its charset) with the case's encoder, image
size, batch and token length. Both frameworks train on the same random batch.
Their steps alternate, one JAX step then one PyTorch step, so that load from
other processes slows both alike: on a shared machine the ratio
`speedup_vs_torch` (PyTorch median / JAX median) is the figure to compare.
Without torch installed only the JAX figures are printed (torch fields null).

On a CPU, a third step alternates with those two (`--noxla_defaults` drops
it): the same JAX step compiled with XLA's own CPU defaults, which hand
convolutions to YNNPACK, where fphtr_jax keeps them in XLA (fphtr_jax's
package docstring). `speedup_vs_xla_defaults` is its median over the JAX
step's, and `xla_defaults_speedup_vs_torch_cpu` the PyTorch ratio it had.

Each line also says how much of the hardware the JAX step uses (see
benchmarks/utilisation.py): `flops_per_step`, the FLOPs of the compiled step
by XLA's cost analysis (all devices of the mesh; a grad_accum_steps scan
counted once per micro-batch); `jax_flops_per_s`, those FLOPs over the median
step time; `matmul_peak_flops_per_s`, the FLOP/s a large square matmul in the
step's compute dtype (model.dtype) reaches on the same devices, measured in
the same run after the steps; and `share_of_peak`, the ratio of the two.

Prints one JSON line per case, e.g.
  {"case": "resnet18_line", "encoder": "resnet18", "batch": 4, "height": 64,
   "width": 896, "tokens": 90, "jax_step_s": ..., "jax_examples_per_s": ...,
   "torch_step_s": ..., "speedup_vs_torch": ..., "params": ..., ...,
   "flops_per_step": ..., "jax_flops_per_s": ..., "matmul_peak_flops_per_s": ...,
   "share_of_peak": ...}
Step times are medians over --steps steps, after compilation and --warmup
steps; the JAX step is timed until its outputs are ready (block_until_ready).
"""

import dataclasses
import json
import os
import statistics
import time

from absl import app, flags
from flax import traverse_util
import flax.linen as nn
import jax
from ml_collections import config_flags
import numpy as np

from benchmarks import utilisation
from configs import default
import fphtr_jax
from fphtr_jax import config_validation, sharding, train
from fphtr_jax import tokenizer as tokenizer_lib
from fphtr_jax.models import resnet


@dataclasses.dataclass(frozen=True)
class Case:
  encoder: str
  batch: int
  height: int
  width: int
  tokens: int  # including <SOS> and <EOS>; the reference's line/form max lengths


CASES = {
  "resnet18_line": Case("resnet18", batch=4, height=64, width=896, tokens=90),
  "resnet34_line": Case("resnet34", batch=4, height=64, width=896, tokens=90),
  "resnet18_page": Case("resnet18", batch=1, height=1024, width=1248, tokens=700),
  "resnet34_page": Case("resnet34", batch=1, height=1024, width=1248, tokens=700),
}

_CASES = flags.DEFINE_list("cases", list(CASES), f"Cases to time, from {list(CASES)}.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per framework and case.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps per framework after compilation.")
_TORCH = flags.DEFINE_bool(
  "torch", True, "Also time the reference PyTorch model (--notorch: JAX only)."
)
_TORCH_THREADS = flags.DEFINE_integer(
  "torch_threads", None, "PyTorch intra-op threads; default: the usable cores."
)
_OMP_WAIT_POLICY = flags.DEFINE_enum(
  "omp_wait_policy",
  "PASSIVE",
  ["PASSIVE", "ACTIVE", ""],
  "OMP_WAIT_POLICY for PyTorch's OpenMP threads; '' leaves the environment's. PASSIVE keeps "
  "the baseline from collapsing when other processes share the cores: with spinning (ACTIVE) "
  "threads, a 2-thread step can take 10x longer on a busy 2-core machine.",
)
_DTYPE = flags.DEFINE_enum(
  "dtype", None, ["float32", "bfloat16"], "JAX compute dtype (model.dtype); default: the config's."
)
_RNG_IMPL = flags.DEFINE_string(
  "rng_impl", None, "JAX PRNG for dropout (train.rng_impl); default: the config's."
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random batch.")
_XLA_DEFAULTS = flags.DEFINE_bool(
  "xla_defaults",
  True,
  "On a CPU, also time the step compiled with XLA's own YNNPACK fusions (convolutions "
  "too): the baseline of the CPU option that fphtr_jax sets (fphtr_jax/__init__.py).",
)
_CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "Time this config's own train step instead of --cases (JAX only).",
  lock_config=False,
)


def case_config(case: Case):
  config = default.get_config()
  config.model.encoder = case.encoder
  if _DTYPE.value:
    config.model.dtype = _DTYPE.value
  if _RNG_IMPL.value:
    config.train.rng_impl = _RNG_IMPL.value
  config.data.image_height = case.height
  config.data.image_width = case.width
  config.data.max_len = case.tokens
  config.train.batch_size = case.batch
  return config


def config_case(config) -> Case:
  d = config.data
  return Case(
    config.model.encoder,
    batch=config.train.batch_size,
    height=d.image_height,
    width=d.image_width,
    tokens=d.max_len,
  )


def random_batch(case: Case, vocab_size: int, seed: int, glyphs: bool = False) -> dict:
  """Random images and token rows `<SOS> chars <EOS> <PAD>...` filling 75-100%.

  glyphs: also random glyph centres on the image (for guided attention).
  """
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(case.batch, case.height, case.width, 1)).astype(np.float32)
  tokens = np.full((case.batch, case.tokens), tokenizer_lib.PAD_ID, np.int32)
  for row in tokens:
    length = rng.integers(case.tokens * 3 // 4, case.tokens - 1, endpoint=True)
    row[0] = tokenizer_lib.SOS_ID
    row[1:length] = rng.integers(tokenizer_lib.NUM_SPECIAL, vocab_size, size=length - 1)
    row[length] = tokenizer_lib.EOS_ID
  batch = {"image": images, "tokens": tokens}
  if glyphs:
    size = np.array([case.height, case.width], np.float32)
    batch["glyph_centres"] = (rng.uniform(size=(case.batch, case.tokens - 1, 2)) * size).astype(
      np.float32
    )
  return batch


def param_counts(params) -> dict:
  """Total, image-encoder and text-decoder parameter counts of a params tree."""
  counts = {"params": 0, "encoder_params": 0, "decoder_params": 0}
  for path, leaf in traverse_util.flatten_dict(params).items():
    counts["params"] += leaf.size
    if path[0] == "image_encoder":
      counts["encoder_params"] += leaf.size
    elif path[0] == "text_decoder":
      counts["decoder_params"] += leaf.size
  return counts


class JaxStep:
  """The project's jitted train_step on one fixed batch, state carried along."""

  def __init__(self, config, batch: dict, compiler_options: dict | None = None):
    tokenizer = tokenizer_lib.Tokenizer(config.data.charset)
    self.mesh = sharding.create_mesh(config.mesh)
    rng = jax.random.key(config.train.seed, impl=config.train.rng_impl)
    init_rng, self.dropout_rng = jax.random.split(rng)
    model = train.create_model(config, tokenizer)
    self.state, state_shardings = train.create_train_state(config, model, self.mesh, init_rng)
    step = jax.jit(
      train.configured_train_step(config),
      in_shardings=(state_shardings, sharding.batch_sharding(self.mesh), None),
      out_shardings=(state_shardings, None),
      donate_argnums=0,
    )
    # The model's logical sharding constraints resolve while tracing.
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(sharding.logical_rules(config.mesh)):
      self.batch = sharding.put_batch(batch, self.mesh)
      start = time.perf_counter()
      traced = step.trace(self.state, self.batch, self.dropout_rng)
      self.compiled = traced.lower().compile(compiler_options)
      self.compile_s = time.perf_counter() - start
      # XLA's count is one device's share of the SPMD program.
      self.flops = utilisation.flops(self.compiled, traced.jaxpr, num_devices=self.mesh.size)

  def __call__(self):
    self.state, metrics = self.compiled(self.state, self.batch, self.dropout_rng)
    jax.block_until_ready((self.state, metrics))


def load_torch(num_threads: int | None):
  """Imports PyTorch set up for the baseline; None when it is not installed."""
  if _OMP_WAIT_POLICY.value:
    # OpenMP reads this once, when torch loads it.
    os.environ["OMP_WAIT_POLICY"] = _OMP_WAIT_POLICY.value
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  torch.set_num_threads(num_threads or len(os.sched_getaffinity(0)))
  return torch


class TorchStep:
  """The reference PyTorch model's train step on the same batch."""

  def __init__(self, config, batch: dict):
    import torch  # pylint: disable=g-import-not-at-top

    from benchmarks import torch_reference  # pylint: disable=g-import-not-at-top

    m = config.model
    vocab_size = tokenizer_lib.Tokenizer(config.data.charset).vocab_size
    torch.manual_seed(config.train.seed)
    model = torch_reference.FPHTR(
      vocab_size,
      config.data.max_len,
      m.encoder,
      m.d_model,
      m.num_layers,
      m.num_heads,
      m.mlp_dim,
      m.dropout_rate,
    )
    self.step = torch_reference.TrainStep(model, config.train.learning_rate)
    self.images = torch.from_numpy(batch["image"]).permute(0, 3, 1, 2).contiguous()
    self.tokens = torch.from_numpy(batch["tokens"]).long()
    self.params = {
      "torch_threads": torch.get_num_threads(),
      "torch_params": torch_reference.count_params(model),
      "torch_encoder_params": torch_reference.count_params(model.encoder),
      "torch_decoder_params": torch_reference.count_params(model.decoder),
    }

  def __call__(self):
    self.step(self.images, self.tokens)


def seconds(fn) -> tuple[float, float]:
  """(wall, CPU) seconds of one call; CPU time counts all threads of this process."""
  start, start_cpu = time.perf_counter(), time.process_time()
  fn()
  return time.perf_counter() - start, time.process_time() - start_cpu


def run_case(name: str, case: Case, with_torch: bool, config=None) -> dict:
  config = config or case_config(case)
  config_validation.validate_config(config)
  vocab_size = tokenizer_lib.Tokenizer(config.data.charset).vocab_size
  batch = random_batch(case, vocab_size, _SEED.value, glyphs=config.train.attention_loss_weight > 0)
  jax_step = JaxStep(config, batch)
  xla_defaults_step = None
  if _XLA_DEFAULTS.value and jax.default_backend() == "cpu":
    option = fphtr_jax.YNN_FUSION_FLAG.removeprefix("--")
    xla_defaults_step = JaxStep(config, batch, {option: fphtr_jax.XLA_DEFAULT_YNN_FUSIONS})
  torch_step = TorchStep(config, batch) if with_torch else None
  steps = [step for step in (jax_step, xla_defaults_step, torch_step) if step]

  for _ in range(_WARMUP.value):
    for step in steps:
      step()
  # Alternate the frameworks so that outside load hits both alike.
  times, cpu_times = [[] for _ in steps], [[] for _ in steps]
  for _ in range(_STEPS.value):
    for step, walls, cpus in zip(steps, times, cpu_times):
      wall, cpu = seconds(step)
      walls.append(wall)
      cpus.append(cpu)

  jax_s = statistics.median(times[0])
  jax_cpu_s = statistics.median(cpu_times[0])
  xla_s = statistics.median(times[1]) if xla_defaults_step else None
  xla_cpu_s = statistics.median(cpu_times[1]) if xla_defaults_step else None
  torch_s = statistics.median(times[-1]) if torch_step else None
  torch_cpu_s = statistics.median(cpu_times[-1]) if torch_step else None
  torch_times = times[-1]
  peak_memory = peak_memory_gib()  # before the matmul below allocates its own
  peak = utilisation.matmul_peak_flops_per_s(config.model.dtype, list(jax_step.mesh.devices.flat))
  result = {
    "case": name,
    "encoder": case.encoder,
    "batch": case.batch,
    "height": case.height,
    "width": case.width,
    "tokens": case.tokens,
    "memory_len": memory_len(case, config),
    "dtype": config.model.dtype,
    "rng_impl": config.train.rng_impl,
    "backend": jax.default_backend(),
    "steps": _STEPS.value,
    "jax_compile_s": round(jax_step.compile_s, 2),
    "jax_step_s": round(jax_s, 4),
    "jax_step_s_range": [round(min(times[0]), 4), round(max(times[0]), 4)],
    "jax_examples_per_s": round(case.batch / jax_s, 3),
    "torch_step_s": round(torch_s, 4) if torch_s else None,
    "torch_step_s_range": (
      [round(min(torch_times), 4), round(max(torch_times), 4)] if torch_s else None
    ),
    "torch_examples_per_s": round(case.batch / torch_s, 3) if torch_s else None,
    "speedup_vs_torch": round(torch_s / jax_s, 3) if torch_s else None,
    # Fastest steps: what each does when the machine leaves it alone.
    "speedup_vs_torch_min": round(min(torch_times) / min(times[0]), 3) if torch_s else None,
    # CPU seconds per step (all threads): what each costs whatever the load.
    "jax_cpu_s": round(jax_cpu_s, 4),
    "torch_cpu_s": round(torch_cpu_s, 4) if torch_s else None,
    "speedup_vs_torch_cpu": round(torch_cpu_s / jax_cpu_s, 3) if torch_s else None,
    # The same step compiled with XLA's own CPU defaults (before fphtr_jax's option).
    "xla_defaults_step_s": round(xla_s, 4) if xla_s else None,
    "xla_defaults_cpu_s": round(xla_cpu_s, 4) if xla_s else None,
    "speedup_vs_xla_defaults": round(xla_s / jax_s, 3) if xla_s else None,
    "xla_defaults_speedup_vs_torch_cpu": (
      round(torch_cpu_s / xla_cpu_s, 3) if xla_s and torch_s else None
    ),
    "load_avg": round(os.getloadavg()[0], 2),
    "peak_memory_gib": peak_memory,
    **param_counts(jax_step.state.params),
    **utilisation.fields(jax_step.flops, jax_s, peak),
  }
  result.update(
    torch_step.params
    if torch_step
    else dict.fromkeys(
      ("torch_threads", "torch_params", "torch_encoder_params", "torch_decoder_params")
    )
  )
  return result


def memory_len(case: Case, config) -> int:
  stride_h, stride_w = resnet.encoder_stride(config.model.encoder_last_stride)
  return -(-case.height // stride_h) * -(-case.width // stride_w)


def peak_memory_gib() -> float | None:
  """Peak memory of the first device, where the backend reports it (GPU, TPU)."""
  stats = jax.local_devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return round(peak / 2**30, 2) if peak is not None else None


def main(argv):
  del argv
  if _CONFIG.value is not None:
    if _DTYPE.value:
      _CONFIG.value.model.dtype = _DTYPE.value
    if _RNG_IMPL.value:
      _CONFIG.value.train.rng_impl = _RNG_IMPL.value
    config = _CONFIG.value
    print(json.dumps(run_case("config", config_case(config), False, config)), flush=True)
    return
  unknown = [name for name in _CASES.value if name not in CASES]
  if unknown:
    raise app.UsageError(f"--cases has unknown cases {unknown}; choose from {list(CASES)}.")
  with_torch = _TORCH.value and load_torch(_TORCH_THREADS.value) is not None
  for name in _CASES.value:
    print(json.dumps(run_case(name, CASES[name], with_torch)), flush=True)


if __name__ == "__main__":
  app.run(main)
