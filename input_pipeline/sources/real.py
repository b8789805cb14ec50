"""What the sources of real images share: records, examples, the training stream, eval sets.

The IAM source (`sources.iam`) and the pages source (`sources.pages`) both
read (png, text) records from a TFDS builder, fit each image to the canvas the
same way, mix them with synthetic examples by data.synthetic_proba, and pad
their evaluation sets alike; this module is that common part.
"""

from absl import logging
import tensorflow as tf

from input_pipeline import common

# Third stream of the stateless seeds: which training examples are synthetic.
_MIX_STREAM = 3


def synthetic_choice(seed: int, index, synthetic_proba: float):
  """bool scalar: whether example `index` (int64) is synthetic; a pure function of both."""
  u = tf.random.stateless_uniform(
    [],
    tf.random.experimental.stateless_fold_in(tf.constant([seed, _MIX_STREAM], tf.int64), index),
    alg="philox",
  )
  return u < synthetic_proba


def make_real_example(data_config, seed: tuple[int, int], *, augment: bool):
  """Returns (index, png, text) -> {"image": [H, W, 1] f32, "tokens": [T] i32, "text"}.

  The grey image (png: tf.string, 1 channel, paper white) goes onto the
  canvas at the top left, shrunk to fit if it is larger than the canvas
  (`common.fit_to_canvas`).
  """
  tokenize = common.make_tokenize(data_config.charset, int(data_config.max_len))
  height, width = int(data_config.image_height), int(data_config.image_width)

  def example(index, png, text):
    example_seed = tf.random.experimental.stateless_fold_in(tf.constant(seed, tf.int64), index)
    _, warp_seed, photometric_seed = tf.unstack(
      tf.random.experimental.stateless_split(example_seed, num=3)
    )
    grey = tf.cast(tf.io.decode_png(png, channels=1)[:, :, 0], tf.float32) / 255.0
    canvas, placed_height, placed_width = common.fit_to_canvas(grey, height, width)
    content_box = tf.stack([0, 0, placed_height, placed_width])
    # As ink (0 = paper): the warp fills what it uncovers with 0.
    image = common.ink_to_image(
      255.0 * (1.0 - canvas),
      content_box,
      warp_seed,
      photometric_seed,
      data_config=data_config,
      level=data_config.level,
      augment=augment,
    )
    return {"image": image, "tokens": tokenize(text), "text": text}

  return example


def builder_records(builder, split: str, ids: list[str], what: str) -> tuple[tf.data.Dataset, int]:
  """(dataset of (png, text), its size): the records of `split` in `builder` whose id is in `ids`.

  `what` names the records in the error raised when none is readable.
  """
  import tensorflow_datasets as tfds  # Only the real-data sources need TFDS.

  wanted = tf.lookup.StaticHashTable(
    tf.lookup.KeyValueTensorInitializer(tf.constant(ids), tf.ones([len(ids)], tf.int32)),
    default_value=0,
  )
  ds = builder.as_dataset(
    split=split,
    shuffle_files=False,
    decoders={"image": tfds.decode.SkipDecoding()},
    read_config=tfds.ReadConfig(interleave_cycle_length=1),
  )
  ds = ds.filter(lambda x: wanted.lookup(x["id"]) > 0)
  ds = ds.map(lambda x: (x["image"], x["text"]))
  count = int(ds.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))
  if count == 0:
    raise ValueError(f"The prepared {split} split holds no readable {what} image.")
  return ds, count


def check_synthetic_proba(data_config) -> float:
  proba = float(data_config.synthetic_proba)
  if not 0.0 <= proba <= 1.0:
    raise ValueError(f"data.synthetic_proba={proba} must be in [0, 1].")
  return proba


def create_train_dataset(
  config,
  records: tf.data.Dataset,
  count: int,
  synthetic_example=None,
  *,
  name: str,
  process_index: int,
  process_count: int,
  start_step: int,
) -> tf.data.Dataset:
  """The training split of `records` (`count` of them), mixed with synthetic examples.

  Global example g is `synthetic_example(g)` with probability
  data.synthetic_proba (`synthetic_choice`; None = real records only);
  otherwise it is the g-th record of a stream that reshuffles the split every
  epoch with a seed of its own, so a run resumed at any step sees the same
  examples. `name` names the source in the log.
  """
  data = config.data
  batch, global_batch = common.batch_sizes(config, "train", process_count)
  seed = int(config.train.seed)
  proba = check_synthetic_proba(data) if synthetic_example is not None else 0.0
  real_example = make_real_example(data, (seed, common.TRAIN_STREAM), augment=bool(data.augment))

  def features(index, record):
    png, text = record
    if proba <= 0.0:
      chosen = real_example(index, png, text)
    else:
      chosen = tf.cond(
        synthetic_choice(seed, index, proba),
        lambda: {k: v for k, v in synthetic_example(index).items() if k != "text"},
        lambda: {k: v for k, v in real_example(index, png, text).items() if k != "text"},
      )
    return {
      "image": chosen["image"],
      "tokens": chosen["tokens"],
      "mask": tf.constant(1.0, tf.float32),
    }

  first = start_step * global_batch
  stream = tf.data.Dataset.range(first // count, tf.int64.max).flat_map(
    lambda epoch: records.shuffle(count, seed=seed * 1_000_003 + epoch)
  )
  stream = stream.skip(first % count)
  ds = tf.data.Dataset.zip(tf.data.Dataset.counter(first, dtype=tf.int64), stream)
  # Every process reads the whole stream and keeps its slice of each global batch.
  ds = ds.batch(global_batch, drop_remainder=True)
  ds = ds.map(
    lambda i, r: tf.nest.map_structure(
      lambda x: x[process_index * batch : (process_index + 1) * batch], (i, r)
    )
  )
  ds = ds.unbatch()
  logging.info("%s %ss: %d training records, synthetic_proba %.2f.", name, data.level, count, proba)
  return common.batch_examples(ds, features, batch, data)


def create_eval_dataset(
  config,
  records: tf.data.Dataset,
  count: int,
  split: str,
  *,
  process_index: int,
  process_count: int,
) -> tf.data.Dataset:
  """The first eval.num_examples of `records` of `split` (all if fewer), padded with mask 0."""
  data = config.data
  batch, global_batch = common.batch_sizes(config, "eval", process_count)
  num_examples = min(int(config.eval.num_examples), count)
  total = -(-num_examples // global_batch) * global_batch
  example = make_real_example(
    data, (int(config.train.seed), common.EVAL_STREAMS[split]), augment=False
  )
  padding = common.padding_example(data)
  blank_records = tf.data.Dataset.from_tensors((tf.constant(b""), tf.constant(b""))).repeat(
    total - num_examples
  )
  ds = tf.data.Dataset.zip(
    tf.data.Dataset.range(total), records.take(num_examples).concatenate(blank_records)
  )
  # Global example g is in slot g % global_batch of its batch; slots are dealt
  # to processes in runs of `batch`, as in `common.global_index`.
  ds = ds.filter(lambda g, _: (g % global_batch) // batch == process_index)

  def features(index, record):
    real = index < num_examples
    chosen = tf.cond(real, lambda: example(index, *record), lambda: dict(padding, text=record[1]))
    return {"image": chosen["image"], "tokens": chosen["tokens"], "mask": tf.cast(real, tf.float32)}

  return common.batch_examples(ds, features, batch, data, num_batches=total // global_batch)
