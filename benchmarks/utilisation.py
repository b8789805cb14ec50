r"""FLOPs of a compiled step and the share of the hardware's peak it reaches.

The benchmarks use this module to add four fields to their JSON lines:

  flops_per_step           FLOPs of one timed call, from XLA's cost analysis of
                           the compiled program (`compiled.cost_analysis()`)
  jax_flops_per_s          flops_per_step / the median seconds of a call
  matmul_peak_flops_per_s  the FLOP/s a large square matmul of the same dtype
                           reaches on the same devices, measured in the same
                           process (`matmul_peak_flops_per_s`): the "peak"
  share_of_peak            jax_flops_per_s / matmul_peak_flops_per_s

XLA's cost analysis counts the body of a loop (`lax.while_loop`, `lax.scan`)
once, whatever its trip count. `flops` corrects for that from the function's
jaxpr: it compiles the function once more with the loop followed by one more
run of its body, and the difference, the body's FLOPs where it is (with
what XLA knows of its inputs there, e.g. constants), counts for each run XLA
left out: a scan runs `length` times, a while loop `while_trips` times (the
caller knows it, e.g. a search forced to write N tokens). With a while loop
and no `while_trips`, or a loop inside another loop (or under cond, remat,
shard_map, ...), the count is unknown: None. Work that XLA hoists out of the
loop is counted once per run, so the corrected figure can be slightly high.

On a multi-device (SPMD) program XLA's figure is that of one device's share;
`flops(..., num_devices=N)` multiplies it by N, the work of all devices
(redundant work, e.g. replicated layers under tensor parallelism, counted on
each device that does it). The matmul peak on N devices runs one matmul per
device at once and adds their FLOPs.

The peak is what XLA's own matmul achieves here and now, not the vendor's
datasheet figure: on a machine shared with other jobs both the step and the
matmul slow down, though not necessarily alike.
"""

import statistics
import time
from typing import Any, Sequence

import jax
from jax import extend as jex
import jax.numpy as jnp
import numpy as np

# Side of the square matmul that measures the peak, per device, by backend.
PEAK_MATMUL_SIZE = {"cpu": 2048, "gpu": 8192, "tpu": 8192}
DEFAULT_PEAK_MATMUL_SIZE = 4096


def compiled_flops(compiled) -> float | None:
  """FLOPs of a `jax.stages.Compiled` from XLA's cost analysis (a dict, or a
  list of dicts, one per program, depending on the jax version); None if the
  backend gives none."""
  analysis = compiled.cost_analysis()
  if analysis is None:
    return None
  if isinstance(analysis, dict):
    analysis = [analysis]
  values = [a["flops"] for a in analysis if a and a.get("flops") is not None]
  if not values:
    return None
  return float(sum(values))


_CALLS = ("pjit", "jit", "closed_call", "core_call")  # inlined to reach a loop
_LOOPS = ("while", "scan")


def _call_jaxpr(eqn):
  """The ClosedJaxpr of a plain call eqn (a nested jit), else None."""
  if eqn.primitive.name not in _CALLS:
    return None
  sub = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
  if isinstance(sub, jex.core.Jaxpr):
    sub = jex.core.ClosedJaxpr(sub, ())
  return sub if isinstance(sub, jex.core.ClosedJaxpr) else None


def _has_loop(jaxpr) -> bool:
  jaxpr = jaxpr.jaxpr if isinstance(jaxpr, jex.core.ClosedJaxpr) else jaxpr
  return any(
    eqn.primitive.name in _LOOPS or any(_has_loop(s) for s in jex.core.jaxprs_in_params(eqn.params))
    for eqn in jaxpr.eqns
  )


def _find_loops(jaxpr, path=()):
  """[(path, eqn)] of the loops of `jaxpr`, through nested jits; a path is the
  eqn indices down to the loop. None if a loop sits where this cannot count
  it: in another loop, or under another higher-order primitive (cond,
  remat, custom_vjp, shard_map, ...)."""
  found = []
  for index, eqn in enumerate(jaxpr.jaxpr.eqns):
    if eqn.primitive.name in _LOOPS:
      if any(_has_loop(s) for s in jex.core.jaxprs_in_params(eqn.params)):
        return None
      found.append((path + (index,), eqn))
    elif (sub := _call_jaxpr(eqn)) is not None:
      inner = _find_loops(sub, path + (index,))
      if inner is None:
        return None
      found += inner
    elif any(_has_loop(s) for s in jex.core.jaxprs_in_params(eqn.params)):
      return None
  return found


