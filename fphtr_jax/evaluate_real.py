r"""Scores a model on real scans: a folder of images and their transcriptions.

  python -m fphtr_jax.evaluate_real --model=DIR --data=FOLDER [--scale=auto] [--noprepare] \
      [--output_dir=OUT] [--config.decode.beam_size=4]
  python -m fphtr_jax.evaluate_real --workdir=W [--checkpoint=best] --data=FOLDER

FOLDER holds either a manifest.jsonl, one JSON object per line with "file"
(relative to the folder), "text" (its lines joined by "\n") and optionally
"level" (page, line or word), or images with NAME.txt or NAME.gt.txt beside
them (one line of text per line of the image). Without a level, a text of one
word is a word, of one line a line, of more a page.

Every image goes the way `predict` takes it (the scan prepared, scaled and
fitted to the canvas, then decoded as the run's config.decode says), so the
figures are those a user of predict gets. Prints one JSON line: CER and WER
over all images and per level, and per level the share of images that came
back with as many lines as their transcription has. With --output_dir, also
writes predictions.jsonl (file, level, reference, hypothesis, cer, lines) and
summary.json there.
"""

import dataclasses
import json
import os
import pathlib

from absl import app, flags, logging
import jax

from fphtr_jax import cli, inference, metrics, predict
from input_pipeline.pages import reader as pages_reader

FLAGS = flags.FLAGS
flags.DEFINE_string("data", None, "Folder of images with transcriptions (manifest.jsonl or pairs).")

MANIFEST = "manifest.jsonl"
LEVELS = ("page", "line", "word")


@dataclasses.dataclass(frozen=True)
class Sample:
  path: str
  text: str
  level: str


def level_of(text: str) -> str:
  """'word', 'line' or 'page': what a transcription of this text shows."""
  lines = text.split("\n")
  if len(lines) > 1:
    return "page"
  return "word" if len(text.split()) <= 1 else "line"


def _manifest_samples(folder: str) -> list[Sample]:
  path = os.path.join(folder, MANIFEST)
  samples = []
  with open(path, encoding="utf-8") as f:
    for number, raw in enumerate(f, 1):
      if not raw.strip():
        continue
      try:
        row = json.loads(raw)
      except json.JSONDecodeError as error:
        raise ValueError(f"{path}, line {number}: not JSON ({error.msg}).") from None
      if not isinstance(row, dict):
        raise ValueError(f"{path}, line {number}: expected an object with file and text.")
      for field in ("file", "text"):
        if not isinstance(row.get(field), str) or not row[field]:
          raise ValueError(f"{path}, line {number}: field {field!r} is missing or not a string.")
      level = row.get("level") or level_of(row["text"])
      if level not in LEVELS:
        raise ValueError(
          f"{path}, line {number}: level {level!r} is not one of {', '.join(LEVELS)}."
        )
      image = os.path.join(folder, row["file"])
      if not os.path.isfile(image):
        raise ValueError(f"{path}, line {number}: file {row['file']!r} is not in {folder}.")
      samples.append(Sample(path=image, text=row["text"], level=level))
  return samples


def _pair_samples(folder: str) -> list[Sample]:
  samples = []
  for image in predict.list_images([folder]):
    text_path = pages_reader.pair_text(pathlib.Path(image))
    if text_path is None:
      logging.warning("%s has no .txt or .gt.txt beside it: not scored.", image)
      continue
    page = pages_reader.read_text_pair(image, text_path)
    text = "\n".join(line.text for line in page.lines)
    if text:
      samples.append(Sample(path=image, text=text, level=level_of(text)))
  return samples


def read_samples(folder: str) -> list[Sample]:
  """The folder's images and transcriptions: its manifest.jsonl, else its image/text pairs.

  Raises:
    ValueError: naming the manifest's line and field that is wrong, or when
      the folder holds nothing to score.
  """
  if not os.path.isdir(folder):
    raise ValueError(f"--data={folder}: no such folder.")
  if os.path.isfile(os.path.join(folder, MANIFEST)):
    samples = _manifest_samples(folder)
  else:
    samples = _pair_samples(folder)
  if not samples:
    raise ValueError(
      f"--data={folder} has no {MANIFEST} and no image with a .txt or .gt.txt beside it."
    )
  return samples


def score(samples: list[Sample], hypotheses: list[str]) -> dict:
  """CER, WER and the share of right line counts, over all samples and per level."""

  def rates(chosen):
    references = [s.text for s, _ in chosen]
    texts = [h for _, h in chosen]
    return {
      "cer": metrics.character_error_rate(references, texts),
      "wer": metrics.word_error_rate(references, texts),
      "lines_right": sum(r.count("\n") == h.count("\n") for r, h in zip(references, texts))
      / len(chosen),
      "num_images": len(chosen),
    }

  pairs = list(zip(samples, hypotheses))
  summary = {"all": rates(pairs)}
  for level in LEVELS:
    chosen = [(s, h) for s, h in pairs if s.level == level]
    if chosen:
      summary[level] = rates(chosen)
  return summary


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}: evaluate_real takes only flags (--data=FOLDER).")
  if not FLAGS.data:
    cli.fail("--data is required: a folder of images with their transcriptions.")
  try:
    cli.check_config(FLAGS.config, word_bank=False)
    if not FLAGS.model:
      cli.check_checkpoint(FLAGS.workdir, FLAGS.checkpoint)
    if FLAGS.output_dir:
      cli.make_writable_dir(FLAGS.output_dir, "output_dir")
    samples = read_samples(FLAGS.data)
  except (cli.CommandLineError, ValueError, OSError) as error:  # a flag, the folder or manifest
    cli.fail(str(error))
  pages = []
  for sample in samples:
    try:
      pages.append(predict.load_config_page(sample.path, FLAGS.config, FLAGS.scale, FLAGS.prepare))
    except (predict.UnreadableImage, OSError) as error:
      cli.fail(str(error), status=1)
  try:
    run = inference.open_run(FLAGS.config)
  except (ValueError, OSError) as error:
    cli.fail(str(error), status=1)
  texts, _ = predict.recognise(run, pages)
  hypotheses = [t.text for t in texts]
  summary = {"data": FLAGS.data, "step": run.step, **score(samples, hypotheses)}
  summary["decode"] = {k: v for k, v in run.config.decode.items()}
  summary["scale"] = str(FLAGS.scale)
  summary["prepare"] = bool(FLAGS.prepare)
  if jax.process_index() != 0:
    return
  if FLAGS.output_dir:
    with open(os.path.join(FLAGS.output_dir, "predictions.jsonl"), "w", encoding="utf-8") as f:
      for sample, page, hypothesis in zip(samples, pages, hypotheses):
        row = {
          "file": os.path.relpath(sample.path, FLAGS.data),
          "level": sample.level,
          "reference": sample.text,
          "hypothesis": hypothesis,
          "cer": metrics.character_error_rate([sample.text], [hypothesis]),
          "lines": [sample.text.count("\n") + 1, hypothesis.count("\n") + 1],
          "scale": page.scale,
        }
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
    with open(os.path.join(FLAGS.output_dir, "summary.json"), "w", encoding="utf-8") as f:
      json.dump(summary, f, indent=1)
  print(json.dumps(summary))


if __name__ == "__main__":
  jax.config.config_with_absl()
  app.run(main, flags_parser=cli.parse_flags_with_run_config)
