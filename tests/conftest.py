"""Shared fixtures: the tiny config, with word banks cached once per session."""

import atexit
import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The project's XLA options (fphtr_jax/__init__.py), set before any test starts
# JAX's backend, in this process and the commands the tests start.
import fphtr_jax  # noqa: E402, F401

# One persistent JAX compilation cache for the whole run, in this process, the
# pytest-xdist workers (they inherit the environment of the process that
# starts them) and the training processes the tests start: most of them
# compile the same tiny-config steps, which is most of their run time on a
# small CPU.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _COMPILATION_CACHE = tempfile.mkdtemp(prefix="fphtr_jax_test_compilation_cache_")
  atexit.register(shutil.rmtree, _COMPILATION_CACHE, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _COMPILATION_CACHE
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")


def shared_path(tmp_path_factory, name: str):
  """A path of this test run that every pytest-xdist worker shares.

  Each worker has a base folder of its own; they sit side by side in the
  run's folder. Without xdist the run's base folder is the process's own.
  """
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent
  return root / name


@contextlib.contextmanager
def exclusive(path):
  """Holds a lock on `path`.lock: one process of the run at a time builds what is there."""
  with open(f"{path}.lock", "w") as lock:  # closing it releases the lock
    fcntl.flock(lock, fcntl.LOCK_EX)
    yield


@pytest.fixture(scope="session")
def bank_cache_dir(tmp_path_factory):
  """One word-bank cache for the whole run (banks are written atomically)."""
  path = shared_path(tmp_path_factory, "word_banks")
  path.mkdir(exist_ok=True)
  return str(path)


@pytest.fixture
def tiny_config(bank_cache_dir):
  from configs import tiny

  config = tiny.get_config()
  config.data.cache_dir = bank_cache_dir
  return config


# The recipe that trains the tiny model stably: pre-norm, AdamW,
# warmup + cosine decay, clipping. Evaluated on a set that ends in a partial batch.
TINY_TRAIN_STEPS = 400
TINY_TRAIN_FLAGS = (
  f"--config.train.num_steps={TINY_TRAIN_STEPS}",
  f"--config.checkpoint.every_steps={TINY_TRAIN_STEPS // 2}",
  f"--config.eval.every_steps={TINY_TRAIN_STEPS}",
  "--config.eval.num_examples=12",
  "--config.model.pre_norm=True",
  "--config.train.optimizer=adamw",
  "--config.train.schedule=cosine",
  "--config.train.warmup_steps=50",
  "--config.train.learning_rate=3e-3",
  "--config.train.grad_clip_norm=1.0",
  "--config.train.log_every_steps=100",
)


@pytest.fixture(scope="session")
def trained_tiny_workdir(tmp_path_factory, bank_cache_dir):
  """Workdir of configs/tiny.py trained for TINY_TRAIN_STEPS steps by the training CLI.

  Trained once per test run: the first worker to need it trains it, the others wait.
  """
  folder = shared_path(tmp_path_factory, "trained_tiny")
  workdir, done = str(folder / "run"), folder / "trained"
  with exclusive(folder):
    if not done.exists():
      _train_tiny(workdir, bank_cache_dir)
      done.touch()
  return workdir


def _train_tiny(workdir: str, bank_cache_dir: str):
  command = [
    sys.executable,
    "-m",
    "fphtr_jax.main",
    "--config=configs/tiny.py",
    f"--workdir={workdir}",
    f"--config.data.cache_dir={bank_cache_dir}",
    *TINY_TRAIN_FLAGS,
  ]
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-5000:]


# --- Training runs in a subprocess, as a user starts them ----------------------

# No periodic eval or checkpoint gets in the way; every step is logged.
QUIET_TRAIN_FLAGS = (
  "--config.eval.every_steps=100000",
  "--config.checkpoint.every_steps=100000",
  "--config.train.log_every_steps=1",
)


def train_command(workdir, cache_dir, *overrides) -> list[str]:
  """The command line that trains configs/tiny.py in `workdir`, with `overrides`."""
  return [
    sys.executable,
    "-m",
    "fphtr_jax.main",
    "--config=configs/tiny.py",
    f"--workdir={workdir}",
    f"--config.data.cache_dir={cache_dir}",
    *overrides,
  ]


def wait_for(predicate, process, log_path, interval=0.02):
  """Polls until `predicate` holds; fails with the run's log if the run ends first.

  The runs train for a finite number of steps, so one that never gets there
  ends, and the test fails, rather than hanging.
  """
  while not predicate():
    assert process.poll() is None, log_path.read_text()[-3000:]
    time.sleep(interval)
