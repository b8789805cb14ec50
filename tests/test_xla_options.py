"""The XLA CPU option that fphtr_jax sets when imported (fphtr_jax/__init__.py)."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

import fphtr_jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _xla_flags_after_import(xla_flags: str | None) -> str:
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  if xla_flags is not None:
    env["XLA_FLAGS"] = xla_flags
  command = [sys.executable, "-c", "import os, fphtr_jax; print(os.environ['XLA_FLAGS'])"]
  result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  return result.stdout.strip()


def test_import_adds_the_option_and_keeps_the_users_flags():
  option = f"{fphtr_jax.YNN_FUSION_FLAG}={fphtr_jax.YNN_FUSIONS}"
  assert _xla_flags_after_import(None) == option
  flags = "--xla_force_host_platform_device_count=8"
  assert _xla_flags_after_import(flags) == f"{flags} {option}"
  # A user's own value of the option wins.
  own = f"{fphtr_jax.YNN_FUSION_FLAG}={fphtr_jax.XLA_DEFAULT_YNN_FUSIONS}"
  assert _xla_flags_after_import(own) == own


def _convolution_fusions(compiler_options=None) -> list[str]:
  """The ENTRY lines of a compiled convolution gradient that run a convolution."""

  def loss(x, w):
    dims = ("NHWC", "HWIO", "NHWC")
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dims)
    return jnp.tanh(y).sum()

  # Large enough for XLA to hand it to YNNPACK by default (not a few channels).
  x, w = jnp.ones((4, 64, 64, 32)), jnp.ones((3, 3, 32, 32))
  text = jax.jit(jax.grad(loss, (0, 1))).lower(x, w).compile(compiler_options).as_text()
  entry = text[text.index("ENTRY") :].splitlines()
  return [line for line in entry if "conv_general_dilated" in line and "=" in line]


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="a CPU compiler option")
def test_convolutions_stay_in_xla_and_xla_defaults_hand_them_to_ynnpack():
  assert fphtr_jax.YNN_FUSION_FLAG in os.environ["XLA_FLAGS"]
  ours = _convolution_fusions()
  assert ours and not any("ynn_fusion" in line for line in ours)
  option = fphtr_jax.YNN_FUSION_FLAG.removeprefix("--")
  defaults = _convolution_fusions({option: fphtr_jax.XLA_DEFAULT_YNN_FUSIONS})
  assert any("ynn_fusion" in line for line in defaults)
