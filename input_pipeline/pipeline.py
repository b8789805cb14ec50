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
from input_pipeline import iam
from input_pipeline import synthetic

# Grey levels in [0, 1] (paper = 1) are normalised with IAM's statistics.
IMAGE_MEAN, IMAGE_STD = 0.8275, 0.2314
PAD_ID, SOS_ID, EOS_ID = 0, 1, 2
NUM_SPECIAL = 3  # character id = NUM_SPECIAL + position in data.charset
SOURCES = ("embedded", "iam")
# Second word of the stateless seeds: training and evaluation examples never coincide.
_TRAIN_STREAM, _EVAL_STREAM, _TEST_STREAM = 0, 1, 2
# Evaluation splits of the synthetic source: both draw from the eval word bank
# (held-out fonts and text), from separate seed streams, so they share no example.
EVAL_STREAMS = {"validation": _EVAL_STREAM, "test": _TEST_STREAM}


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


def curriculum_max_words(step, first: int, last: int, curriculum_steps: int):
  """The most words on a page at `step`: `first` at step 0, `last` from curriculum_steps on."""
  progress = tf.minimum(tf.cast(step, tf.float32) / float(curriculum_steps), 1.0)
  return tf.cast(tf.round(first + progress * (last - first)), tf.int32)


def make_synthetic_example(composer, data_config, seed: tuple[int, int], *, augment: bool,
                           global_batch: int = 0, glyph_centres: bool = False):
  """Returns example index (int64 scalar) -> a dict of
    image: float32 [H, W, 1]; tokens: int32 [T]; text: tf.string;
    glyph_centres (only if asked): float32 [T - 1, 2], (y, x) in image pixels
      of each target token (tokens[1:]): every character and <EOS>, where the
      augmented image shows it; zero for padding.

  With `global_batch` > 0 and data.curriculum_steps > 0, an example's page
  holds at most `curriculum_max_words` of its step (index // global_batch):
  from data.words_per_line's low end (one line) to the layout's most words.
  A share data.single_line_pages of them (training only) is instead one line
  of data.words_per_line words, so that a page may also end after one line.
  """
  tokenize = make_tokenize(data_config.charset, int(data_config.max_len))
  level = composer.layout.level
  max_rotation = float(data_config.max_rotation)
  curriculum_steps = int(data_config.curriculum_steps) if global_batch > 0 else 0
  single_line_pages = float(data_config.get("single_line_pages", 0.0)) if global_batch > 0 else 0.0
  line_words = tuple(int(n) for n in data_config.words_per_line)

  def example(index):
    example_seed = tf.random.experimental.stateless_fold_in(tf.constant(seed, tf.int64), index)
    compose_seed, warp_seed, photometric_seed = tf.unstack(
        tf.random.experimental.stateless_split(example_seed, num=3))
    word_cap = None
    if curriculum_steps:
      word_cap = curriculum_max_words(index // global_batch, line_words[0],
                                       composer.layout.num_words[1], curriculum_steps)
    if single_line_pages:
      line_seed = tf.random.experimental.stateless_fold_in(example_seed, 1)
      one_line = tf.random.stateless_uniform([], line_seed) < single_line_pages
      line_cap = tf.random.stateless_uniform([], line_seed[::-1], line_words[0], line_words[1] + 1,
                                             dtype=tf.int32)
      word_cap = tf.where(one_line, line_cap,
                          composer.layout.num_words[1] if word_cap is None else word_cap)
    composed = composer.compose(compose_seed, word_cap)
    image = ink_to_image(composed["ink"], composed["content_box"], warp_seed, photometric_seed,
                         level=level, augment=augment, max_rotation=max_rotation)
    features = {"image": image, "tokens": tokenize(composed["text"]), "text": composed["text"]}
    if glyph_centres:
      glyphs = composed["glyph_centres"]
      if augment:
        glyphs = augment_lib.warp_points(glyphs, composed["content_box"], composed["ink"].shape,
                                         warp_seed, **_warp_options(level, max_rotation))
      is_token = features["tokens"][1:] != PAD_ID
      features["glyph_centres"] = tf.where(is_token[:, None], glyphs, 0.0)
    return features

  return example


