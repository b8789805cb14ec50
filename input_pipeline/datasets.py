"""Batches for training and evaluation: `create_datasets(config, ...)`.

Every example is a pure function of (seed, example index): training starts at
any step with the same examples an uninterrupted run would see there, and the
batches are the same whatever the parallelism. Each process builds only its
own share of every global batch. data.source picks where examples come from:
"embedded" (synthetic pages from the font word bank, `sources.synthetic`),
"iam" (IAM mixed with synthetic pages of its words, `sources.iam`) or "pages"
(a folder of PAGE-XML, ALTO or image + text pages, `sources.pages`).
"""

from absl import logging

from input_pipeline import common
from input_pipeline.sources import iam, pages, synthetic

SOURCES = ("embedded", "iam", "pages")


def check_source(data_config):
  if data_config.source not in SOURCES:
    raise ValueError(f"data.source={data_config.source!r} is not one of {SOURCES}.")


def resolve_charset(config) -> str:
  """data.charset="auto" -> the training split's characters, set in `config` (pages only).

  Call it before the tokenizer is made: config.json and the saved vocabulary
  then hold the characters themselves. Other charsets are left as they are.
  """
  return pages.resolve_charset(config)


def create_datasets(
  config, *, process_index: int = 0, process_count: int = 1, start_step: int = 0, cache_dir=None
):
  """(train_ds, eval_ds) of per-process batches (use `.as_numpy_iterator()`).

  data.charset="auto" is resolved in `config` first (`resolve_charset`).

  Batches are dicts:
    image: float32 [b, H, W, 1], normalised; blank paper = `fphtr_jax.pixels.PAPER`.
    tokens: int32 [b, data.max_len], <SOS> ids <EOS> <PAD>....
    mask: float32 [b], 1 for real examples, 0 for padding.
    glyph_centres: float32 [b, data.max_len - 1, 2], training batches only
      and only with train.attention_loss_weight > 0 (synthetic.make_synthetic_example).
  train_ds is infinite and starts at `start_step`; eval_ds holds the same
  eval.num_examples examples on every pass, its last batch padded with mask 0.
  """
  common.hide_gpus_from_tensorflow()
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must be in [0, {process_count}).")
  train_batch, _ = common.batch_sizes(config, "train", process_count)
  eval_batch, _ = common.batch_sizes(config, "eval", process_count)
  check_source(config.data)
  shards = dict(process_index=process_index, process_count=process_count)
  resolve_charset(config)
  if config.data.source == "iam":
    train_ds = iam.create_train_dataset(
      config, **shards, start_step=start_step, cache_dir=cache_dir
    )
    eval_ds = iam.create_eval_dataset(config, "validation", **shards)
  elif config.data.source == "pages":
    train_ds = pages.create_train_dataset(
      config, **shards, start_step=start_step, cache_dir=cache_dir
    )
    eval_ds = pages.create_eval_dataset(config, "validation", **shards)
  else:
    train_bank, eval_bank = synthetic.load_banks(config, cache_dir)
    train_ds = synthetic.create_train_dataset(
      config, **shards, start_step=start_step, bank=train_bank
    )
    eval_ds = synthetic.create_eval_dataset(config, "validation", **shards, bank=eval_bank)
  logging.info(
    "Datasets: %d train / %d eval examples per batch on process %d of %d; %d eval batches.",
    train_batch,
    eval_batch,
    process_index,
    process_count,
    len(eval_ds),
  )
  return train_ds, eval_ds


def create_eval_dataset(
  config,
  split: str = "validation",
  *,
  process_index: int = 0,
  process_count: int = 1,
  cache_dir=None,
  bank=None,
):
  """The fixed evaluation set of `split`, as per-process batches (see `create_datasets`).

  eval.num_examples examples, the same on every pass; the last batch is padded
  with blank pages of mask 0, so every example counts once. "validation" is
  the set evaluated during training; "test" holds other examples: for the
  synthetic source, drawn from the same held-out word bank. `bank` = the eval
  word bank of the synthetic source, if already loaded.
  """
  common.hide_gpus_from_tensorflow()
  if split not in common.EVAL_STREAMS:
    raise ValueError(f"split={split!r} is not one of {tuple(common.EVAL_STREAMS)}.")
  check_source(config.data)
  shards = dict(process_index=process_index, process_count=process_count)
  resolve_charset(config)
  if config.data.source == "iam":
    return iam.create_eval_dataset(config, split, **shards)
  if config.data.source == "pages":
    return pages.create_eval_dataset(config, split, **shards)
  return synthetic.create_eval_dataset(config, split, **shards, bank=bank, cache_dir=cache_dir)
