r"""Writes synthetic pages to a folder as PAGE-XML and PNG files: a dataset of one hand.

  python -m input_pipeline.write_pages --config=configs/cpu_fullpage.py \
      --font=Satisfy-Regular --splits=200,20,80 --output_dir=data/satisfy_pages

The pages are composed as the config's evaluation pages are (its canvas, word
height and words per page, no augmentation) from the evaluation word bank of
one font (`--font`, a file stem of the config's fonts; the config's held-out
fonts when unset): its held-out text in that font's writer styles. Each page is
`page0000.png` with its `page0000.xml` (PAGE-XML 2019: one region, a line per
text line with its box and text), and `splits/` holds `train.txt`,
`validation.txt` and `test.txt` with `--splits` pages each, so the folder
trains as `data.source="pages"` (docs/pages.md) with
`data.pages_split_dir=DIR/splits`. It stands in for "the pages of a new
writer" in fine-tuning experiments (docs/experiments/few_shot.md).
"""

import json
import os

from absl import app, flags, logging
from ml_collections import config_flags
import numpy as np
from PIL import Image
import tensorflow as tf

from fphtr_jax import confidence, line_location, page_export, pixels
from input_pipeline import composer as composer_lib
from input_pipeline.pages import reader
from input_pipeline.sources import synthetic

FLAGS = flags.FLAGS

SPLITS_DIR = "splits"
# The pages' own seed stream, apart from those of training and evaluation.
PAGES_STREAM = 7


def parse_splits(value: str) -> tuple[int, int, int]:
  """ "200,20,80" -> (200, 20, 80); ValueError naming the flag otherwise."""
  try:
    counts = tuple(int(part) for part in value.split(","))
  except ValueError:
    counts = ()
  if len(counts) != 3 or min(counts) < 0 or counts[0] < 1:
    raise ValueError(
      f"--splits={value!r}: expected three page counts TRAIN,VALIDATION,TEST "
      "(at least one training page), e.g. 200,20,80."
    )
  return counts


def page_ids(num_pages: int) -> list[str]:
  return [f"page{i:04d}" for i in range(num_pages)]


def ground_truth(text: str) -> confidence.Transcription:
  """The transcription of a known text: every character certain."""
  lines, start = [], 1
  for line in text.split("\n"):
    lines.append(confidence.LineConfidence(line, 1.0, 1.0, (start, start + len(line) + 1)))
    start += len(line) + 1
  return confidence.Transcription(text, [1.0] * len(text), 1.0, 1.0, 0.0, lines)


def box_location(box) -> line_location.LineLocation:
  """A line's location from its box (left, top, right, bottom): its outline and bottom edge."""
  left, top, right, bottom = (int(v) for v in box)
  baseline = [(left, bottom - 1), (right - 1, bottom - 1)]
  return line_location.LineLocation(box, page_export.box_points(box), baseline, [])


def page_document(image_name: str, image: np.ndarray, text: str, line_boxes) -> object:
  """The PAGE-XML tree of one composed page (`line_boxes`: (top, left, bottom, right) rows)."""
  boxes = [(left, top, right, bottom) for top, left, bottom, right in line_boxes if bottom > top]
  lines = text.split("\n")
  if len(boxes) != len(lines):
    raise ValueError(f"{image_name}: {len(boxes)} line boxes for {len(lines)} lines of text.")
  height, width = image.shape[:2]
  return page_export.page_xml(
    image_name, width, height, ground_truth(text), [box_location(b) for b in boxes]
  )


def compose_pages(config, num_pages: int, seed: int):
  """Yields (uint8 image [H, W], text, line boxes) of `num_pages` evaluation-style pages."""
  bank = synthetic.load_bank(config, "eval")
  example = synthetic.make_synthetic_example(
    composer_lib.SyntheticComposer(bank, config.data),
    config.data,
    (seed, PAGES_STREAM),
    augment=False,
    line_boxes=True,
  )
  dataset = tf.data.Dataset.range(num_pages).map(example, num_parallel_calls=tf.data.AUTOTUNE)
  for page in dataset.as_numpy_iterator():
    yield pixels.to_uint8(page["image"]), page["text"].decode("utf-8"), page["line_boxes"]


def write_pages(config, output_dir: str, counts: tuple[int, int, int], seed: int = 0) -> dict:
  """Writes sum(counts) pages and their split lists into `output_dir`; returns a summary."""
  ids = page_ids(sum(counts))
  os.makedirs(os.path.join(output_dir, SPLITS_DIR), exist_ok=True)
  lines = 0
  for page_id, (image, text, boxes) in zip(ids, compose_pages(config, len(ids), seed)):
    Image.fromarray(image).save(os.path.join(output_dir, f"{page_id}.png"))
    document = page_document(f"{page_id}.png", image, text, boxes)
    document.write(
      os.path.join(output_dir, f"{page_id}.xml"),
      xml_declaration=True,
      encoding="UTF-8",
      pretty_print=True,
    )
    lines += text.count("\n") + 1
  bounds = np.cumsum((0,) + tuple(counts))
  for split, start, end in zip(reader.SPLITS, bounds[:-1], bounds[1:]):
    with open(os.path.join(output_dir, SPLITS_DIR, f"{split}.txt"), "w", encoding="utf-8") as f:
      f.write("".join(f"{page_id}\n" for page_id in ids[start:end]))
  return {
    "output_dir": output_dir,
    "fonts": list(config.data.heldout_fonts),
    "pages": dict(zip(reader.SPLITS, (int(c) for c in counts))),
    "lines": lines,
  }


def define_flags():
  """The command's flags, defined when it runs (not on import: --config is other commands' too)."""
  config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=False)
  flags.DEFINE_string("font", None, "Font file stem of the pages (unset = the held-out fonts).")
  flags.DEFINE_string("splits", "200,20,80", "Pages of the train, validation, test splits.")
  flags.DEFINE_string("output_dir", None, "Folder to write the pages into.")
  flags.DEFINE_integer("seed", 0, "Seed of the pages' composition.")
  flags.mark_flags_as_required(["config", "output_dir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = FLAGS.config
  counts = parse_splits(FLAGS.splits)
  if FLAGS.font:
    config.data.heldout_fonts = (FLAGS.font,)
  summary = write_pages(config, FLAGS.output_dir, counts, FLAGS.seed)
  logging.info("Wrote %d pages into %s.", sum(counts), FLAGS.output_dir)
  print(json.dumps(summary))


if __name__ == "__main__":
  define_flags()
  app.run(main)
