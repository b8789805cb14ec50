"""IAM's training words as a `WordBank`, for the synthetic composer to write IAM pages with.

Each word crop is cut from IAM's word images with its baseline on the bank's
baseline row, so that the composer lines up IAM words like rendered ones. The
bank is cached through `wordbank.cache` like the font bank.
"""

import pathlib

from absl import logging
import numpy as np
from PIL import Image

from input_pipeline import image_io
from input_pipeline.iam import reader
from input_pipeline.wordbank import bank as bank_lib
from input_pipeline.wordbank import cache, rendering


def _line_baseline(line: reader.Line) -> float:
  """Row of the line's baseline on the form: the median bottom of its words."""
  bottoms = [w.box[1] + w.box[3] for w in line.words if w.box[2] > 0 and w.box[3] > 0]
  return float(np.median(bottoms)) if bottoms else line.box[1] + 0.8 * line.box[3]


def _word_crop(
  grey: np.ndarray, above: float, word_height: int, baseline: int, scale: float
) -> np.ndarray:
  """uint8 ink [word_height, w] of a word image with its baseline on row `baseline`.

  `above` is how far the image's top lies above the line's baseline (full
  resolution). A word that would stick out of the row is shrunk to fit.
  """
  height, width = grey.shape
  above_px, below_px = above * scale, (height - above) * scale
  fit = min(1.0, baseline / max(above_px, 1e-6), (word_height - baseline) / max(below_px, 1e-6))
  factor = scale * fit
  size = (max(1, round(width * factor)), max(1, round(height * factor)))
  image = Image.fromarray(255 - grey).resize(size, Image.Resampling.BOX)
  ink = np.asarray(image, np.uint8)
  top = int(round(baseline - above * factor))
  crop = np.zeros((word_height, ink.shape[1]), np.uint8)
  rows = slice(max(0, top), min(word_height, top + ink.shape[0]))
  crop[rows] = ink[rows.start - top : rows.stop - top]
  return crop


def build_iam_word_bank(
  options: reader.Options,
  word_height: int,
  *,
  charset: str,
  skip_unknown: bool = False,
  forms: list[reader.Form] | None = None,
) -> bank_lib.WordBank:
  """A `WordBank` of the training split's words only.

  Each form is one "writer" (a contiguous run of words in reading order), so
  spans the composer draws read like passages of one hand. Words whose
  segmentation is "er", or without a box, are left out; so are bad images
  (logged), whatever data.iam_bad_image says, since the bank is not a target.
  A word with a character outside `charset` is an error naming it, or left
  out with `skip_unknown`.
  """
  allowed = set(charset)
  root = pathlib.Path(options.iam_dir).expanduser()
  if forms is None:
    forms = reader.parse_forms(root, need_words=True)
  train_ids = reader.split_ids(options, [f.id for f in forms])["train"]
  reader.required_dir(root, "words", "the word images (words/a01/a01-000u/...)")
  baseline = rendering.baseline_row(word_height)
  crops, texts, writers, names, writer_ids, skipped = [], [], [], [], [], []
  for form in forms:
    if form.id not in train_ids:
      continue
    writer = len(names)
    for line in form.lines:
      line_baseline = _line_baseline(line)
      for word in line.words:
        if not word.ok or word.box[2] < 1 or word.box[3] < 1 or not word.text:
          continue
        if not set(word.text) <= allowed:
          if skip_unknown:
            continue
          raise ValueError(
            f"IAM word {word.id} {word.text!r} has characters "
            f"{sorted(set(word.text) - allowed)} that are not in data.charset; add them, or "
            "set data.skip_unknown_chars=True to leave such words out."
          )
        record = reader.Record(
          id=word.id,
          level="word",
          form_id=form.id,
          writer=form.writer,
          text=word.text,
          ok=True,
          image_path=reader.nested_image(root, "words", word.id),
        )
        try:
          grey = reader.load_image(record, scale=1.0)
        except image_io.BadImageError as e:
          skipped.append(f"{word.id} ({e})")
          continue
        crops.append(
          _word_crop(grey, line_baseline - word.box[1], word_height, baseline, options.scale)
        )
        texts.append(word.text)
        writers.append(writer)
    if writers and writers[-1] == writer:
      names.append(form.id)
      writer_ids.append(form.writer)
  if skipped:
    logging.warning(
      "The IAM word bank leaves out %d unreadable word images: %s",
      len(skipped),
      "; ".join(skipped[:10]),
    )
  if not crops:
    raise ValueError(
      f"No readable word of the training split in {root}/words; the synthetic "
      "composer needs some (or set data.synthetic_proba=0)."
    )
  return bank_lib.WordBank.from_crops(
    crops, texts, writers, writer_names=names, font_names=writer_ids
  )


def _cache_inputs(
  options: reader.Options, word_height: int, charset: str, skip_unknown: bool
) -> dict:
  """Everything that shapes the bank: the inputs of its cache key."""
  root = pathlib.Path(options.iam_dir).expanduser().resolve()
  words_txt = root / "ascii" / "words.txt"
  stat = words_txt.stat() if words_txt.is_file() else None
  return dict(
    root=str(root),
    words_txt=(stat.st_size, stat.st_mtime_ns) if stat else None,
    word_height=word_height,
    charset=charset,
    skip_unknown=skip_unknown,
    scale=options.scale,
    split=options.split,
    split_seed=options.split_seed,
    split_fractions=list(options.split_fractions),
    version=1,
  )


def load_iam_word_bank(
  options: reader.Options,
  word_height: int,
  *,
  charset: str,
  skip_unknown: bool = False,
  cache_dir=None,
) -> bank_lib.WordBank:
  """`build_iam_word_bank`, built once then cached in `cache_dir` (None = the default folder)."""
  path = cache.bank_path(
    cache_dir, "iam_word_bank", _cache_inputs(options, word_height, charset, skip_unknown)
  )
  return bank_lib.load_or_build(
    path,
    lambda: build_iam_word_bank(options, word_height, charset=charset, skip_unknown=skip_unknown),
    "IAM word bank",
  )
