r"""Decoding speed: KV-cached greedy and beam search against decoding without a cache.

  python -m benchmarks.decode [--tokens=100,200,400] [--beam_size=4] [--runs=3] [--notorch]

The model is configs/default.py's (ResNet18, d_model 260, 6 post-norm layers,
4 heads, MLP 1024) with random weights and the page-level max_len of 700
tokens (the size of the KV cache). A page is 1024x1248 pixels (the reference's
IAM forms at half resolution), batch 1; a line is 64x896 with 45 tokens. Every
method is forced to write exactly `tokens` tokens (<EOS> is never picked), so
the lengths are comparable. Methods:

  cached        greedy_search over the decoder's KV cache, in lax.while_loop
  uncached      a Python loop that re-runs the whole decoder over the prefix at
                every step, as the reference decoded (prefix padded up to a
                multiple of 32 tokens, so that only a few shapes compile)
  beam<K>       beam_search with the KV cache, K hypotheses per page
  torch         the reference architecture in PyTorch (benchmarks/torch_reference.py),
                decoding like the reference: decoder over the prefix each step

Each line is one case: seconds per page (encoder included, compilation
excluded: the median of --runs runs for the cached searches, one run for the
slow uncached ones), tokens/s, and ratios to the cached greedy search of the
same case, measured in this process: `speedup_of_cache` (uncached or torch
seconds / cached seconds) or `cost_vs_greedy` (beam / greedy). `load_avg` is
the 1-minute load average at the start of the case, since a shared machine
slows every method.

Each JAX line also says how much of the hardware the decoding uses (see
benchmarks/utilisation.py): `flops_per_page`, the FLOPs of one timed call by
XLA's cost analysis (encoder included; the cached searches' while loop,
which XLA counts once, counted once per token: exactly `tokens` steps run;
for uncached, the sum over the compiled calls its Python loop makes, the
encoder and one decoder pass per token); `jax_flops_per_s`, those FLOPs over
the median seconds per page; `matmul_peak_flops_per_s`, the FLOP/s of a
large square float32 matmul on the same device, measured right after the
case; `share_of_peak`, the ratio. Batch-1 decoding is bound by memory and
per-step overhead, not by arithmetic, so its share is small. The torch lines
hold nulls there (their FLOPs are not counted).
"""

import functools
import json
import os
import statistics
import time

from absl import app, flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import utilisation
from configs import default
from fphtr_jax import tokenizer as tokenizer_lib
from fphtr_jax import transcribe
from fphtr_jax.models import fphtr

_TOKENS = flags.DEFINE_list("tokens", ["100", "200", "400"], "Output tokens per page case.")
_BEAM = flags.DEFINE_integer("beam_size", 4, "Beam size of the beam search cases.")
_RUNS = flags.DEFINE_integer("runs", 3, "Timed runs of the cached searches (median).")
_NOTORCH = flags.DEFINE_bool("notorch", False, "Skip the PyTorch reference.")
_NOUNCACHED = flags.DEFINE_bool("nouncached", False, "Skip the slow uncached JAX decoding.")

MAX_LEN = 700  # the reference's form-level max length: the cache holds this many steps
PAGE = (1024, 1248)
LINE = (64, 896)
LINE_TOKENS = 45
PREFIX_BUCKET = 32
DTYPE = default.get_config().model.dtype  # the compute dtype, of the peak matmul too


def _seconds(fn, runs: int) -> tuple[float, float]:
  """Median (wall, CPU) seconds of `runs` calls. CPU time (all threads of this
  process) hardly depends on what else the machine runs; wall time does."""
  walls, cpus = [], []
  for _ in range(runs):
    start, start_cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn())
    walls.append(time.perf_counter() - start)
    cpus.append(time.process_time() - start_cpu)
  return statistics.median(walls), statistics.median(cpus)


def _emit(case: dict):
  print(json.dumps(case), flush=True)


