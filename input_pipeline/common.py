"""What every source of examples needs: pixels, tokens, text checks, per-process batches.

Pixels are normalised as `fphtr_jax.pixels` says and texts tokenized with the
ids of `fphtr_jax.tokenizer`, so the model and its tools read batches the same
way. Every global batch is `process_count` consecutive slices, one per
process (`global_index`), so the batches do not depend on the parallelism.
"""

import os

from absl import logging
import tensorflow as tf

from fphtr_jax import pixels
from fphtr_jax import tokenizer as tokenizer_lib
from input_pipeline import augment as augment_lib

# Second word of the stateless seeds: training and evaluation examples never coincide.
TRAIN_STREAM, _EVAL_STREAM, _TEST_STREAM = 0, 1, 2
# Evaluation splits: each draws from a seed stream of its own, so they share no example.
EVAL_STREAMS = {"validation": _EVAL_STREAM, "test": _TEST_STREAM}


def hide_gpus_from_tensorflow():
  """Keeps TensorFlow off the GPUs, which belong to JAX; call it before TF builds anything."""
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError as e:  # TF already initialised its devices.
    logging.warning("Could not hide GPUs from TensorFlow: %s", e)


# --- Texts and tokens ------------------------------------------------------------


def check_texts(texts, data_config, *, source: str):
  """Raises ValueError naming the first word with a character outside data.charset."""
  charset = set(data_config.charset)
  for word in texts:
    for char in str(word):
      if char not in charset:
        raise ValueError(
          f"Character {char!r} of the word {str(word)!r} ({source}) is not in data.charset; "
          "add it to data.charset or remove the word from the text."
        )
  needed = {"form": " \n", "line": " "}.get(data_config.level, "")
  missing = [c for c in needed if c not in charset]
  if missing:
    raise ValueError(
      f"data.charset lacks {missing!r}, which data.level={data_config.level!r} "
      "writes between words and lines."
    )


def make_tokenize(charset: str, max_len: int):
  """Returns text (tf.string scalar) -> int32 [max_len]: <SOS> ids <EOS> <PAD>....

  The ids are those of `fphtr_jax.tokenizer.Tokenizer(charset)`, which also
  checks the charset.
  """
  tokenizer_lib.Tokenizer(charset)
  code_points = [ord(c) for c in charset]
  first_id = tokenizer_lib.NUM_SPECIAL
  table = tf.lookup.StaticHashTable(
    tf.lookup.KeyValueTensorInitializer(
      tf.constant(code_points, tf.int32),
      tf.range(first_id, first_id + len(code_points), dtype=tf.int32),
    ),
    default_value=-1,
  )

  def tokenize(text):
    ids = table.lookup(tf.strings.unicode_decode(text, "UTF-8"))
    tf.debugging.assert_non_negative(ids, message="text has a character outside data.charset")
    tokens = tf.concat([[tokenizer_lib.SOS_ID], ids, [tokenizer_lib.EOS_ID]], axis=0)
    # Padding by a negative amount fails: a text longer than max_len - 2 is an error.
    tokens = tf.pad(tokens, [[0, max_len - tf.size(tokens)]], constant_values=tokenizer_lib.PAD_ID)
    return tf.ensure_shape(tokens, [max_len])

  return tokenize


# --- Pixels ----------------------------------------------------------------------


def ink_to_grey(ink) -> tf.Tensor:
  """Ink [H, W] (uint8 or float32, 0 = paper, 255 = full ink) -> float32 grey levels, paper = 1."""
  return 1.0 - tf.cast(ink, tf.float32) / 255.0


def warp_options(data_config, level: str, augment: bool = True) -> dict:
  """The keyword arguments of `augment.warp` for data.level, data.max_rotation, data.scale_range.

  Without `augment`, the warp only fits the text onto the canvas: no scale,
  rotation, perspective or placement, a shrink only where the text is
  larger than the canvas (a page laid out taller, data.layout_height).
  """
  if not augment:
    return dict(max_rotation=0.0, scale_range=(1.0, 1.0), perspective=False, random_placement=False)
  return dict(
    max_rotation=float(data_config.max_rotation),
    scale_range=tuple(float(s) for s in data_config.scale_range),
    perspective=level == "form",
    random_placement=level == "form",
  )


def canvas_shape(data_config) -> tuple[int, int]:
  """(data.image_height, data.image_width): the shape of every image."""
  return int(data_config.image_height), int(data_config.image_width)


def is_warped(ink, data_config, augment: bool) -> bool:
  """Whether `ink_to_image` moves the ink: augmented, or fitted onto a smaller canvas."""
  return augment or tuple(ink.shape) != canvas_shape(data_config)


