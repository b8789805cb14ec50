"""Batches for training and evaluation: `create_datasets(config, ...)`.

Every example is a pure function of (seed, example index): training starts at
any step with the same examples an uninterrupted run would see there, and the
batches are the same whatever the parallelism. Each process builds only its
own share of every global batch.
"""

import os

from absl import logging
import numpy as np
import tensorflow as tf

from input_pipeline import augment as augment_lib
from input_pipeline import handwriting
from input_pipeline import synthetic

# Grey levels in [0, 1] (paper = 1) are normalised with IAM's statistics.
IMAGE_MEAN, IMAGE_STD = 0.8275, 0.2314
PAD_ID, SOS_ID, EOS_ID = 0, 1, 2
NUM_SPECIAL = 3  # character id = NUM_SPECIAL + position in data.charset
SOURCES = ("embedded", "iam")
# Second word of the stateless seeds: training and evaluation examples never coincide.
_TRAIN_STREAM, _EVAL_STREAM = 0, 1


def hide_gpus_from_tensorflow():
  """Keeps TensorFlow off the GPUs, which belong to JAX."""
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError as e:  # TF already initialised its devices.
    logging.warning("Could not hide GPUs from TensorFlow: %s", e)


hide_gpus_from_tensorflow()


def check_texts(texts, data_config, *, source: str):
  """Raises ValueError naming the first word with a character outside data.charset."""
  charset = set(data_config.charset)
  for word in texts:
    for char in str(word):
      if char not in charset:
        raise ValueError(
            f"Character {char!r} of the word {str(word)!r} ({source}) is not in data.charset; "
            "add it to data.charset or remove the word from the text.")
  needed = {"form": " \n", "line": " "}.get(data_config.level, "")
  missing = [c for c in needed if c not in charset]
  if missing:
    raise ValueError(f"data.charset lacks {missing!r}, which data.level={data_config.level!r} "
                     "writes between words and lines.")


def make_tokenize(charset: str, max_len: int):
  """Returns text (tf.string scalar) -> int32 [max_len]: <SOS> ids <EOS> <PAD>...."""
  code_points = [ord(c) for c in charset]
  if len(set(code_points)) != len(code_points):
    raise ValueError(f"data.charset lists characters more than once: {charset!r}.")
  table = tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(
          tf.constant(code_points, tf.int32),
          tf.range(NUM_SPECIAL, NUM_SPECIAL + len(code_points), dtype=tf.int32)),
      default_value=-1)

  def tokenize(text):
    ids = table.lookup(tf.strings.unicode_decode(text, "UTF-8"))
    tf.debugging.assert_non_negative(ids, message="text has a character outside data.charset")
    tokens = tf.concat([[SOS_ID], ids, [EOS_ID]], axis=0)
    # Padding by a negative amount fails: a text longer than max_len - 2 is an error.
    tokens = tf.pad(tokens, [[0, max_len - tf.size(tokens)]], constant_values=PAD_ID)
    return tf.ensure_shape(tokens, [max_len])

  return tokenize


def normalize(grey):
  """float32 [H, W] grey levels in [0, 1] -> normalised float32 [H, W, 1]."""
  return ((grey - IMAGE_MEAN) / IMAGE_STD)[..., None]


def background_value() -> float:
  """The normalised value of blank paper (also the padding of images)."""
  return (1.0 - IMAGE_MEAN) / IMAGE_STD


def make_synthetic_example(composer, data_config, seed: tuple[int, int], *, augment: bool):
  """Returns example index (int64 scalar) -> {"image": [H, W, 1] f32, "tokens": [T] i32, "text"}."""
  tokenize = make_tokenize(data_config.charset, int(data_config.max_len))
  level = composer.layout.level
  max_rotation = float(data_config.max_rotation)

  def example(index):
    example_seed = tf.random.experimental.stateless_fold_in(tf.constant(seed, tf.int64), index)
    compose_seed, warp_seed, photometric_seed = tf.unstack(
        tf.random.experimental.stateless_split(example_seed, num=3))
    composed = composer.compose(compose_seed)
    if augment:
      ink = augment_lib.warp(composed["ink"], composed["content_box"], warp_seed,
                             max_rotation=max_rotation, perspective=level == "form",
                             random_placement=level == "form")
      grey = augment_lib.photometric(1.0 - ink / 255.0, photometric_seed)
    else:
      grey = synthetic.ink_to_grey(composed["ink"])
    return {"image": normalize(grey), "tokens": tokenize(composed["text"]),
            "text": composed["text"]}

  return example


def _per_process_batch_size(global_batch_size: int, process_count: int, field: str) -> int:
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(f"{field}={global_batch_size} must be a positive multiple of the number of "
                     f"processes ({process_count}).")
  return global_batch_size // process_count


def _global_index(local, batch: int, global_batch: int, process_index: int):
  """Global index of a process's `local`-th example.

  Each global batch is `process_count` consecutive slices of `batch`, one per
  process, so the global batches do not depend on the number of processes.
  """
  step, position = local // batch, local % batch
  return step * global_batch + process_index * batch + position


def _options(data_config) -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  calls = int(data_config.num_parallel_calls)
  options.threading.private_threadpool_size = calls if calls > 0 else (os.cpu_count() or 1)
  # Parallelism comes from the map over examples; each op stays on one thread.
  options.threading.max_intra_op_parallelism = 1
  return options


