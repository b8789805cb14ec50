"""Pages laid out taller than the canvas and fitted onto it (data.layout_height).

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


def test_a_taller_layout_holds_more_lines(tiny_config):
  word_height = int(tiny_config.data.word_height)
  canvas = composer_lib.resolve_layout(tall_config(tiny_config, layout_height=0).data, word_height)
  tall = composer_lib.resolve_layout(tall_config(tiny_config).data, word_height)
  assert canvas.canvas_height == 96 and tall.canvas_height == 192
  assert tall.max_lines >= 2 * canvas.max_lines - 1
  # Lines and words are laid out on the canvas itself: the field is for pages.
  line = composer_lib.resolve_layout(tall_config(tiny_config, level="line").data, word_height)
  assert line.canvas_height == 96


def test_layout_height_of_the_canvas_is_no_change(tiny_config, bank):
  same = examples(
    bank,
    tall_config(tiny_config.copy_and_resolve_references(), layout_height=96),
    augment=False,
    num=4,
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


def test_layout_height_below_the_canvas_is_a_clear_error(tiny_config):
  config = tall_config(tiny_config, layout_height=64)
  with pytest.raises(ValueError, match=r"data.layout_height=64 is below data.image_height=96"):
    composer_lib.resolve_layout(config.data, int(config.data.word_height))
