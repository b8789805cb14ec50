"""fphtr_jax.report over real workdirs, and evaluate --checkpoint=all over a run's history."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from fphtr_jax import cli, curves, evaluate, report
from tests import tiny_sweep

ROOT = tiny_sweep.ROOT


def _run(module: str, *args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  return subprocess.run(
    [sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True
  )


def _write_events(path: str, start: float, records, hardware=None):
  """A TensorBoard event file as training writes one: (step, seconds after start, {tag: value})."""
  from tensorboard.plugins.hparams import summary_v2
  import tensorflow as tf
  from tensorflow.core.framework import summary_pb2
  from tensorflow.core.util import event_pb2

  with tf.io.TFRecordWriter(path) as writer:
    writer.write(event_pb2.Event(wall_time=start, file_version="brain.Event:2").SerializeToString())
    if hardware:
      session = summary_v2.hparams_pb(
        {
          "run.backend": hardware[0],
          "run.device_kind": hardware[1],
          "run.device_count": hardware[2],
        }
      )
      summary = summary_pb2.Summary.FromString(session.SerializeToString())
      writer.write(event_pb2.Event(wall_time=start, summary=summary).SerializeToString())
    for step, seconds, values in records:
      summary = summary_pb2.Summary(
        value=[
          summary_pb2.Summary.Value(tag=tag, tensor=tf.make_tensor_proto(np.float32(v)))
          for tag, v in values.items()
        ]
      )
      writer.write(
        event_pb2.Event(wall_time=start + seconds, step=step, summary=summary).SerializeToString()
      )


def _write_summary(workdir, name: str, **summary):
  folder = os.path.join(workdir, "evaluations", name)
  os.makedirs(folder)
  with open(os.path.join(folder, "summary.json"), "w") as f:
    json.dump(summary, f)


@pytest.fixture
def two_runs(tmp_path):
  """Two workdirs of configs/tiny.py that differ in batch and learning rate."""
  from configs import tiny

  first, second = str(tmp_path / "runs" / "first"), str(tmp_path / "runs" / "second")
  for workdir, arg in ((first, "lr=0.001"), (second, "lr=0.003,batch=4")):
    os.makedirs(workdir)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(tiny.get_config(arg).to_json_best_effort())
  # The first run trained in two sessions (stopped at step 5, resumed hours later on a GPU).
  events = os.path.join(first, "events.out.tfevents.{}.host.1.0.v2")
  _write_events(
    events.format(1000),
    1000.0,
    [(5, 30, {"train/loss": 3.0, "eval/cer": 0.4, "eval/wer": 0.9})],
    hardware=("cpu", "cpu", 1),
  )
  _write_events(
    events.format(9000),
    9000.0,
    [(10, 70, {"train/loss": 2.0, "eval/cer": 0.5, "eval/wer": 0.8})],
    hardware=("gpu", "NVIDIA H200", 2),
  )
  _write_summary(first, "test_best_step5", split="test", step=5, cer=0.35, wer=0.7)
  _write_summary(first, "test_best_step10", split="test", step=10, cer=0.3, wer=0.6)
  _write_summary(first, "validation_latest_step10", split="validation", step=10, cer=0.5, wer=0.8)
  # Real scans scored by evaluate_real: a column a level.
  figures = {"cer": 0.6, "wer": 0.9, "lines_right": 1.0, "num_images": 2}
  _write_summary(first, "real", data="scans", step=10, all=figures, line=figures)
  _write_events(
    os.path.join(second, "events.out.tfevents.2000.host.2.0.v2"),
    2000.0,
    [(s, 6 * s, {"train/loss": 4.0 - s / 10, "eval/cer": 1.2 - s / 20}) for s in (2, 4, 6, 8)],
  )
  return str(tmp_path / "runs"), first, second


def test_report_has_a_row_a_run_with_the_fields_that_differ_as_columns(two_runs):
  folder, first, second = two_runs
  runs = [report.read_run(w) for w in report.find_runs([folder])]
  lines = report.table(runs).splitlines()
  assert lines[0] == (
    "| run | train.batch_size | train.learning_rate | steps | wall time | hardware "
    "| best val. CER (step) | last val. CER | real lines CER / WER | test_best CER / WER |"
  )
  assert lines[1] == "|" + "---|" * 10
  # Wall time: 30 s + 70 s of the two sessions, not the hours between them.
  assert lines[2] == (
    "| first | 8 | 0.001 | 10 / 10 | 1 min 40 s | 1 × cpu, then 2 × NVIDIA H200 "
    "| 40.0% (5) | 50.0% | 60.0% / 90.0% (10) | 30.0% / 60.0% (10) |"
  )
  assert lines[3] == "| second | 4 | 0.003 | 8 / 10 | 48 s | — | 80.0% (8) | 80.0% | — | — |"
  assert len(lines) == 4
  # One run alone: no field differs from anything.
  alone = report.table([report.read_run(second)]).splitlines()
  assert alone[0].startswith("| run | steps | wall time |")


def test_report_shows_the_fields_asked_for_and_names_one_no_run_has(two_runs):
  folder, _, _ = two_runs
  runs = [report.read_run(w) for w in report.find_runs([folder])]
  lines = report.table(runs, ["train.learning_rate", "model.d_model"]).splitlines()
  assert lines[0].startswith("| run | train.learning_rate | model.d_model | steps |")
  assert lines[2].startswith("| first | 0.001 | 32 | 10 / 10 |")
  assert lines[3].startswith("| second | 0.003 | 32 | 8 / 10 |")
  assert report.table(runs, []).splitlines()[0].startswith("| run | steps |")
  report.check_fields(runs, ["train.learning_rate", "model.d_model"])
  with pytest.raises(cli.CommandLineError) as error:
    report.check_fields(runs, ["train.learning_rate", "train.lr"])
  assert "--fields: train.lr is in no run's config" in str(error.value)
  assert "train.batch_size, train.learning_rate" in str(error.value)


def test_report_shows_the_evaluations_asked_for_in_order_and_names_one_no_run_has(two_runs):
  folder, _, _ = two_runs
  runs = [report.read_run(w) for w in report.find_runs([folder])]
  lines = report.table(runs, [], ["test_best", "real lines"]).splitlines()
  assert lines[0].endswith("| last val. CER | test_best CER / WER | real lines CER / WER |")
  assert lines[2].endswith("| 30.0% / 60.0% (10) | 60.0% / 90.0% (10) |")
  assert report.table(runs, [], []).splitlines()[0].endswith("| last val. CER |")
  report.check_tests(runs, ["real lines"])
  with pytest.raises(cli.CommandLineError) as error:
    report.check_tests(runs, ["real lines", "real pages"])
  assert "--tests: real pages is in no run's evaluations" in str(error.value)
  assert "they have real lines, test_best" in str(error.value)


@pytest.mark.slow
def test_report_command_prints_the_table_and_draws_the_cer_curves(two_runs, tmp_path):
  folder, first, second = two_runs
  png, markdown = str(tmp_path / "cer.png"), str(tmp_path / "runs.md")
  result = _run("fphtr_jax.report", first, second, f"--curves={png}", f"--markdown={markdown}")
  assert result.returncode == 0, result.stderr[-3000:]
  with open(markdown) as f:
    table = f.read()
  assert table in result.stdout and "| first | 8 | 0.001 |" in table
  narrow = _run("fphtr_jax.report", first, second, "--fields=train.batch_size")
  assert narrow.returncode == 0 and "| first | 8 | 10 / 10 |" in narrow.stdout, narrow.stderr
  tests = _run("fphtr_jax.report", first, "--fields=", "--tests=real lines")
  assert tests.returncode == 0, tests.stderr
  assert tests.stdout.splitlines()[2].endswith("| 50.0% | 60.0% / 90.0% (10) |")
  unknown = _run("fphtr_jax.report", first, "--fields=train.lr")
  assert unknown.returncode == 2 and "train.lr is in no run's config" in unknown.stderr
  picture = np.asarray(Image.open(png).convert("RGB"))
  assert picture.shape[1] > picture.shape[0] > 200
  # Both runs' curves are drawn: matplotlib's first two colours (blue, orange).
  assert ((picture[..., 0] < 60) & (picture[..., 2] > 150)).sum() > 50
  assert ((picture[..., 0] > 230) & (picture[..., 1] > 100) & (picture[..., 2] < 40)).sum() > 50
  refused = _run("fphtr_jax.report", str(tmp_path / "nothing"))
  assert refused.returncode == 2 and "nothing: no such folder" in refused.stderr


def test_event_reader_keeps_the_last_record_of_a_step_and_leaves_pauses_out(two_runs):
  _, first, _ = two_runs
  events = curves.read_events(first)
  assert events.scalars["eval/cer"] == [(5, 1030.0, pytest.approx(0.4)), (10, 9070.0, 0.5)]
  assert events.seconds == 100.0
  assert events.minutes_at([5, 10]).tolist() == [0.5, 100 / 60]
  assert [s["run.device_kind"] for s in events.sessions] == ["cpu", "NVIDIA H200"]


def test_history_rows_of_steps_scored_again_are_replaced(tmp_path):
  folder = str(tmp_path)
  row = lambda step, cer: {field: 0 for field in evaluate.HISTORY_FIELDS} | dict(step=step, cer=cer)
  evaluate.write_history(folder, [row(10, 0.5), row(5, 0.9)])
  evaluate.write_history(folder, [row(10, 0.4), row(15, 0.3)])
  assert [(r["step"], r["cer"]) for r in evaluate.read_history(folder)] == [
    (5, 0.9),
    (10, 0.4),
    (15, 0.3),
  ]
  with open(tmp_path / "history.csv") as f:
    lines = f.read().splitlines()
  assert lines[0] == ",".join(evaluate.HISTORY_FIELDS) and len(lines) == 4


@pytest.mark.slow
def test_evaluate_all_scores_every_kept_checkpoint_and_the_report_shows_it(bank_cache_dir):
  root, _ = tiny_sweep.trained_root(bank_cache_dir)
  workdir = os.path.join(root, "seed=2,steps=15")
  kept = sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())
  assert kept == [10, 15]  # checkpoint.max_to_keep=2 of the tiny config
  result = _run("fphtr_jax.evaluate", f"--workdir={workdir}", "--checkpoint=all", "--split=test")
  assert result.returncode == 0, result.stderr[-5000:]
  history = os.path.join(workdir, "evaluations", "test_history")
  rows = evaluate.read_history(history)
  assert [row["step"] for row in rows] == kept
  for row in rows:
    assert set(row) == set(evaluate.HISTORY_FIELDS) and row["num_examples"] == 8
    assert 0 <= row["cer"] and row["loss"] > 0 and row["beam_size"] == 1
    with open(os.path.join(history, f"step{row['step']}", "summary.json")) as f:
      summary = json.load(f)
    assert (summary["step"], summary["split"], summary["cer"]) == (row["step"], "test", row["cer"])
  assert json.loads(result.stdout.splitlines()[-1])["history"] == rows
  assert curves.read_events(history).scalars["test/cer"][-1][0] == 15

  runs = [report.read_run(w) for w in report.find_runs([root])]
  lines = report.table(runs).splitlines()
  # The swept fields are the columns (the points differ in seed and steps).
  assert lines[0].startswith("| run | train.num_steps | train.seed | steps |")
  assert lines[0].endswith("| test_history CER / WER |")
  by_run = {line.split(" | ")[0][2:]: line for line in lines[2:]}
  assert list(by_run) == list(tiny_sweep.POINTS)
  assert by_run["seed=2,steps=15"].startswith("| seed=2,steps=15 | 15 | 2 | 15 / 15 |")
  assert by_run["seed=2,steps=15"].endswith(f"({kept[-1]}) |")
  assert "1 × cpu" in by_run["seed=1"] and by_run["seed=1"].endswith("| — |")


def test_files_among_the_paths_are_passed_over_but_files_alone_are_refused(tmp_path):
  # A glob over a sweep's folder also matches its TensorBoard experiment file.
  (tmp_path / "run").mkdir()
  (tmp_path / "run" / "config.json").write_text("{}")
  events = tmp_path / "events.out.tfevents.1.host.0.hparams"
  events.write_text("")
  paths = sorted(str(p) for p in tmp_path.iterdir())
  assert report.find_runs(paths) == [str(tmp_path / "run")]
  with pytest.raises(cli.CommandLineError, match="files, not workdirs"):
    report.find_runs([str(events)])


def test_runs_of_a_folder_come_in_the_order_of_the_numbers_in_their_names(tmp_path):
  for name in ("n=200", "n=10", "n=50,b", "n=50", "other"):
    (tmp_path / name).mkdir()
    (tmp_path / name / "config.json").write_text("{}")
  (tmp_path / "no_run").mkdir()
  names = [os.path.basename(w) for w in report.find_runs([str(tmp_path)])]
  assert names == ["n=10", "n=50", "n=50,b", "n=200", "other"]