def _bind(eqn, invals) -> list:
  """One eqn applied to `invals`, as jax.core.eval_jaxpr applies it."""
  params = eqn.primitive.get_bind_params(eqn.params)
  subfuns = ()
  if isinstance(params, tuple):  # older jax: (subfuns, params)
    subfuns, params = params
  with eqn.ctx.manager:
    outs = eqn.primitive.bind(*subfuns, *invals, **params)
  return list(outs) if eqn.primitive.multiple_results else [outs]


def _loop_then_body(eqn, invals, extras: list) -> list:
  """The loop's outputs, put once more through its body (extra outputs kept
  in `extras`, so that XLA cannot drop the part of the body the program's
  outputs do not need)."""
  outs = _bind(eqn, invals)
  p = eqn.params
  if eqn.primitive.name == "while":
    consts = invals[p["cond_nconsts"] : p["cond_nconsts"] + p["body_nconsts"]]
    again = jex.core.jaxpr_as_fun(p["body_jaxpr"])(*consts, *outs)
    extras += again
    return list(again)
  consts, carry = invals[: p["num_consts"]], outs[: p["num_carry"]]
  first_xs = [x[0] for x in invals[p["num_consts"] + p["num_carry"] :]]
  again = jex.core.jaxpr_as_fun(p["jaxpr"])(*consts, *carry, *first_xs)
  extras += again
  return list(again[: p["num_carry"]]) + outs[p["num_carry"] :]


def _eval(jaxpr, consts, args, path, extras: list) -> list:
  """Evaluates `jaxpr` (a Jaxpr), the loop at `path` followed by one more run
  of its body."""
  env = {}

  def read(var):
    return var.val if isinstance(var, jex.core.Literal) else env[var]

  def write(variables, values):
    for var, value in zip(variables, values):
      if not isinstance(var, jex.core.DropVar):
        env[var] = value

  write(jaxpr.constvars, consts)
  write(jaxpr.invars, args)
  for index, eqn in enumerate(jaxpr.eqns):
    invals = [read(var) for var in eqn.invars]
    if index != path[0]:
      outs = _bind(eqn, invals)
    elif len(path) == 1:
      outs = _loop_then_body(eqn, invals, extras)
    else:
      sub = _call_jaxpr(eqn)
      outs = _eval(sub.jaxpr, sub.consts, invals, path[1:], extras)
    write(eqn.outvars, outs)
  return [read(var) for var in jaxpr.outvars]


def _body_flops(compiled, jaxpr, path, base: float) -> float | None:
  """FLOPs of one run of the body of the loop at `path`, where it is: the
  program compiled with the body run once more after the loop, less `base`
  (the program's own count). In place, the body sees what XLA knows of its
  inputs (e.g. constants, which let it drop a lax.cond branch)."""
  avals = jaxpr.in_avals
  shardings = jax.tree.leaves(compiled.input_shardings)
  if len(shardings) != len(avals):
    shardings = [None] * len(avals)
  args = [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s) for a, s in zip(avals, shardings)]

  def run_once_more(*flat):
    extras = []
    outs = _eval(jaxpr.jaxpr, jaxpr.consts, flat, path, extras)
    return outs, extras

  more = compiled_flops(jax.jit(run_once_more).trace(*args).lower().compile())
  return None if more is None else more - base


def loop_correction(
  compiled, jaxpr, while_trips: int | None = None, base: float | None = None
) -> float | None:
  """FLOPs that XLA's cost analysis of `compiled` leaves out of its loops
  (per device): (trips - counted) runs of each loop's body. None if a while
  loop's trip count is unknown (no `while_trips`), or a loop is nested where
  this cannot count it (see `_find_loops`).

  jaxpr: the ClosedJaxpr `compiled` was compiled from; base: its XLA count.
  """
  loops = _find_loops(jaxpr)
  if loops is None:
    return None
  if not loops:
    return 0.0
  base = compiled_flops(compiled) if base is None else base
  if base is None:
    return None
  extra = 0.0
  for path, eqn in loops:
    if eqn.primitive.name == "while":
      if while_trips is None:
        return None
      missing = while_trips - 1
    else:
      # An unrolled scan's XLA loop body holds `unroll` iterations.
      length, unroll = eqn.params["length"], eqn.params.get("unroll", 1)
      unroll = length if unroll is True else max(int(unroll), 1)
      missing = length - min(unroll, length)
    if missing > 0:
      body = _body_flops(compiled, jaxpr, path, base)
      if body is None:
        return None
      extra += missing * body
  return extra


