"""evaluate and predict end to end, on a tiny model trained by the training CLI.

The fixture `trained_tiny_workdir` (tests/conftest.py) is a real workdir:
config.json, vocab.json, Orbax checkpoints (latest and best). The command
lines run in subprocesses exactly as a user types them.
"""

import csv
import glob
import json
import os
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
from PIL import Image
import pytest

from fphtr_jax import confidence, evaluate, inference, pixels, predict
from fphtr_jax import metrics as text_metrics
from fphtr_jax import tokenizer as tokenizer_lib
from tests.conftest import TINY_TRAIN_STEPS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(module: str, *args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  return subprocess.run(
    [sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True
  )


def _eval_batch(workdir: str, num_examples: int, split: str = "validation"):
  """The pipeline's eval examples: (images [N, H, W, 1], reference texts) of real rows."""
  from input_pipeline import datasets

  config = inference.load_config(workdir)
  config.eval.num_examples = num_examples
  config.eval.batch_size = 8
  images, texts = [], []
  tokenizer = tokenizer_lib.Tokenizer(config.data.charset)
  for batch in datasets.create_eval_dataset(config, split).as_numpy_iterator():
    keep = batch["mask"] > 0
    images.append(batch["image"][keep])
    texts += tokenizer.decode_batch(batch["tokens"][keep])
  return np.concatenate(images), texts


def _best_summary(workdir: str) -> dict:
  manager = ocp.CheckpointManager(os.path.join(workdir, "best"))
  summary = manager.restore(
    manager.latest_step(), args=ocp.args.Composite(summary=ocp.args.JsonRestore())
  )["summary"]
  manager.close()
  return summary


def _event_tags(directory: str) -> set[str]:
  import tensorflow as tf

  tags = set()
  for path in glob.glob(os.path.join(directory, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags.update(value.tag for value in event.summary.value)
  return tags


# --- curves ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_curves_draws_the_logged_losses(trained_tiny_workdir, tmp_path):
  output = str(tmp_path / "curves.png")
  result = _run("fphtr_jax.curves", f"--workdir={trained_tiny_workdir}", f"--output={output}")
  assert result.returncode == 0, result.stderr[-4000:]
  picture = np.asarray(Image.open(output).convert("RGB"))
  assert picture.shape[0] > picture.shape[1] and (picture < 128).any()
  with open(str(tmp_path / "curves.csv")) as f:
    rows = list(csv.DictReader(f))
  losses = [(int(r["step"]), float(r["value"])) for r in rows if r["tag"] == "train/loss"]
  cers = [float(r["value"]) for r in rows if r["tag"] == "eval/cer"]
  # The tiny run logs its loss every 100 steps and evaluates at the end.
  assert [step for step, _ in losses] == list(range(100, TINY_TRAIN_STEPS + 1, 100))
  assert losses[-1][1] < losses[0][1] and len(cers) == 1 and 0 <= cers[0]


@pytest.mark.slow
def test_curves_without_logs_is_a_clear_error(tmp_path):
  result = _run("fphtr_jax.curves", f"--workdir={tmp_path}")
  assert result.returncode != 0 and "No TensorBoard event files" in result.stderr


# --- evaluate --------------------------------------------------------------------------------


@pytest.mark.slow
def test_evaluate_scores_every_example_once(trained_tiny_workdir, tmp_path):
  output_dir = str(tmp_path / "eval")
  result = _run(
    "fphtr_jax.evaluate",
    f"--workdir={trained_tiny_workdir}",
    "--checkpoint=best",
    f"--output_dir={output_dir}",
  )
  assert result.returncode == 0, result.stderr[-4000:]
  with open(os.path.join(output_dir, "summary.json")) as f:
    summary = json.load(f)
  with open(os.path.join(output_dir, "predictions.jsonl")) as f:
    predictions = [json.loads(line) for line in f]

  # 12 examples in batches of 8: the padded rows of the second batch are not counted.
  _, references = _eval_batch(trained_tiny_workdir, 12)
  assert summary["num_examples"] == len(predictions) == 12
  assert [p["reference"] for p in predictions] == references
  assert [p["id"] for p in predictions] == [f"validation/{i:06d}" for i in range(12)]
  hypotheses = [p["hypothesis"] for p in predictions]
  assert summary["cer"] == pytest.approx(text_metrics.character_error_rate(references, hypotheses))
  assert summary["wer"] == pytest.approx(text_metrics.word_error_rate(references, hypotheses))
  for p in predictions:
    assert p["cer"] == pytest.approx(
      text_metrics.character_edits(p["reference"], p["hypothesis"]) / len(p["reference"])
    )
    assert 0.0 < p["min_confidence"] <= p["confidence"] <= 1.0
  # The best checkpoint, greedy, on the same examples as the training loop's
  # evaluation that chose it: the same CER.
  best = _best_summary(trained_tiny_workdir)
  assert summary["step"] == best["step"] and summary["checkpoint"] == "best"
  assert summary["cer"] == pytest.approx(best["cer"], abs=1e-6)
  assert {"validation/cer", "validation/wer", "validation/pages"} <= _event_tags(output_dir)


@pytest.mark.slow
def test_evaluate_test_split_with_beam_search_at_a_given_step(trained_tiny_workdir, tmp_path):
  step = TINY_TRAIN_STEPS // 2
  config = inference.load_config(trained_tiny_workdir)
  config.decode.beam_size = 2
  config.eval.num_examples = 5
  run = inference.restore_run(trained_tiny_workdir, config, str(step))
  summary, predictions, pages = evaluate.evaluate_split(run, "test", num_images=2)
  assert (summary["split"], summary["step"], summary["beam_size"]) == ("test", step, 2)
  assert len(predictions) == summary["num_examples"] == 5 and len(pages) == 2
  _, test_references = _eval_batch(trained_tiny_workdir, 5, "test")
  _, validation_references = _eval_batch(trained_tiny_workdir, 5, "validation")
  assert [p["reference"] for p in predictions] == test_references != validation_references
  output_dir = evaluate.default_output_dir(trained_tiny_workdir, run, "test")
  assert output_dir.endswith(f"test_latest_step{step}_beam2")
  evaluate.write_results(str(tmp_path), summary, predictions, pages)
  assert {"test/cer", "test/pages"} <= _event_tags(str(tmp_path))


@pytest.mark.slow
def test_restore_names_a_missing_checkpoint(trained_tiny_workdir):
  config = inference.load_config(trained_tiny_workdir)
  with pytest.raises(FileNotFoundError, match="step 7"):
    inference.restore_run(trained_tiny_workdir, config, "7")
  with pytest.raises(ValueError, match="--checkpoint='newest'"):
    inference.restore_run(trained_tiny_workdir, config, "newest")


# --- predict ---------------------------------------------------------------------------------


def _grey_uint8(image) -> np.ndarray:
  """A normalised eval image as the uint8 grey levels it was rendered with."""
  grey = np.asarray(image, np.float64)[..., 0] * pixels.IMAGE_STD + pixels.IMAGE_MEAN
  return np.round(np.clip(grey, 0, 1) * 255).astype(np.uint8)


@pytest.mark.slow
def test_predict_a_folder_with_a_corrupt_and_an_empty_file(trained_tiny_workdir, tmp_path):
  images, _ = _eval_batch(trained_tiny_workdir, 3)
  folder = tmp_path / "scans"
  folder.mkdir()
  grey = [_grey_uint8(image) for image in images]
  Image.fromarray(grey[0]).save(folder / "a_grey.png")
  rgba = np.stack([grey[1]] * 3 + [np.full_like(grey[1], 255)], axis=-1)
  Image.fromarray(rgba, "RGBA").save(folder / "b_colour.png")
  Image.fromarray(grey[2].astype(np.uint16) * 257).save(folder / "c_16bit.tif")
  # Twice the canvas: shrunk to fit.
  Image.fromarray(grey[0]).resize((grey[0].shape[1] * 2, grey[0].shape[0] * 2)).convert("RGB").save(
    folder / "d_large.jpg"
  )
  (folder / "e_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
  (folder / "f_empty.jpg").write_bytes(b"")
  (folder / "notes.txt").write_text("not an image")
  attention_dir = tmp_path / "attention"

  result = _run(
    "fphtr_jax.predict",
    f"--workdir={trained_tiny_workdir}",
    "--format=json",
    f"--attention_dir={attention_dir}",
    "--noprepare",  # the images as they are, like the pipeline's below
    "--scale=1",
    str(folder),
  )
  assert result.returncode == 1, result.stderr[-4000:]
  lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
  by_name = {os.path.basename(line["path"]): line for line in lines}
  assert sorted(by_name) == [
    "a_grey.png",
    "b_colour.png",
    "c_16bit.tif",
    "d_large.jpg",
    "e_broken.png",
    "f_empty.jpg",
  ]
  assert "e_broken.png" in by_name["e_broken.png"]["error"]
  assert "empty" in by_name["f_empty.jpg"]["error"]
  assert "error: " in result.stderr and "f_empty.jpg" in result.stderr
  for name in ("a_grey.png", "b_colour.png", "c_16bit.tif", "d_large.jpg"):
    line = by_name[name]
    assert "error" not in line and isinstance(line["text"], str)
    assert 0.0 < line["min_confidence"] <= line["confidence"] <= 1.0
    assert [l["text"] for l in line["lines"]] == line["text"].split("\n")
    assert os.path.getsize(attention_dir / (os.path.splitext(name)[0] + ".attention.png")) > 0

  # Read from files, the pages decode as the pipeline's own images do.
  config = inference.load_config(trained_tiny_workdir)
  run = inference.restore_run(trained_tiny_workdir, config, "latest")
  pages = [
    predict.Page(path=str(i), image=image, height=image.shape[0], width=image.shape[1])
    for i, image in enumerate(images)
  ]
  texts, _ = predict.recognise(run, pages)
  assert [by_name[n]["text"] for n in ("a_grey.png", "b_colour.png", "c_16bit.tif")] == [
    t.text for t in texts
  ]


def test_images_are_placed_like_training_pages(tmp_path):
  paper = pixels.PAPER
  ink = np.zeros((64, 512), np.uint8)  # all ink, 4x the canvas width
  Image.fromarray(ink).save(tmp_path / "wide.png")
  page = predict.load_page(str(tmp_path / "wide.png"), 32, 128, prepare=False)
  assert (page.height, page.width) == (16, 128) and page.image.shape == (32, 128, 1)
  np.testing.assert_allclose(page.image[16:], paper, rtol=1e-6)  # paper below
  assert page.image[:16].max() < paper - 1.0
  small = predict.load_page(str(tmp_path / "wide.png"), 32, 128, scale=0.125, prepare=False)
  assert (small.height, small.width) == (8, 64)
  np.testing.assert_allclose(small.image[:, 64:], paper, rtol=1e-6)  # paper to the right
  # Transparent pixels are paper.
  rgba = np.zeros((8, 8, 4), np.uint8)
  Image.fromarray(rgba, "RGBA").save(tmp_path / "clear.png")
  np.testing.assert_allclose(predict.read_grey(str(tmp_path / "clear.png")), 1.0)
  with pytest.raises(predict.UnreadableImage, match="missing.png"):
    predict.read_grey(str(tmp_path / "missing.png"))


@pytest.mark.parametrize("shape", [(64, 512), (20, 60), (50, 100), (32, 128)])
def test_predict_fits_an_image_like_training_does(tmp_path, shape):
  # One canvas fitting for both paths: the same file gives the same pixels.
  import tensorflow as tf

  from configs import tiny
  from input_pipeline.sources import real as real_source

  d = tiny.get_config().data  # a 32 x 128 canvas
  grey = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
  path = tmp_path / "page.png"
  Image.fromarray(grey).save(path)
  page = predict.load_page(str(path), d.image_height, d.image_width, prepare=False)
  example = real_source.make_real_example(d, (0, 0), augment=False)(
    tf.constant(0, tf.int64), tf.constant(path.read_bytes()), tf.constant("a")
  )
  assert page.image.shape == (d.image_height, d.image_width, 1)
  np.testing.assert_allclose(page.image, example["image"].numpy(), atol=1e-5)
  assert page.image.std() > 0.1  # the image is there, not only paper


def test_text_format_prints_path_confidence_and_text():
  text = confidence.Transcription(
    text="ab\nc", char_probs=[0.9] * 4, confidence=0.9, min_confidence=0.5, log_prob=-1.0, lines=[]
  )
  out, err = predict.format_result("page.png", text, None, "text")
  assert out == "==> page.png (confidence 0.900, min 0.500) <==\nab\nc" and not err
  out, err = predict.format_result("bad.png", None, "bad.png: the file is empty (0 bytes).", "text")
  assert not out and err == "error: bad.png: the file is empty (0 bytes)."
