"""The sweep configs/tiny.py:sweep, trained once per test session by the sweep CLI.

tests/test_sweep.py and tests/test_report.py both read its workdirs; the
first to ask trains them (three tiny runs, in subprocesses).
"""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGUMENT = "configs/tiny.py:sweep"
# The points of configs/tiny.py:sweep and their workdir names.
POINTS = {"seed=1": (1, 10), "seed=2": (2, 10), "seed=2,steps=15": (2, 15)}  # seed, steps
_TRAINED = {}


def run_sweep(workdir_root: str, cache_dir: str, *flags: str) -> subprocess.CompletedProcess:
  """`python -m fphtr_jax.sweep --config=configs/tiny.py:sweep` into `workdir_root`."""
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  command = [
    sys.executable,
    "-m",
    "fphtr_jax.sweep",
    f"--config={ARGUMENT}",
    f"--workdir_root={workdir_root}",
    f"--config.data.cache_dir={cache_dir}",
    *flags,
  ]
  return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)


def trained_root(cache_dir: str) -> tuple[str, str]:
  """(folder of the sweep's three trained workdirs, what the first sweep call printed)."""
  if "root" not in _TRAINED:
    root = tempfile.mkdtemp(prefix="fphtr_jax_test_tiny_sweep_")
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    result = run_sweep(root, cache_dir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    _TRAINED.update(root=root, stdout=result.stdout)
  return _TRAINED["root"], _TRAINED["stdout"]