def ink_to_image(ink, content_box, warp_seed, photometric_seed, *, level: str, augment: bool,
                 max_rotation: float):
  """Ink [H, W] (uint8 or float32, 0 = paper, 255 = full ink) -> normalised float32 [H, W, 1].

  With `augment`, the reference augmentations: a warp around `content_box`
  (int32 [4], top, left, bottom, right) that keeps the text on the canvas,
  then brightness/contrast and noise.
  """
  if augment:
    ink = augment_lib.warp(ink, content_box, warp_seed, **_warp_options(level, max_rotation))
    grey = augment_lib.photometric(1.0 - ink / 255.0, photometric_seed)
  else:
    grey = synthetic.ink_to_grey(ink)
  return normalize(grey)


def _warp_options(level: str, max_rotation: float) -> dict:
  return dict(max_rotation=max_rotation, perspective=level == "form",
              random_placement=level == "form")


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


def check_source(data_config):
  if data_config.source not in SOURCES:
    raise ValueError(f"data.source={data_config.source!r} is not one of {SOURCES}.")


def load_bank(config, split: str, cache_dir=None):
  """The word bank of `split` ("train" or "eval"), its words checked against data.charset."""
  cache_dir = cache_dir or config.data.get("cache_dir")
  bank = handwriting.load_word_bank(config.data, split=split, cache_dir=cache_dir)
  check_texts(np.unique(bank.texts), config.data, source=f"{split} word bank")
  return bank


def load_banks(config, cache_dir=None):
  """(train bank, eval bank), their words checked against data.charset."""
  return tuple(load_bank(config, split, cache_dir) for split in ("train", "eval"))


