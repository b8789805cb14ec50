"""Pages laid out larger than the canvas and fitted onto it (data.layout_height,
data.layout_width), and lone lines that stay one line however long.

The real TF composer and example pipeline on the tiny config's real word bank.
"""

import numpy as np
import pytest
import tensorflow as tf

from fphtr_jax import pixels
from input_pipeline import composer as composer_lib
from input_pipeline.sources import synthetic
from input_pipeline.wordbank import bank as bank_lib
from tests.test_synthetic import form_config

NUM_EXAMPLES = 16


@pytest.fixture(scope="module")
def bank(bank_cache_dir):
  from configs import tiny

  return bank_lib.load_word_bank(tiny.get_config().data, "train", cache_dir=bank_cache_dir)


def tall_config(config, **overrides):
  """Pages of more words than the 96 px canvas holds, laid out twice as tall."""
  overrides = dict(words_per_form=(30, 30), max_len=240, layout_height=192) | overrides
  return form_config(config, **overrides)


def examples(bank, config, *, augment, num=NUM_EXAMPLES):
  composer = composer_lib.SyntheticComposer(bank, config.data)
  example = tf.function(
    synthetic.make_synthetic_example(
      composer, config.data, (3, 0), augment=augment, glyph_centres=True, line_boxes=not augment
    )
  )
  return [{k: v.numpy() for k, v in example(tf.constant(i, tf.int64)).items()} for i in range(num)]


def ink_of(image):
  """bool [H, W]: the pixels with ink (the tiny bank's small words are grey)."""
  return pixels.to_grey(image) < 0.9


def assert_letters_under_their_centres(example):
  """Each letter's guided-attention centre is on the 96x160 image, with ink near it."""
  ink = ink_of(example["image"])
  text = example["text"].decode()
  centres = example["glyph_centres"][: len(text)]
  letters = [(y, x) for (y, x), c in zip(centres, text) if c.isalnum()]
  assert letters
  near = 0
  for y, x in letters:
    assert 0 <= y < 96 and 0 <= x < 160
    r, c = int(round(y)), int(round(x))
    near += ink[max(r - 3, 0) : r + 4, max(c - 3, 0) : c + 4].any()
  assert near >= 0.9 * len(letters)


def test_a_taller_layout_holds_more_lines(tiny_config):
  word_height = int(tiny_config.data.word_height)
  canvas = composer_lib.resolve_layout(tall_config(tiny_config, layout_height=0).data, word_height)
  tall = composer_lib.resolve_layout(tall_config(tiny_config).data, word_height)
  assert canvas.canvas_height == 96 and tall.canvas_height == 192
  assert tall.max_lines >= 2 * canvas.max_lines - 1
  # Lines and words are laid out on the canvas itself: the field is for pages.
  line = composer_lib.resolve_layout(tall_config(tiny_config, level="line").data, word_height)
  assert line.canvas_height == 96


@pytest.mark.parametrize("field", [dict(layout_height=96), dict(layout_height=0, layout_width=160)])
def test_a_layout_of_the_canvas_size_is_no_change(tiny_config, bank, field):
  same = examples(
    bank, tall_config(tiny_config.copy_and_resolve_references(), **field), augment=False, num=4
  )
  off = examples(bank, tall_config(tiny_config, layout_height=0), augment=False, num=4)
  for a, b in zip(same, off):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_a_tall_page_is_fitted_onto_the_canvas_whole_and_smaller(tiny_config, bank):
  config = tall_config(tiny_config)
  word_height = int(config.data.word_height)
  canvas_lines = composer_lib.resolve_layout(
    tall_config(tiny_config.copy_and_resolve_references(), layout_height=0).data, word_height
  ).max_lines
  more_lines, smallest = 0, word_height
  for example in examples(bank, config, augment=False):
    image, text = example["image"], example["text"].decode()
    assert image.shape == (96, 160, 1)
    num_lines = text.count("\n") + 1
    boxes = example["line_boxes"][:num_lines]
    assert (example["line_boxes"][num_lines:] == 0).all()
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 96).all() and (boxes[:, 3] <= 160).all()
    assert (boxes[1:, 0] >= boxes[:-1, 2] - 1).all(), "lines overlap"
    # All of the ink is in the page's line boxes (a pixel of blur aside).
    ink = ink_of(image)
    inside = np.zeros_like(ink)
    for top, left, bottom, right in boxes:
      inside[max(top - 1, 0) : bottom + 1, max(left - 1, 0) : right + 1] = True
    assert ink.any() and not (ink & ~inside).any()
    # Never written larger; each line the same size.
    heights = boxes[:, 2] - boxes[:, 0]
    assert heights.max() <= word_height and heights.max() - heights.min() <= 1
    if num_lines > canvas_lines:
      more_lines += 1
      smallest = min(smallest, heights.max())
    # Every letter's centre is on its line, in reading order.
    centres = example["glyph_centres"][: len(text)]  # then <EOS>'s
    line_of = np.cumsum([c == "\n" for c in text]) - np.array([c == "\n" for c in text])
    for (y, x), line, character in zip(centres, line_of, text):
      if character.isspace():
        continue  # between words, or right of a line's end
      top, left, bottom, right = boxes[line]
      assert top - 1 <= y <= bottom and left - 1 <= x <= right + 1
  # More lines than the canvas holds at the word height, written smaller.
  assert more_lines >= NUM_EXAMPLES // 2
  assert smallest <= 0.75 * word_height