def _num_parallel_calls(data_config) -> int:
  calls = int(data_config.num_parallel_calls)
  return calls if calls > 0 else tf.data.AUTOTUNE


def _real_dataset(config, split: str):
  """The configured real dataset, or None when every example is synthetic."""
  source = config.data.source
  if source == "embedded":
    return None
  if source not in SOURCES:
    raise ValueError(f"data.source={source!r} is not one of {SOURCES}.")
  raise ValueError(f"data.source={source!r}: this version reads no real dataset yet; "
                   "use data.source='embedded'.")


def mix_with_synthetic(real: tf.data.Dataset, synthetic_ds: tf.data.Dataset,
                       synthetic_proba: float, seed: int) -> tf.data.Dataset:
  """Draws each example from `synthetic_ds` with probability `synthetic_proba`."""
  if not 0.0 <= synthetic_proba <= 1.0:
    raise ValueError(f"data.synthetic_proba={synthetic_proba} must be in [0, 1].")
  return tf.data.Dataset.sample_from_datasets(
      [synthetic_ds, real], weights=[synthetic_proba, 1.0 - synthetic_proba], seed=seed)


def load_banks(config, cache_dir=None):
  """(train bank, eval bank), their words checked against data.charset."""
  cache_dir = cache_dir or config.data.get("cache_dir")
  banks = []
  for split in ("train", "eval"):
    bank = handwriting.load_word_bank(config.data, split=split, cache_dir=cache_dir)
    check_texts(np.unique(bank.texts), config.data, source=f"{split} word bank")
    banks.append(bank)
  return tuple(banks)


def create_datasets(config, *, process_index: int = 0, process_count: int = 1,
                    start_step: int = 0, cache_dir=None):
  """(train_ds, eval_ds) of per-process batches (use `.as_numpy_iterator()`).

  Batches are dicts:
    image: float32 [b, H, W, 1], normalised; blank paper = `background_value()`.
    tokens: int32 [b, data.max_len], <SOS> ids <EOS> <PAD>....
    mask: float32 [b], 1 for real examples, 0 for padding.
  train_ds is infinite and starts at `start_step`; eval_ds holds the same
  eval.num_examples examples on every pass, its last batch padded with mask 0.
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must be in [0, {process_count}).")
  train_batch = _per_process_batch_size(int(config.train.batch_size), process_count,
                                        "train.batch_size")
  eval_batch = _per_process_batch_size(int(config.eval.batch_size), process_count,
                                       "eval.batch_size")
  real_train = _real_dataset(config, "train")
  train_bank, eval_bank = load_banks(config, cache_dir)
  options = _options(config.data)
  calls = _num_parallel_calls(config.data)
  seed = int(config.train.seed)

  # --- Training: an infinite stream, from `start_step` on. -------------------
  global_batch = int(config.train.batch_size)
  train_example = make_synthetic_example(
      synthetic.SyntheticComposer(train_bank, config.data), config.data,
      (seed, _TRAIN_STREAM), augment=bool(config.data.augment))

  def train_features(local):
    features = train_example(_global_index(local, train_batch, global_batch, process_index))
    return {"image": features["image"], "tokens": features["tokens"],
            "mask": tf.constant(1.0, tf.float32)}

  train_ds = tf.data.Dataset.counter(start_step * train_batch, dtype=tf.int64)
  train_ds = train_ds.map(train_features, num_parallel_calls=calls, deterministic=True)
  if real_train is not None:
    train_ds = mix_with_synthetic(real_train, train_ds, float(config.data.synthetic_proba), seed)
  train_ds = train_ds.batch(train_batch, drop_remainder=True)
  train_ds = train_ds.prefetch(int(config.data.prefetch)).with_options(options)

  # --- Evaluation: a fixed set, padded to whole global batches. --------------
  num_examples = int(config.eval.num_examples)
  global_eval_batch = int(config.eval.batch_size)
  num_batches = -(-num_examples // global_eval_batch)
  eval_example = make_synthetic_example(
      synthetic.SyntheticComposer(eval_bank, config.data), config.data,
      (seed, _EVAL_STREAM), augment=False)
  blank = tf.fill([config.data.image_height, config.data.image_width, 1], background_value())
  empty_tokens = make_tokenize(config.data.charset, int(config.data.max_len))(tf.constant(""))

  def eval_features(local):
    index = _global_index(local, eval_batch, global_eval_batch, process_index)
    real = index < num_examples
    features = eval_example(tf.minimum(index, num_examples - 1))
    return {"image": tf.where(real, features["image"], blank),
            "tokens": tf.where(real, features["tokens"], empty_tokens),
            "mask": tf.cast(real, tf.float32)}

  eval_ds = tf.data.Dataset.range(num_batches * eval_batch)
  eval_ds = eval_ds.map(eval_features, num_parallel_calls=calls, deterministic=True)
  eval_ds = eval_ds.batch(eval_batch, drop_remainder=True)
  eval_ds = eval_ds.prefetch(int(config.data.prefetch)).with_options(options)
  logging.info("Datasets: %d train / %d eval examples per batch on process %d of %d; "
               "%d eval batches.", train_batch, eval_batch, process_index, process_count,
               num_batches)
  return train_ds, eval_ds