def ink_to_image(ink, content_box, warp_seed, photometric_seed, *, data_config, level, augment):
  """Ink [h, W] (uint8 or float32, 0 = paper, 255 = full ink) -> normalised float32 [H, W, 1].

  With `augment`, the training augmentations: a warp around `content_box`
  (int32 [4], top, left, bottom, right) that keeps the text on the canvas,
  on a share data.scan_look of the images the look of a scan, then
  brightness/contrast and noise. Without, ink taller than the canvas (a page
  laid out on data.layout_height) is only fitted onto it.
  """
  if is_warped(ink, data_config, augment):
    options = warp_options(data_config, level, augment)
    ink = augment_lib.warp(ink, content_box, warp_seed, canvas_shape(data_config), **options)
  if not augment:
    return pixels.normalize(ink_to_grey(ink))
  grey = ink_to_grey(ink)
  scan_share = float(data_config.scan_look)
  if scan_share > 0:
    scan_seed = tf.random.experimental.stateless_fold_in(tf.cast(photometric_seed, tf.int64), 1)
    chosen = tf.random.stateless_uniform([], scan_seed[::-1]) < scan_share
    grey = tf.cond(chosen, lambda: augment_lib.scan_look(grey, scan_seed), lambda: grey)
  return pixels.normalize(augment_lib.photometric(grey, photometric_seed))


def fit_to_canvas(grey, height: int, width: int, scale: float = 1.0):
  """Places a grey image at the top left of a blank page of the canvas size.

  The image is scaled by `scale`, and shrunk further (aspect ratio kept) if it
  is still larger than the canvas: by min(scale, height / h, width / w), to
  round(size * factor) pixels clipped to [1, the canvas's size]. It is resized
  (antialiased) only if that changes its size; paper fills the rest.

  Args:
    grey: float32 [h, w] grey levels in [0, 1], paper = 1 (numpy or TF).
    height, width: the canvas.
    scale: the image's scale before any fitting (1.0 = as it is).

  Returns:
    (float32 [height, width] grey canvas in [0, 1], placed height, placed
    width), the last two int32 scalars: the image covers rows [0, placed
    height) and columns [0, placed width).
  """
  grey = tf.convert_to_tensor(grey, tf.float32)
  size = tf.shape(grey)[:2]
  fits = tf.constant([height, width], tf.float32) / tf.cast(size, tf.float32)
  factor = tf.minimum(float(scale), tf.reduce_min(fits))
  new_size = tf.clip_by_value(
    tf.cast(tf.round(tf.cast(size, tf.float32) * factor), tf.int32), 1, [height, width]
  )
  placed = tf.cond(
    tf.reduce_any(new_size != size),
    lambda: tf.image.resize(grey[:, :, None], new_size, antialias=True)[:, :, 0],
    lambda: grey,
  )
  canvas = tf.pad(
    placed, [[0, height - new_size[0]], [0, width - new_size[1]]], constant_values=1.0
  )
  canvas = tf.ensure_shape(tf.clip_by_value(canvas, 0.0, 1.0), [height, width])
  return canvas, new_size[0], new_size[1]


# --- Batches ---------------------------------------------------------------------


def batch_sizes(config, section: str, process_count: int) -> tuple[int, int]:
  """(per-process, global) batch size of config.<section>.batch_size ("train" or "eval").

  Raises ValueError naming the field unless the processes share it out evenly.
  """
  global_batch = int(config[section].batch_size)
  if global_batch < 1 or global_batch % process_count:
    raise ValueError(
      f"{section}.batch_size={global_batch} must be a positive multiple of the "
      f"number of processes ({process_count})."
    )
  return global_batch // process_count, global_batch


def global_index(local, batch: int, global_batch: int, process_index: int):
  """Global index of a process's `local`-th example.

  Each global batch is `process_count` consecutive slices of `batch`, one per
  process, so the global batches do not depend on the number of processes.
  """
  step, position = local // batch, local % batch
  return step * global_batch + process_index * batch + position


def padding_example(data_config) -> dict:
  """What fills an eval batch past the last example: a blank page and the empty text.

  image: float32 [H, W, 1] of `pixels.PAPER`; tokens: int32 [T], <SOS> <EOS> <PAD>....
  """
  return {
    "image": tf.fill([data_config.image_height, data_config.image_width, 1], pixels.PAPER),
    "tokens": make_tokenize(data_config.charset, int(data_config.max_len))(tf.constant("")),
  }


def batch_examples(
  ds: tf.data.Dataset, features, batch: int, data_config, *, num_batches: int | None = None
) -> tf.data.Dataset:
  """`ds` mapped through `features` in parallel (in order), in batches of `batch`, prefetched.

  num_batches: the number of batches, if known (so that `len()` works).
  """
  # `features` is TF ops throughout, with no Python control flow on tensors for
  # AutoGraph to rewrite: left as it is, the same graph is traced about 2 s
  # sooner in every process that builds the pipeline.
  features = tf.autograph.experimental.do_not_convert(features)
  ds = ds.map(features, num_parallel_calls=_num_parallel_calls(data_config), deterministic=True)
  ds = ds.batch(batch, drop_remainder=True)
  if num_batches is not None:
    ds = ds.apply(tf.data.experimental.assert_cardinality(num_batches))
  return ds.prefetch(int(data_config.prefetch)).with_options(_options(data_config))


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
