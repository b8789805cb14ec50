"""One owner per workdir, checks before writes, and signals at any moment, on configs/tiny.py.

Real training processes, real signals, real lock files and checkpoints.
"""

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from fphtr_jax import train, workdir
from tests.conftest import QUIET_TRAIN_FLAGS, train_command, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(command, timeout=600):
  return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _start(command, log_path):
  with open(log_path, "w") as log:
    return subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def _wait_for_log(text, process, log_path):
  """Polls the log until it holds `text`; fails if the run ends first."""
  wait_for(lambda: text in log_path.read_text(), process, log_path)


def _dead_pid() -> int:
  process = subprocess.Popen([sys.executable, "-c", ""])
  process.wait()
  return process.pid


def _write_lock(run_dir, host, pid):
  os.makedirs(run_dir, exist_ok=True)
  lock = {"host": host, "pid": pid, "started": "2024-01-01T00:00:00+00:00"}
  (run_dir / workdir.LOCK_FILE).write_text(json.dumps(lock))


def _snapshot(run_dir) -> dict:
  """Relative path -> sha256 of every file under `run_dir`, and every folder."""
  files = {}
  for folder, dirs, names in os.walk(run_dir):
    for name in dirs:
      files[os.path.relpath(os.path.join(folder, name), run_dir)] = "folder"
    for name in names:
      path = os.path.join(folder, name)
      with open(path, "rb") as f:
        files[os.path.relpath(path, run_dir)] = hashlib.sha256(f.read()).hexdigest()
  return files


def _short_run(config, steps=1):
  config.train.num_steps = steps
  config.checkpoint.every_steps = steps
  config.eval.every_steps = steps
  return config


# --- One owner ------------------------------------------------------------------


@pytest.mark.slow
def test_a_second_trainer_is_refused_while_the_first_trains(tmp_path, bank_cache_dir):
  run_dir, log_path = tmp_path / "run", tmp_path / "first.txt"
  command = train_command(
    run_dir, bank_cache_dir, "--config.train.num_steps=100000", *QUIET_TRAIN_FLAGS
  )
  first = _start(command, log_path)
  try:
    _wait_for_log("[1] train/", first, log_path)
    owner = json.loads((run_dir / workdir.LOCK_FILE).read_text())
    assert (owner["host"], owner["pid"]) == (socket.gethostname(), first.pid)

    second = _run(command)
    assert second.returncode != 0
    assert f"is in use by another training run (PID {first.pid} on this host" in second.stderr
    assert "Resumed" not in second.stderr and "Training from step" not in second.stderr

    # The first run trained on, and stops as usual.
    assert first.poll() is None, log_path.read_text()[-3000:]
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=300) == 0, log_path.read_text()[-3000:]
  finally:
    first.kill()
  log = log_path.read_text()
  assert "Stopped by SIGTERM at step" in log
  stopped_at = log.split("Stopped by SIGTERM at step ")[1].split(";")[0]
  assert os.listdir(run_dir / "checkpoints") == [stopped_at]
  assert not (run_dir / workdir.LOCK_FILE).exists()


def test_a_lock_of_a_live_process_is_refused_by_its_pid(tiny_config, tmp_path):
  run_dir = tmp_path / "run"
  owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
  try:
    _write_lock(run_dir, socket.gethostname(), owner.pid)
    with pytest.raises(workdir.WorkdirInUseError, match=f"PID {owner.pid} on this host"):
      train.train_and_evaluate(tiny_config, str(run_dir))
  finally:
    owner.kill()
    owner.wait()
  assert os.listdir(run_dir) == [workdir.LOCK_FILE]
  assert json.loads((run_dir / workdir.LOCK_FILE).read_text())["pid"] == owner.pid


def test_a_lock_of_another_host_is_honoured(tiny_config, tmp_path):
  run_dir = tmp_path / "run"
  _write_lock(run_dir, "elsewhere.example", _dead_pid())
  lock_text = (run_dir / workdir.LOCK_FILE).read_text()
  with pytest.raises(
    workdir.WorkdirInUseError,
    match=r"on another machine \(PID \d+ on host elsewhere\.example, .*delete .*\.lock",
  ):
    train.train_and_evaluate(tiny_config, str(run_dir))
  assert os.listdir(run_dir) == [workdir.LOCK_FILE]
  assert (run_dir / workdir.LOCK_FILE).read_text() == lock_text


@pytest.mark.slow
def test_a_stale_lock_is_taken_over_and_the_lock_is_gone_after_the_run(
  tiny_config, tmp_path, caplog
):
  run_dir = tmp_path / "run"
  dead = _dead_pid()
  _write_lock(run_dir, socket.gethostname(), dead)
  train.train_and_evaluate(_short_run(tiny_config), str(run_dir))
  assert f"PID {dead} on this host" in caplog.text and "no longer running" in caplog.text
  assert os.listdir(run_dir / "checkpoints") == ["1"]
  assert not (run_dir / workdir.LOCK_FILE).exists()


# --- Checks before writes -------------------------------------------------------


