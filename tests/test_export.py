"""Exported model folders: written from a real checkpoint, read by predict, evaluate and
evaluate_real (--model) as a training run's workdir is.

The exports and the tools run in subprocesses, as a user types them (slow).
"""

import json
import os

import jax
import numpy as np
from PIL import Image
import pytest

from fphtr_jax import evaluate_real, inference
from tests.test_evaluate import _eval_batch, _grey_uint8, _run


@pytest.fixture(scope="module")
def exported(trained_tiny_workdir, tmp_path_factory):
  """(float32 export, float16 export) of the tiny run's latest checkpoint, by the CLI."""
  folders = []
  for dtype in ("float32", "float16"):
    output = str(tmp_path_factory.mktemp("models") / dtype)
    result = _run(
      "fphtr_jax.export",
      f"--workdir={trained_tiny_workdir}",
      "--checkpoint=latest",
      f"--output={output}",
      f"--dtype={dtype}",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["output"] == output and info["dtype"] == dtype
    folders.append(output)
  return tuple(folders)


@pytest.fixture(scope="module")
def scans(trained_tiny_workdir, tmp_path_factory):
  """A folder of three eval pages as PNG files with their texts as .txt pairs."""
  images, texts = _eval_batch(trained_tiny_workdir, 3)
  folder = tmp_path_factory.mktemp("scans")
  for i, (image, text) in enumerate(zip(images, texts)):
    Image.fromarray(_grey_uint8(image)).save(folder / f"page{i}.png")
    (folder / f"page{i}.txt").write_text(text, encoding="utf-8")
  return folder, texts


@pytest.mark.slow
def test_export_writes_weights_config_vocabulary_and_its_origin(exported, trained_tiny_workdir):
  full, half = exported
  for folder in exported:
    assert sorted(os.listdir(folder)) == [
      "config.json",
      "model.json",
      "vocab.json",
      "weights.msgpack",
    ]
  with open(os.path.join(half, "model.json")) as f:
    info = json.load(f)
  config = inference.load_config(trained_tiny_workdir)
  run = inference.restore_run(trained_tiny_workdir, config, "latest")
  assert info["step"] == run.step and info["checkpoint"] == "latest"
  num_params = sum(x.size for x in jax.tree.leaves(run.state.params))
  assert info["params"] == num_params
  # Half precision: the weights file is about half the float32 one.
  full_size = os.path.getsize(os.path.join(full, "weights.msgpack"))
  half_size = os.path.getsize(os.path.join(half, "weights.msgpack"))
  assert half_size == info["weights_bytes"] and half_size < 0.6 * full_size


@pytest.mark.slow
def test_loaded_model_holds_the_checkpoints_weights(exported, trained_tiny_workdir):
  config = inference.load_config(trained_tiny_workdir)
  run = inference.restore_run(trained_tiny_workdir, config, "latest")
  full = inference.load_model(exported[0], inference.load_config(exported[0]))
  half = inference.load_model(exported[1], inference.load_config(exported[1]))
  assert full.tokenizer.charset == run.tokenizer.charset and half.step == run.step
  for name in ("params", "batch_stats"):
    want = jax.tree.leaves(getattr(run.state, name))
    for got, tolerance in ((full, 0.0), (half, 2e-3)):
      leaves = jax.tree.leaves(getattr(got.state, name))
      assert len(leaves) == len(want)
      for a, b in zip(leaves, want):
        assert a.dtype == b.dtype == np.float32
        scale = tolerance * max(float(np.abs(b).max()), 1e-3)
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tolerance, atol=scale)
  # BatchNorm statistics stay float32 in the file: exact.
  for a, b in zip(jax.tree.leaves(half.state.batch_stats), jax.tree.leaves(run.state.batch_stats)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_predict_with_model_reads_like_the_workdir(exported, trained_tiny_workdir, scans):
  folder, _ = scans
  flags = ["--format=json", "--scale=1", "--noprepare", str(folder)]
  from_workdir = _run("fphtr_jax.predict", f"--workdir={trained_tiny_workdir}", *flags)
  from_model = _run("fphtr_jax.predict", f"--model={exported[0]}", *flags)
  assert from_workdir.returncode == 0, from_workdir.stderr[-4000:]
  assert from_model.returncode == 0, from_model.stderr[-4000:]
  texts = [
    [json.loads(line)["text"] for line in r.stdout.splitlines()] for r in (from_workdir, from_model)
  ]
  assert len(texts[0]) == 3 and texts[0] == texts[1]


@pytest.mark.slow
def test_evaluate_real_scores_the_folder_through_predicts_path(exported, scans, tmp_path):
  folder, references = scans
  output = tmp_path / "real"
  result = _run(
    "fphtr_jax.evaluate_real",
    f"--model={exported[0]}",
    f"--data={folder}",
    "--scale=1",
    "--noprepare",
    f"--output_dir={output}",
  )
  assert result.returncode == 0, result.stderr[-4000:]
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  rows = [json.loads(line) for line in (output / "predictions.jsonl").read_text().splitlines()]
  assert [r["reference"] for r in rows] == references
  # The summary is the rows' own score, per level and over all.
  hypotheses = [r["hypothesis"] for r in rows]
  samples = evaluate_real.read_samples(str(folder))
  assert summary["all"] == pytest.approx(evaluate_real.score(samples, hypotheses)["all"])
  assert summary["all"]["num_images"] == 3
  assert json.loads((output / "summary.json").read_text())["all"] == summary["all"]
  predicted = _run(
    "fphtr_jax.predict",
    f"--model={exported[0]}",
    "--format=json",
    "--scale=1",
    "--noprepare",
    str(folder),
  )
  assert [json.loads(line)["text"] for line in predicted.stdout.splitlines()] == hypotheses


@pytest.mark.slow
def test_evaluate_with_model_writes_beside_it(exported, tmp_path):
  output = tmp_path / "eval"
  result = _run("fphtr_jax.evaluate", f"--model={exported[1]}", f"--output_dir={output}")
  assert result.returncode == 0, result.stderr[-4000:]
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert summary["checkpoint"] == "model" and 0.0 <= summary["cer"]
  assert (output / "summary.json").is_file()


def test_manifest_levels_and_its_mistakes(tmp_path):
  Image.new("L", (40, 20), 255).save(tmp_path / "a.png")
  rows = [
    {"file": "a.png", "text": "one\ntwo"},
    {"file": "a.png", "text": "one line"},
    {"file": "a.png", "text": "word"},
    {"file": "a.png", "text": "said a page", "level": "page"},
  ]
  (tmp_path / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  levels = [s.level for s in evaluate_real.read_samples(str(tmp_path))]
  assert levels == ["page", "line", "word", "page"]
  score = evaluate_real.score(
    evaluate_real.read_samples(str(tmp_path)), ["one\ntwo", "one", "x", "a\nb"]
  )
  assert score["page"]["lines_right"] == 0.5 and score["line"]["cer"] == pytest.approx(5 / 8)
  for bad, message in [
    ("{not json", "line 2: not JSON"),
    (json.dumps({"file": "a.png"}), "line 2: field 'text'"),
    (json.dumps({"file": "b.png", "text": "x"}), "line 2: file 'b.png'"),
    (json.dumps({"file": "a.png", "text": "x", "level": "form"}), "line 2: level 'form'"),
  ]:
    (tmp_path / "manifest.jsonl").write_text(json.dumps(rows[0]) + "\n" + bad + "\n")
    with pytest.raises(ValueError, match=message):
      evaluate_real.read_samples(str(tmp_path))


@pytest.mark.slow
def test_model_flag_mistakes_are_one_line(exported, trained_tiny_workdir, tmp_path):
  for args, message in [
    ([f"--model={tmp_path}"], "has no weights.msgpack"),
    ([f"--model={tmp_path / 'nope'}"], "no such folder"),
    ([f"--model={exported[0]}", f"--workdir={trained_tiny_workdir}"], "give one"),
  ]:
    result = _run("fphtr_jax.predict", *args, str(tmp_path))
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