class JaxDecoder:
  """The default model with random weights; cached, beam and uncached decoding."""

  def __init__(self):
    config = default.get_config()
    self.tokenizer = tokenizer_lib.Tokenizer(config.data.charset)
    self.model = fphtr.create_model(config.model, self.tokenizer.vocab_size, MAX_LEN)
    images = jnp.zeros((1, 64, 64, 1), jnp.float32)
    tokens = jnp.zeros((1, 2), jnp.int32)
    self.variables = nn.unbox(
      jax.jit(functools.partial(self.model.init, train=False))(jax.random.key(0), images, tokens)
    )

  def search(self, images, tokens: int, beam_size: int = 1):
    """A compiled f() -> DecodeOutput writing exactly `tokens` tokens per image;
    f.flops: the FLOPs of one call."""
    fn = jax.jit(
      functools.partial(
        transcribe.decode_images,
        self.model,
        max_len=tokens + 1,
        beam_size=beam_size,
        ignore_eos=True,
      )
    )
    traced = fn.trace(self.variables, images)
    compiled = traced.lower().compile()

    def run():
      return compiled(self.variables, images)

    # The search's while loop runs exactly `tokens` steps (ignore_eos).
    run.flops = utilisation.flops(compiled, traced.jaxpr, while_trips=tokens)
    return run

  def uncached(self, images, tokens: int):
    """A compiled f() -> int32 [B, tokens + 1]: the decoder re-run over the prefix each step;
    f.flops: the FLOPs of one call, the sum over the compiled calls it makes."""
    model, variables = self.model, self.variables
    buffer_len = -(-tokens // PREFIX_BUCKET) * PREFIX_BUCKET + 1
    encode = jax.jit(functools.partial(model.apply, train=False, method=fphtr.FPHTR.encode))
    encode = encode.lower(variables, images).compile()
    memory = jax.eval_shape(
      lambda: model.apply(variables, images, train=False, method=fphtr.FPHTR.encode)
    )

    def step(variables, memory, buffer, position, *, length):
      logits = model.apply(
        variables, memory, buffer[:, :length], train=False, method=fphtr.FPHTR.decode
      )
      logits = jax.lax.dynamic_index_in_dim(logits, position, axis=1, keepdims=False)
      # Never <PAD>, <SOS> or <EOS>, as in the cached search with ignore_eos.
      logits = logits.at[:, : tokenizer_lib.NUM_SPECIAL].set(-jnp.inf)
      token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
      return jax.lax.dynamic_update_slice_in_dim(buffer, token[:, None], position + 1, axis=1)

    buffer = jnp.zeros((images.shape[0], buffer_len), jnp.int32).at[:, 0].set(tokenizer_lib.SOS_ID)
    steps = {}
    for length in range(PREFIX_BUCKET, buffer_len, PREFIX_BUCKET):
      steps[length] = (
        jax.jit(functools.partial(step, length=length), donate_argnums=2)
        .lower(variables, memory, buffer, jnp.int32(0))
        .compile()
      )

    def run():
      memory = encode(variables, images)
      out = buffer.copy()
      for position in range(tokens):
        length = -(-(position + 1) // PREFIX_BUCKET) * PREFIX_BUCKET
        out = steps[length](variables, memory, out, jnp.int32(position))
      return out[:, : tokens + 1]

    step_flops = {length: utilisation.flops(compiled) for length, compiled in steps.items()}
    lengths = [-(-(position + 1) // PREFIX_BUCKET) * PREFIX_BUCKET for position in range(tokens)]
    parts = [utilisation.flops(encode)] + [step_flops[length] for length in lengths]
    run.flops = None if None in parts else sum(parts)
    return run


class TorchDecoder:
  """The reference PyTorch model with random weights, decoding as the reference did."""

  def __init__(self, vocab_size: int):
    import torch

    from benchmarks import torch_reference

    self.torch = torch
    self.model = torch_reference.FPHTR(vocab_size, MAX_LEN).eval()
    self.greedy(np.zeros((1,) + LINE + (1,), np.float32), 2)()  # warm up

  def greedy(self, images: np.ndarray, tokens: int):
    torch = self.torch
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))

    def run():
      with torch.inference_mode():
        memory = self.model.encoder(x)
        out = torch.full((x.shape[0], 1), tokenizer_lib.SOS_ID, dtype=torch.long)
        for _ in range(tokens):
          logits = self.model.decoder(memory, out)[:, -1]
          logits[:, : tokenizer_lib.NUM_SPECIAL] = -float("inf")
          out = torch.cat([out, logits.argmax(-1, keepdim=True)], dim=1)
      return out

    return run


def _case(
  name, method, size, tokens, seconds, runs, baseline=None, ratio_name=None, flops=None, **extra
):
  """One JSON line; `ratio_name` = seconds / `baseline` (the cached greedy
  seconds), on wall time and (`_cpu`) on CPU time. seconds: (wall, CPU).
  flops: of one call (None for torch: no utilisation fields, all null)."""
  (wall, cpu) = seconds
  case = {
    "case": name,
    "method": method,
    "height": size[0],
    "width": size[1],
    "batch": 1,
    "tokens": tokens,
    "s_per_page": round(wall, 4),
    "cpu_s_per_page": round(cpu, 4),
    "tokens_per_s": round(tokens / wall, 2),
    "runs": runs,
  }
  if baseline is not None:
    case[ratio_name] = round(wall / baseline[0], 2)
    case[ratio_name + "_cpu"] = round(cpu / baseline[1], 2)
  case.update(extra)
  peak = utilisation.matmul_peak_flops_per_s(DTYPE) if flops is not None else None
  case.update(utilisation.fields(flops, wall, peak, name="flops_per_page"))
  case["load_avg"] = round(os.getloadavg()[0], 2)
  return case


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  jax_decoder = JaxDecoder()
  torch_decoder = None
  if not _NOTORCH.value:
    try:
      torch_decoder = TorchDecoder(jax_decoder.tokenizer.vocab_size)
    except ImportError:
      print(json.dumps({"note": "torch is not installed: no reference figures"}), flush=True)
  runs = _RUNS.value

  def image(size):
    return rng.normal(size=(1,) + size + (1,)).astype(np.float32)

  # --- A line, 45 tokens: the reference's 0.307 s figure. ---------------------------
  line = image(LINE)
  search = jax_decoder.search(jnp.asarray(line), LINE_TOKENS)
  greedy_s = _seconds(search, runs)
  _emit(_case("line", "cached", LINE, LINE_TOKENS, greedy_s, runs, flops=search.flops))
  if torch_decoder is not None:
    torch_s = _seconds(torch_decoder.greedy(line, LINE_TOKENS), 1)
    _emit(_case("line", "torch", LINE, LINE_TOKENS, torch_s, 1, greedy_s, "speedup_of_cache"))

  # --- A page at each length. ----------------------------------------------------------
  page = image(PAGE)
  page_jax = jnp.asarray(page)
  for tokens in map(int, _TOKENS.value):
    search = jax_decoder.search(page_jax, tokens)
    greedy_tokens = np.asarray(search().tokens)
    greedy_s = _seconds(search, runs)
    _emit(_case("page", "cached", PAGE, tokens, greedy_s, runs, flops=search.flops))
    beam = jax_decoder.search(page_jax, tokens, _BEAM.value)
    beam_s = _seconds(beam, runs)
    _emit(
      _case(
        "page",
        f"beam{_BEAM.value}",
        PAGE,
        tokens,
        beam_s,
        runs,
        greedy_s,
        "cost_vs_greedy",
        flops=beam.flops,
      )
    )
    if not _NOUNCACHED.value:
      uncached = jax_decoder.uncached(page_jax, tokens)
      uncached_tokens = []
      uncached_s = _seconds(lambda: uncached_tokens.append(uncached()) or uncached_tokens[-1], 1)
      uncached_tokens = np.asarray(uncached_tokens[-1])
      _emit(
        _case(
          "page",
          "uncached",
          PAGE,
          tokens,
          uncached_s,
          1,
          greedy_s,
          "speedup_of_cache",
          flops=uncached.flops,
          same_tokens_as_cached=bool(np.array_equal(uncached_tokens, greedy_tokens)),
        )
      )
    if torch_decoder is not None:
      torch_s = _seconds(torch_decoder.greedy(page, tokens), 1)
      _emit(_case("page", "torch", PAGE, tokens, torch_s, 1, greedy_s, "speedup_of_cache"))


if __name__ == "__main__":
  app.run(main)
