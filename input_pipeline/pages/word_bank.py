"""The training pages' word crops as a `WordBank`, for the synthetic composer to write pages with.

Where the page files have words with coordinates (PAGE-XML Word, ALTO
String), each word of the training split is cut from its page (paper
outside its polygon) and set with the line's baseline on the bank's baseline
row, as IAM's word bank does (`iam.word_bank`). The bank is cached through
`wordbank.cache`, keyed by the folder's files and the options.
"""

import dataclasses
import math

from absl import logging
import numpy as np

from input_pipeline import image_io
from input_pipeline.iam import word_bank as iam_word_bank
from input_pipeline.pages import reader
from input_pipeline.wordbank import bank as bank_lib
from input_pipeline.wordbank import cache, rendering
from input_pipeline.wordbank import text as text_lib


def _baseline_row(line: reader.Line, word: reader.Word) -> float:
  """Row of the line's baseline under `word`, in page coordinates.

  The line's Baseline where the file has one, else the median bottom of its words.
  """
  centre = float(np.mean([x for x, _ in word.polygon]))
  if len(line.baseline) >= 2:
    points = sorted(line.baseline)
    return float(np.interp(centre, [x for x, _ in points], [y for _, y in points]))
  bottoms = [max(y for _, y in w.polygon) for w in line.words if w.polygon]
  return float(np.median(bottoms))


def _training_words(pages, skipped, options: reader.Options, charset: str):
  """(page, line, word) of the training split's words with a polygon and a text in `charset`."""
  allowed = set(text_lib.word_charset(charset))
  train = reader.split_ids(options, reader.all_page_ids(pages, skipped))["train"]
  return [
    (page, line, word)
    for page in pages
    if page.id in train
    for line in page.lines
    for word in line.words
    if word.polygon and word.text and set(word.text) <= allowed
  ]


def build_pages_word_bank(
  pages, skipped, options: reader.Options, word_height: int, charset: str
) -> bank_lib.WordBank | None:
  """A `WordBank` of the training split's words, each page one writer; None if there are none.

  Crops are at options.scale, shrunk where a word would stick out of the
  bank's word_height rows.

  Words with characters outside `charset` are left out, and so are words
  whose image cannot be read (logged), whatever data.pages_bad_record says:
  the bank is not a target.
  """
  words = _training_words(pages, skipped, options, charset)
  if not words:
    return None
  images = reader.RecordImages(dataclasses.replace(options, scale=1.0), reader.Skipped())
  baseline = rendering.baseline_row(word_height)
  crops, texts, writers, names, unreadable = [], [], [], [], 0
  for page, line, word in words:
    try:
      image = images.page_image(page.image_path)
      grey = reader.cut_polygon(image, word.polygon, (page.width, page.height))
    except image_io.BadImageError:
      unreadable += 1
      continue
    # In the image's pixels, as cut_polygon scales the page's coordinates.
    fy = image.height / page.height if page.height > 0 else 1.0
    top = max(0, math.floor(min(y for _, y in word.polygon) * fy))
    above = _baseline_row(line, word) * fy - top
    crops.append(
      iam_word_bank._word_crop(np.asarray(grey), above, word_height, baseline, options.scale)
    )
    texts.append(word.text)
    if not names or names[-1] != page.id:
      names.append(page.id)
    writers.append(len(names) - 1)
  if unreadable:
    logging.warning("The pages' word bank leaves out %d words it cannot read.", unreadable)
  if not crops:
    raise ValueError(
      f"No word crop of the training pages in {options.pages_dir} can be read; the synthetic "
      "composer needs some (or set data.synthetic_proba=0)."
    )
  return bank_lib.WordBank.from_crops(crops, texts, writers, writer_names=names, font_names=names)


def load_pages_word_bank(
  pages, skipped, options: reader.Options, data_config, cache_dir=None
) -> bank_lib.WordBank | None:
  """`build_pages_word_bank`, built once then cached in `cache_dir` (None = the default folder)."""
  word_height, charset = int(data_config.word_height), str(data_config.charset)
  if not _training_words(pages, skipped, options, charset):
    return None
  inputs = dict(
    folder=reader.folder_fingerprint(options.pages_dir),
    splits=reader.split_fingerprint(options),
    options=repr(dataclasses.replace(options, level="word", bad_record="skip")),
    word_height=word_height,
    charset=charset,
    version=1,
  )
  return bank_lib.load_or_build(
    cache.bank_path(cache_dir, "pages_word_bank", inputs),
    lambda: build_pages_word_bank(pages, skipped, options, word_height, charset),
    "pages' word bank",
  )
