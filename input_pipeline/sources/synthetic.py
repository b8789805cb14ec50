"""Synthetic pages from the font word bank: data.source="embedded".

The training bank and the eval bank (held-out fonts and text) are composed
into words, lines or pages (`composer`), augmented for training. Training
pages may grow over a curriculum, from one line to full pages.
"""

import numpy as np
import tensorflow as tf

from fphtr_jax import tokenizer as tokenizer_lib
from input_pipeline import augment as augment_lib
from input_pipeline import common
from input_pipeline import composer as composer_lib
from input_pipeline.wordbank import bank as bank_lib


def load_bank(config, split: str, cache_dir=None):
  """The word bank of `split` ("train" or "eval"), its words checked against data.charset."""
  bank = bank_lib.load_word_bank(
    config.data, split=split, cache_dir=cache_dir or config.data.cache_dir
  )
  common.check_texts(np.unique(bank.texts), config.data, source=f"{split} word bank")
  return bank


def load_banks(config, cache_dir=None):
  """(train bank, eval bank), their words checked against data.charset."""
  return tuple(load_bank(config, split, cache_dir) for split in ("train", "eval"))


def curriculum_max_words(step, first: int, last: int, curriculum_steps: int):
  """The most words on a page at `step`: `first` at step 0, `last` from curriculum_steps on."""
  progress = tf.minimum(tf.cast(step, tf.float32) / float(curriculum_steps), 1.0)
  return tf.cast(tf.round(first + progress * (last - first)), tf.int32)


def make_synthetic_example(
  composer,
  data_config,
  seed: tuple[int, int],
  *,
  augment: bool,
  global_batch: int = 0,
  glyph_centres: bool = False,
  line_boxes: bool = False,
):
  """Returns example index (int64 scalar) -> a dict of
    image: float32 [H, W, 1]; tokens: int32 [T]; text: tf.string;
    glyph_centres (only if asked): float32 [T - 1, 2], (y, x) in image pixels
      of each target token (tokens[1:]): every character and <EOS>, where the
      augmented image shows it; zero for padding.
    line_boxes (only if asked, and only without `augment`): int32 [max_lines,
      4] (top, left, bottom, right) in image pixels, bottom/right exclusive,
      around each line's words; zeros past the last line.

  With `global_batch` > 0 and data.curriculum_steps > 0, an example's page
  holds at most `curriculum_max_words` of its step (index // global_batch):
  from data.words_per_line's low end (one line) to the layout's most words.
  A share data.single_line_pages of them (training only) is instead one line
  of data.words_per_line words (one line however long: it runs to the
  layout's edge, data.layout_width, and is fitted onto the image), so that a
  page may also end after one line, and a share data.single_word_pages a
  single word.
  """
  if line_boxes and augment:
    raise ValueError("line_boxes are the unwarped layout's: ask for them with augment=False.")
  tokenize = common.make_tokenize(data_config.charset, int(data_config.max_len))
  level = composer.layout.level
  canvas = common.canvas_shape(data_config)
  curriculum_steps = int(data_config.curriculum_steps) if global_batch > 0 else 0
  single_line_pages = float(data_config.single_line_pages) if global_batch > 0 else 0.0
  single_word_pages = float(data_config.single_word_pages) if global_batch > 0 else 0.0
  line_words = tuple(int(n) for n in data_config.words_per_line)

  def example(index):
    example_seed = tf.random.experimental.stateless_fold_in(tf.constant(seed, tf.int64), index)
    compose_seed, warp_seed, photometric_seed = tf.unstack(
      tf.random.experimental.stateless_split(example_seed, num=3)
    )
    word_cap = one_line = None
    if curriculum_steps:
      word_cap = curriculum_max_words(
        index // global_batch, line_words[0], composer.layout.num_words[1], curriculum_steps
      )
    if single_line_pages or single_word_pages:
      line_seed = tf.random.experimental.stateless_fold_in(example_seed, 1)
      share = tf.random.stateless_uniform([], line_seed)
      line_cap = tf.random.stateless_uniform(
        [], line_seed[::-1], line_words[0], line_words[1] + 1, dtype=tf.int32
      )
      cap = composer.layout.num_words[1] if word_cap is None else word_cap
      one_line = share < single_line_pages
      word_cap = tf.where(one_line, line_cap, cap)
      word_cap = tf.where(share >= 1.0 - single_word_pages, 1, word_cap)
    composed = composer.compose(compose_seed, word_cap, one_line)
    image = common.ink_to_image(
      composed["ink"],
      composed["content_box"],
      warp_seed,
      photometric_seed,
      data_config=data_config,
      level=level,
      augment=augment,
    )
    features = {"image": image, "tokens": tokenize(composed["text"]), "text": composed["text"]}

    # Where the image shows a point of the layout: moved by the warp, or by
    # the fit of a page laid out taller than the canvas.
    def to_image(points_yx):
      if not common.is_warped(composed["ink"], data_config, augment):
        return points_yx
      return augment_lib.warp_points(
        points_yx,
        composed["content_box"],
        canvas,
        warp_seed,
        source_shape=composed["ink"].shape,
        **common.warp_options(data_config, level, augment),
      )

    if glyph_centres:
      is_token = features["tokens"][1:] != tokenizer_lib.PAD_ID
      features["glyph_centres"] = tf.where(
        is_token[:, None], to_image(composed["glyph_centres"]), 0.0
      )
    if line_boxes:
      # Fitting only scales and moves, so a box's two corners stay its
      # corners; its edges lie half a pixel before its first and last rows.
      boxes = composed["line_boxes"]
      edges = tf.cast(tf.reshape(boxes, [-1, 2]), tf.float32) - 0.5
      moved = tf.cast(tf.round(to_image(edges) + 0.5), tf.int32)
      moved = tf.reshape(moved, tf.shape(boxes))
      features["line_boxes"] = tf.where(boxes[:, 2:3] > 0, moved, 0)
    return features

  return example