def flops(compiled, jaxpr=None, while_trips: int | None = None, num_devices: int = 1):
  """FLOPs of one call of `compiled` (a `jax.stages.Compiled`), all devices.

  jaxpr: the traced function's jaxpr (`jax.jit(f).trace(*args).jaxpr`), to
    count each loop body as often as it runs; without it, XLA's figure as is.
    Call this where the function was traced (e.g. under its mesh): counting a
    loop compiles the function once more.
  while_trips: the trip count of the function's while loops (the benchmarks
    have at most one).
  num_devices: devices the SPMD program runs on; the per-device figure is
    multiplied by it.
  """
  total = compiled_flops(compiled)
  if total is None:
    return None
  if jaxpr is not None:
    extra = loop_correction(compiled, jaxpr, while_trips, total)
    if extra is None:
      return None
    total += extra
  return total * num_devices


def jit_flops(fn, *args, while_trips: int | None = None, **jit_kwargs) -> float | None:
  """FLOPs of one call of `jax.jit(fn, **jit_kwargs)(*args)` (loops counted
  as often as they run; see `flops`)."""
  traced = jax.jit(fn, **jit_kwargs).trace(*args)
  return flops(traced.lower().compile(), traced.jaxpr, while_trips)


def matmul_peak_flops_per_s(
  dtype: Any = jnp.float32,
  devices: Sequence[jax.Device] | None = None,
  size: int | None = None,
  repeats: int = 5,
) -> float:
  """Achieved FLOP/s of a square `size` x `size` matmul of `dtype` on each of
  `devices` at once (default: the first local device): the median of
  `repeats` timed calls after one untimed, until the result is ready.

  size: default PEAK_MATMUL_SIZE of the backend; on several CPU devices (which
  share the host's cores) shrunk so that all of them together do about the
  work of one.
  """
  devices = list(devices or jax.local_devices()[:1])
  n = len(devices)
  platform = devices[0].platform
  if size is None:
    size = PEAK_MATMUL_SIZE.get(platform, DEFAULT_PEAK_MATMUL_SIZE)
    if platform == "cpu" and n > 1:
      size = max(512, int(size / n ** (1 / 3)) // 128 * 128)
  dtype = jnp.dtype(dtype)
  mesh = jax.sharding.Mesh(np.array(devices), ("d",))
  spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d"))
  rng = np.random.default_rng(0)
  a, b = (
    jax.device_put(
      rng.standard_normal((n, size, size), np.float32).astype(dtype) / np.sqrt(size), spec
    )
    for _ in range(2)
  )
  matmul = jax.jit(
    lambda a, b: jnp.einsum("nij,njk->nik", a, b, preferred_element_type=dtype),
    in_shardings=(spec, spec),
    out_shardings=spec,
  )
  compiled = matmul.lower(a, b).compile()
  jax.block_until_ready(compiled(a, b))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(a, b))
    times.append(time.perf_counter() - start)
  return 2.0 * n * size**3 / statistics.median(times)


def fields(
  flops_per_call: float | None, seconds: float, peak: float | None, name: str = "flops_per_step"
) -> dict:
  """The four JSON fields for a call of `flops_per_call` FLOPs taking `seconds`;
  `name`: the key of the FLOPs."""
  per_s = flops_per_call / seconds if flops_per_call is not None and seconds > 0 else None
  return {
    name: round(flops_per_call) if flops_per_call is not None else None,
    "jax_flops_per_s": round(per_s) if per_s is not None else None,
    "matmul_peak_flops_per_s": round(peak) if peak is not None else None,
    "share_of_peak": round(per_s / peak, 4) if per_s is not None and peak else None,
  }