def create_datasets(config, *, process_index: int = 0, process_count: int = 1,
                    start_step: int = 0, cache_dir=None):
  """(train_ds, eval_ds) of per-process batches (use `.as_numpy_iterator()`).

  Batches are dicts:
    image: float32 [b, H, W, 1], normalised; blank paper = `background_value()`.
    tokens: int32 [b, data.max_len], <SOS> ids <EOS> <PAD>....
    mask: float32 [b], 1 for real examples, 0 for padding.
    glyph_centres: float32 [b, data.max_len - 1, 2], training batches only
      and only with train.attention_loss_weight > 0 (make_synthetic_example).
  train_ds is infinite and starts at `start_step`; eval_ds holds the same
  eval.num_examples examples on every pass, its last batch padded with mask 0.
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must be in [0, {process_count}).")
  train_batch = _per_process_batch_size(int(config.train.batch_size), process_count,
                                        "train.batch_size")
  eval_batch = _per_process_batch_size(int(config.eval.batch_size), process_count,
                                       "eval.batch_size")
  check_source(config.data)
  if config.data.source == "iam":
    train_ds = create_iam_train_dataset(config, process_index=process_index,
                                        process_count=process_count, start_step=start_step,
                                        cache_dir=cache_dir)
    eval_ds = create_iam_eval_dataset(config, "validation", process_index=process_index,
                                      process_count=process_count)
    return train_ds, eval_ds
  train_bank, eval_bank = load_banks(config, cache_dir)
  options = _options(config.data)
  calls = _num_parallel_calls(config.data)
  seed = int(config.train.seed)

  # --- Training: an infinite stream, from `start_step` on. -------------------
  global_batch = int(config.train.batch_size)
  guided = config.train.get("attention_loss_weight", 0) > 0
  train_example = make_synthetic_example(
      synthetic.SyntheticComposer(train_bank, config.data), config.data,
      (seed, _TRAIN_STREAM), augment=bool(config.data.augment), global_batch=global_batch,
      glyph_centres=guided)

  def train_features(local):
    features = train_example(_global_index(local, train_batch, global_batch, process_index))
    batch = {"image": features["image"], "tokens": features["tokens"],
             "mask": tf.constant(1.0, tf.float32)}
    if guided:
      batch["glyph_centres"] = features["glyph_centres"]
    return batch

  train_ds = tf.data.Dataset.counter(start_step * train_batch, dtype=tf.int64)
  train_ds = train_ds.map(train_features, num_parallel_calls=calls, deterministic=True)
  train_ds = train_ds.batch(train_batch, drop_remainder=True)
  train_ds = train_ds.prefetch(int(config.data.prefetch)).with_options(options)

  eval_ds = create_eval_dataset(config, process_index=process_index,
                                process_count=process_count, bank=eval_bank)
  logging.info("Datasets: %d train / %d eval examples per batch on process %d of %d; "
               "%d eval batches.", train_batch, eval_batch, process_index, process_count,
               len(eval_ds))
  return train_ds, eval_ds


def create_eval_dataset(config, split: str = "validation", *, process_index: int = 0,
                        process_count: int = 1, cache_dir=None, bank=None):
  """The fixed evaluation set of `split`, as per-process batches (see `create_datasets`).

  eval.num_examples examples, the same on every pass; the last batch is padded
  with blank pages of mask 0, so every example counts once. "validation" is
  the set evaluated during training; "test" draws other examples from the same
  held-out word bank. `bank` = the eval word bank, if already loaded.
  """
  if split not in EVAL_STREAMS:
    raise ValueError(f"split={split!r} is not one of {tuple(EVAL_STREAMS)}.")
  check_source(config.data)
  if config.data.source == "iam":
    return create_iam_eval_dataset(config, split, process_index=process_index,
                                   process_count=process_count)
  eval_batch = _per_process_batch_size(int(config.eval.batch_size), process_count,
                                       "eval.batch_size")
  bank = load_bank(config, "eval", cache_dir) if bank is None else bank
  seed = int(config.train.seed)
  num_examples = int(config.eval.num_examples)
  global_eval_batch = int(config.eval.batch_size)
  num_batches = -(-num_examples // global_eval_batch)
  eval_example = make_synthetic_example(
      synthetic.SyntheticComposer(bank, config.data), config.data,
      (seed, EVAL_STREAMS[split]), augment=False)
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
  eval_ds = eval_ds.map(eval_features, num_parallel_calls=_num_parallel_calls(config.data),
                        deterministic=True)
  eval_ds = eval_ds.batch(eval_batch, drop_remainder=True)
  return eval_ds.prefetch(int(config.data.prefetch)).with_options(_options(config.data))


# --- IAM -------------------------------------------------------------------------
# Real examples come from the TFDS builder (input_pipeline/iam_tfds.py), prepared
# once from data.iam_dir into data.iam_tfds_dir; texts are checked against
# data.charset from the IAM files before any example is read.

# Third stream of the stateless seeds: which training examples are synthetic.
_MIX_STREAM = 3


def synthetic_choice(seed: int, index, synthetic_proba: float):
  """bool scalar: whether example `index` (int64) is synthetic; a pure function of both."""
  u = tf.random.stateless_uniform(
      [], tf.random.experimental.stateless_fold_in(tf.constant([seed, _MIX_STREAM], tf.int64),
                                                   index), alg="philox")
  return u < synthetic_proba


def make_real_example(data_config, seed: tuple[int, int], *, augment: bool):
  """Returns (index, png, text) -> {"image": [H, W, 1] f32, "tokens": [T] i32, "text"}.

  The grey image (png: tf.string, 1 channel, paper white) goes onto the
  canvas at the top left, shrunk to fit if it is larger than the canvas.
  """
  tokenize = make_tokenize(data_config.charset, int(data_config.max_len))
  height, width = int(data_config.image_height), int(data_config.image_width)
  level, max_rotation = data_config.level, float(data_config.max_rotation)

  def example(index, png, text):
    example_seed = tf.random.experimental.stateless_fold_in(tf.constant(seed, tf.int64), index)
    _, warp_seed, photometric_seed = tf.unstack(
        tf.random.experimental.stateless_split(example_seed, num=3))
    ink = 255.0 - tf.cast(tf.io.decode_png(png, channels=1), tf.float32)
    size = tf.cast(tf.shape(ink)[:2], tf.float32)
    fit = tf.minimum(1.0, tf.reduce_min(tf.constant([height, width], tf.float32) / size))
    new_size = tf.clip_by_value(tf.cast(tf.round(size * fit), tf.int32), 1, [height, width])
    ink = tf.cond(fit < 1.0,
                  lambda: tf.image.resize(ink, new_size, antialias=True),
                  lambda: ink)[:, :, 0]
    ink = tf.pad(ink, [[0, height - new_size[0]], [0, width - new_size[1]]])
    ink = tf.ensure_shape(tf.clip_by_value(ink, 0.0, 255.0), [height, width])
    content_box = tf.stack([0, 0, new_size[0], new_size[1]])
    image = ink_to_image(ink, content_box, warp_seed, photometric_seed, level=level,
                         augment=augment, max_rotation=max_rotation)
    return {"image": image, "tokens": tokenize(text), "text": text}

  return example


def prepare_iam(data_config):
  """Prepares (once) and returns the TFDS builder of data.level from data.iam_dir."""
  import tensorflow_datasets as tfds  # Only the IAM source needs TFDS.
  from input_pipeline import iam_tfds

  options = iam.options_from_config(data_config)
  config = iam_tfds.builder_config(data_config.level, options)
  builder = iam_tfds.IamHandwriting(
      config=config.name if config.name == data_config.level else config,
      data_dir=data_config.get("iam_tfds_dir") or None)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=options.iam_dir))
  return builder


def iam_records(config, split: str, builder=None) -> tuple[tf.data.Dataset, int]:
  """(dataset of (png, text), its size): the records of `split` that data.charset can write.

  Raises ValueError naming the record with a character outside data.charset
  (unless data.skip_unknown_chars) or a text longer than data.max_len allows.
  """
  import tensorflow_datasets as tfds

  data = config.data
  options = iam.options_from_config(data)
  builder = builder or prepare_iam(data)
  records = iam.records(options, data.level, split)
  check_texts([], data, source="IAM")  # the separators of data.level
  kept = iam.check_record_texts(records, data.charset, int(data.max_len) - 2,
                                skip_unknown=bool(data.get("skip_unknown_chars")))
  if not kept:
    raise ValueError(f"The IAM {split} split has no {data.level} that data.charset can write "
                     f"(data.iam_dir={options.iam_dir}).")
  wanted = tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(tf.constant([r.id for r in kept]),
                                          tf.ones([len(kept)], tf.int32)), default_value=0)
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          decoders={"image": tfds.decode.SkipDecoding()},
                          read_config=tfds.ReadConfig(interleave_cycle_length=1))
  ds = ds.filter(lambda x: wanted.lookup(x["id"]) > 0)
  ds = ds.map(lambda x: (x["image"], x["text"]))
  count = int(ds.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))
  if count == 0:
    raise ValueError(f"The prepared IAM {split} split holds no readable {data.level} image.")
  return ds, count


def create_iam_train_dataset(config, *, process_index: int, process_count: int,
                             start_step: int, cache_dir=None) -> tf.data.Dataset:
  """IAM's training split, mixed with synthetic examples from its words.

  Global example g is synthetic with probability data.synthetic_proba
  (`synthetic_choice`), composed from the IAM training words; otherwise it is
  the g-th record of a stream that reshuffles the split every epoch with a
  seed of its own, so a run resumed at any step sees the same examples.
  """
  data = config.data
  batch = _per_process_batch_size(int(config.train.batch_size), process_count,
                                  "train.batch_size")
  global_batch = int(config.train.batch_size)
  seed = int(config.train.seed)
  proba = float(data.synthetic_proba)
  if not 0.0 <= proba <= 1.0:
    raise ValueError(f"data.synthetic_proba={proba} must be in [0, 1].")
  augment = bool(data.augment)
  records, count = iam_records(config, "train")
  real_example = make_real_example(data, (seed, _TRAIN_STREAM), augment=augment)
  if proba > 0.0:
    bank = iam.load_word_bank(iam.options_from_config(data), int(data.word_height),
                              cache_dir=cache_dir or data.get("cache_dir"),
                              charset=data.charset,
                              skip_unknown=bool(data.get("skip_unknown_chars")))
    check_texts(np.unique(bank.texts), data, source="IAM training word bank")
    synthetic_example = make_synthetic_example(
        synthetic.SyntheticComposer(bank, data), data, (seed, _TRAIN_STREAM), augment=augment)

  def features(index, record):
    png, text = record
    if proba <= 0.0:
      chosen = real_example(index, png, text)
    else:
      chosen = tf.cond(
          synthetic_choice(seed, index, proba),
          lambda: {k: v for k, v in synthetic_example(index).items() if k != "text"},
          lambda: {k: v for k, v in real_example(index, png, text).items() if k != "text"})
    return {"image": chosen["image"], "tokens": chosen["tokens"],
            "mask": tf.constant(1.0, tf.float32)}

  first = start_step * global_batch
  stream = tf.data.Dataset.range(first // count, tf.int64.max).flat_map(
      lambda epoch: records.shuffle(count, seed=seed * 1_000_003 + epoch))
  stream = stream.skip(first % count)
  ds = tf.data.Dataset.zip(tf.data.Dataset.counter(first, dtype=tf.int64), stream)
  # Every process reads the whole stream and keeps its slice of each global batch.
  ds = ds.batch(global_batch, drop_remainder=True)
  ds = ds.map(lambda i, r: tf.nest.map_structure(
      lambda x: x[process_index * batch:(process_index + 1) * batch], (i, r)))
  ds = ds.unbatch()
  ds = ds.map(features, num_parallel_calls=_num_parallel_calls(data), deterministic=True)
  ds = ds.batch(batch, drop_remainder=True)
  logging.info("IAM %ss: %d training records, synthetic_proba %.2f.", data.level, count, proba)
  return ds.prefetch(int(data.prefetch)).with_options(_options(data))


def create_iam_eval_dataset(config, split: str, *, process_index: int,
                            process_count: int) -> tf.data.Dataset:
  """The first eval.num_examples records of IAM's `split` (all if fewer), padded with mask 0."""
  data = config.data
  batch = _per_process_batch_size(int(config.eval.batch_size), process_count,
                                  "eval.batch_size")
  global_batch = int(config.eval.batch_size)
  records, count = iam_records(config, split)
  num_examples = min(int(config.eval.num_examples), count)
  total = -(-num_examples // global_batch) * global_batch
  example = make_real_example(data, (int(config.train.seed), EVAL_STREAMS[split]),
                              augment=False)
  blank = tf.fill([data.image_height, data.image_width, 1], background_value())
  empty_tokens = make_tokenize(data.charset, int(data.max_len))(tf.constant(""))
  padding = tf.data.Dataset.from_tensors((tf.constant(b""), tf.constant(b""))).repeat(
      total - num_examples)
  ds = tf.data.Dataset.zip(tf.data.Dataset.range(total), records.take(num_examples)
                           .concatenate(padding))
  # Global example g is in slot g % global_batch of its batch; slots are dealt
  # to processes in runs of `batch`, as in `_global_index`.
  ds = ds.filter(lambda g, _: (g % global_batch) // batch == process_index)

  def features(index, record):
    real = index < num_examples
    chosen = tf.cond(real, lambda: example(index, *record),
                     lambda: {"image": blank, "tokens": empty_tokens, "text": record[1]})
    return {"image": chosen["image"], "tokens": chosen["tokens"],
            "mask": tf.cast(real, tf.float32)}

  ds = ds.map(features, num_parallel_calls=_num_parallel_calls(data), deterministic=True)
  ds = ds.batch(batch, drop_remainder=True)
  ds = ds.apply(tf.data.experimental.assert_cardinality(total // global_batch))
  return ds.prefetch(int(data.prefetch)).with_options(_options(data))
