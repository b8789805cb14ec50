"""IAM records, mixed with synthetic pages of IAM's training words: data.source="iam".

Real examples come from the TFDS builder (input_pipeline/iam/tfds_builder.py),
prepared once from data.iam_dir into data.iam_tfds_dir; texts are checked
against data.charset from the IAM files before any example is read.
"""

import numpy as np
import tensorflow as tf

from input_pipeline import common
from input_pipeline import composer as composer_lib
from input_pipeline.iam import reader
from input_pipeline.iam import word_bank as iam_word_bank
from input_pipeline.sources import real, synthetic


def prepare_iam(data_config):
  """Prepares (once) and returns the TFDS builder of data.level from data.iam_dir."""
  import tensorflow_datasets as tfds  # Only the IAM source needs TFDS.

  from input_pipeline.iam import tfds_builder

  options = reader.options_from_config(data_config)
  config = tfds_builder.builder_config(data_config.level, options)
  builder = tfds_builder.IamHandwriting(
    config=config.name if config.name == data_config.level else config,
    data_dir=data_config.iam_tfds_dir or None,
  )
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(manual_dir=options.iam_dir)
  )
  return builder


def iam_records(config, split: str, builder=None) -> tuple[tf.data.Dataset, int]:
  """(dataset of (png, text), its size): the records of `split` that data.charset can write.

  Raises ValueError naming the record with a character outside data.charset
  (unless data.skip_unknown_chars) or a text longer than data.max_len allows.
  """
  data = config.data
  options = reader.options_from_config(data)
  builder = builder or prepare_iam(data)
  records = reader.records(options, data.level, split)
  common.check_texts([], data, source="IAM")  # the separators of data.level
  kept = reader.check_record_texts(
    records, data.charset, int(data.max_len) - 2, skip_unknown=bool(data.skip_unknown_chars)
  )
  if not kept:
    raise ValueError(
      f"The IAM {split} split has no {data.level} that data.charset can write "
      f"(data.iam_dir={options.iam_dir})."
    )
  return real.builder_records(builder, split, [r.id for r in kept], f"IAM {data.level}")


def create_train_dataset(
  config, *, process_index: int, process_count: int, start_step: int, cache_dir=None
) -> tf.data.Dataset:
  """IAM's training split, mixed with synthetic examples (`real.create_train_dataset`).

  Synthetic examples (data.synthetic_proba of them) are composed from the IAM training words.
  """
  data = config.data
  records, count = iam_records(config, "train")
  synthetic_example = None
  if real.check_synthetic_proba(data) > 0.0:
    bank = iam_word_bank.load_iam_word_bank(
      reader.options_from_config(data),
      int(data.word_height),
      cache_dir=cache_dir or data.cache_dir,
      charset=data.charset,
      skip_unknown=bool(data.skip_unknown_chars),
    )
    common.check_texts(np.unique(bank.texts), data, source="IAM training word bank")
    synthetic_example = synthetic.make_synthetic_example(
      composer_lib.SyntheticComposer(bank, data),
      data,
      (int(config.train.seed), common.TRAIN_STREAM),
      augment=bool(data.augment),
    )
  return real.create_train_dataset(
    config,
    records,
    count,
    synthetic_example,
    name="IAM",
    process_index=process_index,
    process_count=process_count,
    start_step=start_step,
  )


def create_eval_dataset(
  config, split: str, *, process_index: int, process_count: int
) -> tf.data.Dataset:
  """The first eval.num_examples records of IAM's `split` (all if fewer), padded with mask 0."""
  records, count = iam_records(config, split)
  return real.create_eval_dataset(
    config, records, count, split, process_index=process_index, process_count=process_count
  )