def test_a_tall_training_page_keeps_its_letters_under_their_centres(tiny_config, bank):
  config = tall_config(tiny_config, scan_look=0.0)
  for example in examples(bank, config, augment=True, num=8):
    assert example["image"].shape == (96, 160, 1)
    assert_letters_under_their_centres(example)


def test_pages_of_drawn_heights_stop_their_lines_at_them(tiny_config, bank):
  # A range of one height is the layout's: the same pages.
  fixed = examples(bank, tall_config(tiny_config.copy_and_resolve_references()), augment=False)
  same = examples(
    bank,
    tall_config(tiny_config.copy_and_resolve_references(), layout_height_min=192),
    augment=False,
    num=4,
  )
  for a, b in zip(same, fixed):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  # Heights in [96, 192]: the same words, cut after fewer lines on a shorter page.
  drawn = examples(bank, tall_config(tiny_config, layout_height_min=96), augment=False)
  fewer, full_size = 0, 0
  for a, b in zip(drawn, fixed):
    text, tall_text = a["text"].decode(), b["text"].decode()
    num_lines, tall_lines = text.count("\n") + 1, tall_text.count("\n") + 1
    assert num_lines <= tall_lines and tall_text.startswith(text)
    fewer += num_lines < tall_lines
    heights = a["line_boxes"][:num_lines, 2] - a["line_boxes"][:num_lines, 0]
    full_size += heights.max() >= int(tiny_config.data.word_height) - 1
  assert fewer >= NUM_EXAMPLES // 4
  # A page of a few lines on a short page fills the canvas at full size.
  assert full_size >= NUM_EXAMPLES // 4


@pytest.mark.parametrize(
  "field, message",
  [
    (dict(layout_height=64), r"data.layout_height=64 is below data.image_height=96"),
    (dict(layout_height_min=64), r"data.layout_height_min=64 must be 0 .* \[data.image_height=96"),
    (dict(layout_height_min=200), r"data.layout_height_min=200 must be 0 .* height 192\]"),
    (dict(layout_width=100), r"data.layout_width=100 is below data.image_width=160"),
  ],
)
def test_a_layout_smaller_than_the_canvas_is_a_clear_error(tiny_config, field, message):
  config = tall_config(tiny_config, **field)
  with pytest.raises(ValueError, match=message):
    composer_lib.resolve_layout(config.data, int(config.data.word_height))


def wide_config(config, **overrides):
  """Pages of up to 12 words laid out three times as wide as the 160 px canvas."""
  overrides = dict(words_per_form=(12, 12), layout_width=480, layout_height=0) | overrides
  return tall_config(config, **overrides)


def test_a_lone_line_stays_one_line_however_long(tiny_config, bank):
  config = wide_config(tiny_config)
  composer = composer_lib.SyntheticComposer(bank, config.data)
  compose = tf.function(composer.compose)
  longer_than_the_image = broken_as_a_page = 0
  for i in range(NUM_EXAMPLES):
    seed = tf.constant([i, 7], tf.int64)
    line = {k: v.numpy() for k, v in compose(seed, 12, tf.constant(True)).items()}
    page = {k: v.numpy() for k, v in compose(seed, 12, tf.constant(False)).items()}
    text = line["text"].decode()
    assert line["num_lines"] == 1 and "\n" not in text and text
    assert (line["line_boxes"][1:] == 0).all()
    top, left, bottom, right = line["content_box"]
    assert right <= 480 and bottom - top <= int(config.data.word_height) + 1
    # The same words as the page drawn from the seed, up to the line's end.
    page_text = page["text"].decode()
    assert page_text.replace("\n", " ").startswith(text)
    longer_than_the_image += right - left > 160
    broken_as_a_page += page["num_lines"] > 1
  assert longer_than_the_image >= NUM_EXAMPLES // 2
  assert broken_as_a_page >= NUM_EXAMPLES // 2


def test_a_long_lone_training_line_is_fitted_onto_the_image_smaller(tiny_config, bank):
  config = wide_config(
    tiny_config,
    single_line_pages=1.0,
    single_word_pages=0.0,
    curriculum_steps=0,
    words_per_line=(6, 12),
    scan_look=0.0,
  )
  composer = composer_lib.SyntheticComposer(bank, config.data)
  example = tf.function(
    synthetic.make_synthetic_example(
      composer, config.data, (3, 0), augment=True, global_batch=1, glyph_centres=True
    )
  )
  shrunk = 0
  for i in range(8):
    features = {k: v.numpy() for k, v in example(tf.constant(i, tf.int64)).items()}
    assert features["image"].shape == (96, 160, 1)
    text = features["text"].decode()
    assert "\n" not in text
    rows = np.flatnonzero(ink_of(features["image"]).any(axis=1))
    shrunk += rows[-1] - rows[0] + 1 < 0.75 * int(config.data.word_height)
    assert_letters_under_their_centres(features)
  assert shrunk >= 4
