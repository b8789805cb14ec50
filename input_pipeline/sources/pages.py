"""Folders of transcribed pages, mixed with synthetic pages of their words: data.source="pages".

Real examples come from the TFDS builder (input_pipeline/pages/tfds_builder.py),
prepared once from data.pages_dir into data.pages_tfds_dir; texts are checked
against data.charset from the page files before any example is read. With
data.charset="auto" the vocabulary is the training split's characters
(`resolve_charset`). Real examples are made as the IAM source makes them
(`sources.real`), so both real sources fit and augment pages alike.
"""

import functools

from absl import logging
import numpy as np
import tensorflow as tf

from input_pipeline import common
from input_pipeline import composer as composer_lib
from input_pipeline.pages import reader
from input_pipeline.pages import word_bank as pages_word_bank
from input_pipeline.sources import real, synthetic

AUTO_CHARSET = "auto"


@functools.lru_cache(maxsize=4)
def _read_folder(options: reader.Options, fingerprint: str):
  del fingerprint  # only a key: an edited folder is read again
  return reader.read_folder(options.pages_dir, options)


def read_pages(options: reader.Options) -> tuple[list[reader.Page], reader.Skipped]:
  """`reader.read_folder` of options.pages_dir, read once per state of the folder."""
  return _read_folder(options, reader.folder_fingerprint(options.pages_dir))


def resolve_charset(config) -> str:
  """Turns data.charset="auto" into the training split's characters, in `config`; returns it.

  Any other charset is left as it is. Call it before the tokenizer is made,
  so that the saved config and vocabulary hold the characters themselves.
  """
  data = config.data
  if data.charset != AUTO_CHARSET:
    return data.charset
  if data.source != "pages":
    raise ValueError(
      f"data.charset='auto' reads the characters of a folder of pages; it needs "
      f"data.source='pages', not {data.source!r}."
    )
  options = reader.options_from_config(data)
  pages, skipped = read_pages(options)
  data.charset = reader.training_charset(pages, skipped, options)
  logging.info("data.charset='auto': %d characters %r.", len(data.charset), data.charset)
  return data.charset


def prepare_pages(data_config, options: reader.Options):
  """Prepares (once per state of the folder) and returns the TFDS builder of data.level."""
  import tensorflow_datasets as tfds  # Only the real-data sources need TFDS.

  from input_pipeline.pages import tfds_builder

  config = tfds_builder.builder_config(options.level, options, tfds_builder.fingerprint(options))
  builder = tfds_builder.PagesDataset(config=config, data_dir=data_config.pages_tfds_dir or None)
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(manual_dir=options.pages_dir)
  )
  return builder


def page_records(config, split: str) -> tuple[tf.data.Dataset, int]:
  """(dataset of (png, text), its size): the records of `split` that data.charset can write.

  Records with a character outside data.charset, or a text longer than
  data.max_len allows, are skipped with a warning naming file and line (or
  raise, with data.pages_bad_record="error").
  """
  data = config.data
  resolve_charset(config)
  options = reader.options_from_config(data)
  pages, skipped = read_pages(options)
  ids = reader.split_ids(options, reader.all_page_ids(pages, skipped))[split]
  common.check_texts([], data, source="pages")  # the separators of data.level
  text_skipped = reader.Skipped(options.bad_record)
  kept = reader.check_record_texts(
    reader.records(pages, data.level, ids), data.charset, int(data.max_len) - 2, text_skipped
  )
  text_skipped.log_summary(f"the {split} split")
  if not kept:
    raise ValueError(
      f"The {split} split of data.pages_dir={options.pages_dir} ({len(ids)} pages) has no "
      f"{data.level} that data.charset can write; see the warnings above, or change "
      "data.split_fractions / data.pages_split_dir."
    )
  builder = prepare_pages(data, options)
  return real.builder_records(builder, split, [r.id for r in kept], data.level)


def _synthetic_example(config, seed: int, augment: bool, cache_dir):
  """Synthetic examples composed from the training split's word crops, else the font bank's."""
  data = config.data
  options = reader.options_from_config(data)
  pages, skipped = read_pages(options)
  bank = pages_word_bank.load_pages_word_bank(
    pages, skipped, options, data, cache_dir=cache_dir or data.cache_dir
  )
  if bank is None:
    logging.info("No word of the training pages has coordinates: synthetic pages use fonts.")
    bank = synthetic.load_bank(config, "train", cache_dir)
  common.check_texts(np.unique(bank.texts), data, source="training word bank")
  return synthetic.make_synthetic_example(
    composer_lib.SyntheticComposer(bank, data), data, (seed, common.TRAIN_STREAM), augment=augment
  )


def create_train_dataset(
  config, *, process_index: int, process_count: int, start_step: int, cache_dir=None
) -> tf.data.Dataset:
  """The training split, mixed with synthetic examples (`real.create_train_dataset`).

  Synthetic examples (data.synthetic_proba of them, 0 = none) are composed
  from the training pages' word crops, or the font bank when they have none.
  """
  data = config.data
  records, count = page_records(config, "train")
  synthetic_example = None
  if real.check_synthetic_proba(data) > 0.0:
    synthetic_example = _synthetic_example(
      config, int(config.train.seed), bool(data.augment), cache_dir
    )
  return real.create_train_dataset(
    config,
    records,
    count,
    synthetic_example,
    name="Pages",
    process_index=process_index,
    process_count=process_count,
    start_step=start_step,
  )


def create_eval_dataset(
  config, split: str, *, process_index: int, process_count: int
) -> tf.data.Dataset:
  """The first eval.num_examples records of `split` (all if fewer), padded with mask 0."""
  records, count = page_records(config, split)
  return real.create_eval_dataset(
    config, records, count, split, process_index=process_index, process_count=process_count
  )
