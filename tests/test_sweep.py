"""fphtr_jax.sweep: a config's sweep trained point after point, resumed, or as a SLURM array."""

import glob
import json
import os
import re
import shutil
import subprocess

import pytest

from fphtr_jax import cli, sweep
from tests import tiny_sweep

ROOT = tiny_sweep.ROOT


def test_points_are_named_by_their_items_and_checked_before_anything_runs(tmp_path, monkeypatch):
  monkeypatch.chdir(ROOT)
  path, points = sweep.make_points(
    tiny_sweep.ARGUMENT, str(tmp_path), ["--config.eval.num_examples=4"]
  )
  assert path == "configs/tiny.py"
  assert [p.arg for p in points] == list(tiny_sweep.POINTS)
  assert [p.workdir for p in points] == [str(tmp_path / n) for n in tiny_sweep.POINTS]
  for point, (seed, steps) in zip(points, tiny_sweep.POINTS.values()):
    assert (point.config.train.seed, point.config.train.num_steps) == (seed, steps)
    assert point.config.eval.num_examples == 4  # an override goes to every point
  # Items after the sweep's name go to every point too; a point's own value wins.
  _, points = sweep.make_points("configs/tiny.py:sweep,steps=12,batch=4", str(tmp_path), [])
  assert [p.name for p in points] == [
    "steps=12,batch=4,seed=1",
    "steps=12,batch=4,seed=2",
    "steps=15,batch=4,seed=2",
  ]
  assert [p.config.train.num_steps for p in points] == [12, 12, 15]
  assert not list(tmp_path.iterdir())  # nothing written
  assert sweep.workdir_name("iam_dir=~/data/iam,lr=0.001") == "iam_dir=__data_iam,lr=0.001"
  assert sweep.workdir_name("") == "base"


@pytest.mark.parametrize(
  "argument,overrides,expected",
  [
    ("configs/tiny.py:swep", [], "unknown sweep 'swep'; the named sweeps are sweep"),
    ("configs/tiny.py", [], "names no sweep; the named sweeps are sweep"),
    ("configs/default.py:sweep", [], "configs/default.py has no get_sweep\\(\\) function"),
    ("configs/tiny.py:sweep,stepz=3", [], "unknown key 'stepz'"),
    ("configs/tiny.py:sweep,steps=many", [], "steps sets train.num_steps, which takes an integer"),
    (tiny_sweep.ARGUMENT, ["--config.train.num_stepz=3"], "did you mean train.num_steps"),
    (tiny_sweep.ARGUMENT, ["--config.train.batch_size=0"], "config.train.batch_size=0 is invalid"),
  ],
)
def test_a_bad_sweep_is_refused_naming_what_is_wrong(
  argument, overrides, expected, tmp_path, monkeypatch
):
  monkeypatch.chdir(ROOT)
  with pytest.raises(cli.CommandLineError, match=expected):
    sweep.make_points(argument, str(tmp_path), overrides)


def _experiment(folder: str):
  """The HParams experiment declared in `folder`'s event files."""
  from tensorboard.plugins.hparams import metadata
  import tensorflow as tf
  from tensorflow.core.util import event_pb2

  for path in glob.glob(os.path.join(folder, "events.out.tfevents.*")):
    for record in tf.data.TFRecordDataset(path):
      for value in event_pb2.Event.FromString(record.numpy()).summary.value:
        if value.tag == metadata.EXPERIMENT_TAG:
          return metadata.parse_experiment_plugin_data(value.metadata.plugin_data.content)
  return None


def test_slurm_writes_one_array_task_per_point(tmp_path, bank_cache_dir, monkeypatch):
  monkeypatch.chdir(ROOT)
  script, root = tmp_path / "sweep.sbatch", tmp_path / "runs"
  overrides = [f"--config.data.cache_dir={bank_cache_dir}"]
  # What `python -m fphtr_jax.sweep ... --slurm=FILE` does, without the start-up of a process.
  path, points = sweep.make_points(tiny_sweep.ARGUMENT, str(root), overrides)
  sweep.declare_experiment(str(root), points)
  script.write_text(sweep.slurm_script(tiny_sweep.ARGUMENT, path, points, overrides, str(script)))
  text = script.read_text()
  assert "#SBATCH --array=0-2\n" in text
  cases = re.findall(r"^  (\d)\) exec (.*) ;;$", text, re.MULTILINE)
  assert [int(index) for index, _ in cases] == [0, 1, 2]
  for (_, command), name in zip(cases, tiny_sweep.POINTS):
    assert command == (
      f"bash launch/slurm.sbatch configs/tiny.py:{name} {root / name} "
      f"--config.data.cache_dir={bank_cache_dir}"
    )
  assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
  # A task that is not a point is refused (no training starts).
  outside = subprocess.run(
    ["bash", str(script)],
    env=dict(os.environ, SLURM_ARRAY_TASK_ID="3"),
    capture_output=True,
    text=True,
  )
  assert outside.returncode == 2 and "no sweep point 3" in outside.stderr
  # Nothing trained; the folder declares the fields the points differ in, for TensorBoard.
  assert all(p.name.startswith("events.out.tfevents.") for p in root.iterdir())
  infos = {info.name: info for info in _experiment(str(root)).hparam_infos}
  assert {name for name, info in infos.items() if info.differs} == {"train.seed", "train.num_steps"}
  assert "model.d_model" in infos and "run.device_kind" in infos
  tags = [metric.name.tag for metric in _experiment(str(root)).metric_infos]
  assert tags[:2] == ["eval/cer", "eval/wer"]


@pytest.mark.slow
def test_sweep_trains_every_point_then_skips_finished_ones_and_resumes_a_stopped_one(
  bank_cache_dir,
):
  root, first_output = tiny_sweep.trained_root(bank_cache_dir)
  for name, (seed, steps) in tiny_sweep.POINTS.items():
    workdir = os.path.join(root, name)
    assert f"{name}: training to step {steps} in {workdir}" in first_output
    with open(os.path.join(workdir, "config.json")) as f:
      saved = json.load(f)
    assert (saved["train"]["seed"], saved["train"]["num_steps"]) == (seed, steps)
    assert sweep.finished_step(workdir) == steps
  # A run stopped after its checkpoint of step 5 (its later one is gone).
  stopped = os.path.join(root, "seed=1")
  shutil.rmtree(os.path.join(stopped, "checkpoints", "10"))
  assert sweep.finished_step(stopped) == 5
  result = tiny_sweep.run_sweep(root, bank_cache_dir)
  assert result.returncode == 0, result.stderr[-5000:]
  assert "[1/3] seed=1: resuming from step 5 to step 10" in result.stdout
  assert "[2/3] seed=2: finished (step 10), skipped." in result.stdout
  assert "[3/3] seed=2,steps=15: finished (step 15), skipped." in result.stdout
  assert sweep.finished_step(stopped) == 10
  assert "Resumed from step 5" in result.stderr
