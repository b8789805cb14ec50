"""The benchmarks' FLOP counts and matmul peak (benchmarks/utilisation.py)."""

import jax
import jax.numpy as jnp
import pytest

from benchmarks import utilisation

M, N, K = 64, 48, 32
MATMUL = 2 * 32**3  # FLOPs of one 32x32 @ 32x32


def test_matmul_flops_are_2mnk():
  a, b = jnp.ones((M, K)), jnp.ones((K, N))
  assert utilisation.jit_flops(jnp.matmul, a, b) == 2 * M * N * K


class _Compiled:
  def __init__(self, analysis):
    self.analysis = analysis

  def cost_analysis(self):
    return self.analysis


def test_cost_analysis_as_dict_or_list():
  assert utilisation.compiled_flops(_Compiled({"flops": 6.0})) == 6.0
  assert utilisation.compiled_flops(_Compiled([{"flops": 6.0}, {"flops": 1.0}])) == 7.0
  assert utilisation.compiled_flops(_Compiled([{}])) is None
  assert utilisation.compiled_flops(_Compiled(None)) is None


def test_loops_count_every_run_of_their_body():
  a = jnp.ones((32, 32))

  def scan(a):
    return jax.lax.scan(lambda c, x: (c @ x, None), a, jnp.stack([a] * 10))[0]

  def while_loop(a):
    return jax.lax.while_loop(lambda s: s[0] < 10, lambda s: (s[0] + 1, s[1] @ a), (0, a))[1]

  # The scan's length is in the jaxpr; a while loop's trip count is the caller's.
  assert utilisation.jit_flops(scan, a) == pytest.approx(10 * MATMUL, rel=1e-3)
  assert utilisation.jit_flops(while_loop, a, while_trips=10) == pytest.approx(
    10 * MATMUL, rel=1e-3
  )
  assert utilisation.jit_flops(while_loop, a) is None
  # Through a nested jit too.
  inner = jax.jit(while_loop)
  assert utilisation.jit_flops(lambda a: inner(a) * 2, a, while_trips=10) == pytest.approx(
    10 * MATMUL, rel=1e-2
  )


def test_loop_body_counted_where_it_runs():
  """A lax.cond on a constant in the loop (as the cached decoder's cross-attention
  has) costs only its live branch; XLA counts the dearer one on a variable."""
  a = jnp.ones((32, 32))

  def loop(a, pred):
    body = lambda s: (s[0] + 1, jax.lax.cond(pred, lambda: s[1] @ a @ a @ a, lambda: s[1] @ a))
    return jax.lax.while_loop(lambda s: s[0] < 10, body, (0, a))[1]

  constant = utilisation.jit_flops(lambda a: loop(a, jnp.zeros((), bool)), a, while_trips=10)
  assert constant == pytest.approx(10 * MATMUL, rel=1e-3)
  variable = utilisation.jit_flops(loop, a, jnp.zeros((), bool), while_trips=10)
  assert variable == pytest.approx(30 * MATMUL, rel=1e-3)


def test_matmul_peak_and_fields():
  peak = utilisation.matmul_peak_flops_per_s(jnp.float32, size=256, repeats=2)
  assert peak > 0
  fields = utilisation.fields(2e9, 0.5, 8e9)
  assert fields == {
    "flops_per_step": 2000000000,
    "jax_flops_per_s": 4000000000,
    "matmul_peak_flops_per_s": 8000000000,
    "share_of_peak": 0.5,
  }
  assert utilisation.fields(None, 0.5, None, name="flops_per_page") == {
    "flops_per_page": None,
    "jax_flops_per_s": None,
    "matmul_peak_flops_per_s": None,
    "share_of_peak": None,
  }