@pytest.mark.slow
def test_resuming_with_a_bad_font_leaves_the_workdir_as_it_was(tiny_config, tmp_path):
  run_dir = tmp_path / "run"
  train.train_and_evaluate(_short_run(tiny_config), str(run_dir))
  before = _snapshot(run_dir)
  config_json = (run_dir / "config.json").read_bytes()

  tiny_config.train.num_steps = 2
  tiny_config.data.image_width = 256
  tiny_config.data.font_paths = str(tmp_path / "notafont.ttf")
  with pytest.raises(ValueError, match=r"data\.font_paths: .*notafont\.ttf does not exist"):
    train.train_and_evaluate(tiny_config, str(run_dir))
  assert (run_dir / "config.json").read_bytes() == config_json
  assert _snapshot(run_dir) == before


def test_a_fresh_workdir_with_a_bad_font_is_not_created(tiny_config, tmp_path):
  run_dir = tmp_path / "new" / "run"
  tiny_config.data.font_paths = str(tmp_path / "notafont.ttf")
  with pytest.raises(ValueError, match=r"data\.font_paths: .*notafont\.ttf does not exist"):
    train.train_and_evaluate(tiny_config, str(run_dir))
  assert not (tmp_path / "new").exists()


def test_a_workdir_that_is_a_file_is_refused(tiny_config, tmp_path):
  path = tmp_path / "run"
  path.write_text("notes")
  with pytest.raises(ValueError, match=r"^--workdir=\S+run is a file, not a folder; pass a"):
    train.train_and_evaluate(tiny_config, str(path))
  assert path.read_text() == "notes"


# --- Signals at any moment ------------------------------------------------------

# A train step the compilation cache has not seen, so that a signal sent when
# training starts lands in the middle of its compilation.
_UNCACHED_STEP = "--config.train.label_smoothing={}"


def _signal_at_start(tmp_path, bank_cache_dir, signals, smoothing, *overrides):
  """Starts a fresh run, sends `signals` once it starts training; (command, status, log).

  Whether the run stopped at once shows in its log: no step finished, and the
  stop-at-once message (the wait's timeout only guards against a hang).
  """
  run_dir, log_path = tmp_path / "run", tmp_path / "log.txt"
  command = train_command(
    run_dir, bank_cache_dir, _UNCACHED_STEP.format(smoothing), *QUIET_TRAIN_FLAGS, *overrides
  )
  process = _start(command, log_path)
  try:
    _wait_for_log("Training from step 0", process, log_path)
    for sig in signals:
      process.send_signal(sig)
    process.wait(timeout=600)
  finally:
    process.kill()
  return command, process.returncode, log_path.read_text()


@pytest.mark.slow
def test_two_ctrl_c_during_the_first_compilation_exit_at_once(tmp_path, bank_cache_dir):
  _, status, log = _signal_at_start(
    tmp_path, bank_cache_dir, (signal.SIGINT, signal.SIGINT), 0.0101
  )
  assert status in (0, 130), log[-3000:]  # Not a crash (-11, 139) nor a traceback (1).
  assert "[1] train/" not in log  # The signals did land before the first step.
  assert (
    "SIGINT received before any training step finished: nothing is lost, stopping now" in log
  ), log[-3000:]
  assert not (tmp_path / "run" / workdir.LOCK_FILE).exists()


@pytest.mark.slow
def test_sigterm_during_the_first_compilation_exits_at_once_and_the_rerun_trains(
  tmp_path, bank_cache_dir
):
  command, status, log = _signal_at_start(
    tmp_path, bank_cache_dir, (signal.SIGTERM,), 0.0102, "--config.train.num_steps=2"
  )
  assert status == 0, log[-3000:]  # As a run stopped at a step boundary.
  assert "[1] train/" not in log
  assert "SIGTERM received before any training step finished: nothing is lost" in log
  assert not (tmp_path / "run" / workdir.LOCK_FILE).exists()

  again = _run(command)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "Resumed" not in again.stderr and "[2] train/" in again.stderr
  assert os.listdir(tmp_path / "run" / "checkpoints") == ["2"]


@pytest.mark.slow
def test_a_second_sigterm_during_a_compilation_stops_at_once(tmp_path, bank_cache_dir):
  # The first SIGTERM lands after step 2, during the compilation of the step
  # 2 evaluation (a decode length the cache has not seen), and asks for a save
  # there; the second stops at once.
  run_dir, log_path = tmp_path / "run", tmp_path / "log.txt"
  command = train_command(
    run_dir,
    bank_cache_dir,
    *QUIET_TRAIN_FLAGS,
    "--config.train.num_steps=100000",
    "--config.eval.every_steps=2",
    "--config.decode.max_len=29",
  )
  process = _start(command, log_path)
  try:
    _wait_for_log("[2] train/", process, log_path)
    process.send_signal(signal.SIGTERM)
    _wait_for_log("saving a checkpoint after this step", process, log_path)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=600)
  finally:
    process.kill()
  log = log_path.read_text()
  assert process.returncode == 143, log[-3000:]
  assert "eval/cer" not in log  # Still evaluating when stopped.
  assert "SIGTERM received again: stopping at once without saving" in log
  assert not (run_dir / workdir.LOCK_FILE).exists()