def create_train_dataset(
  config, *, process_index: int, process_count: int, start_step: int, bank
) -> tf.data.Dataset:
  """The infinite training stream from `start_step` on, composed from `bank` (see datasets)."""
  batch, global_batch = common.batch_sizes(config, "train", process_count)
  guided = config.train.attention_loss_weight > 0
  example = make_synthetic_example(
    composer_lib.SyntheticComposer(bank, config.data),
    config.data,
    (int(config.train.seed), common.TRAIN_STREAM),
    augment=bool(config.data.augment),
    global_batch=global_batch,
    glyph_centres=guided,
  )

  def features(local):
    chosen = example(common.global_index(local, batch, global_batch, process_index))
    result = {
      "image": chosen["image"],
      "tokens": chosen["tokens"],
      "mask": tf.constant(1.0, tf.float32),
    }
    if guided:
      result["glyph_centres"] = chosen["glyph_centres"]
    return result

  ds = tf.data.Dataset.counter(start_step * batch, dtype=tf.int64)
  return common.batch_examples(ds, features, batch, config.data)


def create_eval_dataset(
  config,
  split: str,
  *,
  process_index: int,
  process_count: int,
  bank=None,
  cache_dir=None,
  line_boxes: bool = False,
) -> tf.data.Dataset:
  """The fixed evaluation set of `split`, composed from the eval `bank` (see datasets).

  bank: the eval word bank; None = `load_bank(config, "eval", cache_dir)`.
  line_boxes: add each page's true line boxes, int32 [b, max_lines, 4]
    (`make_synthetic_example`; zeros for padding pages), e.g. to score line
    locations. The other features are the same either way.
  """
  batch, global_batch = common.batch_sizes(config, "eval", process_count)
  bank = load_bank(config, "eval", cache_dir) if bank is None else bank
  num_examples = int(config.eval.num_examples)
  num_batches = -(-num_examples // global_batch)
  example = make_synthetic_example(
    composer_lib.SyntheticComposer(bank, config.data),
    config.data,
    (int(config.train.seed), common.EVAL_STREAMS[split]),
    augment=False,
    line_boxes=line_boxes,
  )
  padding = common.padding_example(config.data)

  def features(local):
    index = common.global_index(local, batch, global_batch, process_index)
    real = index < num_examples
    chosen = example(tf.minimum(index, num_examples - 1))
    result = {
      "image": tf.where(real, chosen["image"], padding["image"]),
      "tokens": tf.where(real, chosen["tokens"], padding["tokens"]),
      "mask": tf.cast(real, tf.float32),
    }
    if line_boxes:
      result["line_boxes"] = tf.where(real, chosen["line_boxes"], 0)
    return result

  ds = tf.data.Dataset.range(num_batches * batch)
  return common.batch_examples(ds, features, batch, config.data)
