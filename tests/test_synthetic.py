import numpy as np
import pytest
import tensorflow as tf

from input_pipeline import augment
from input_pipeline import composer as composer_lib
from input_pipeline.wordbank import bank as bank_lib

NUM_EXAMPLES = 24


def form_config(config, **overrides):
  """The tiny config on a small page canvas."""
  config.data.level = "form"
  config.data.image_height = 96
  config.data.image_width = 160
  config.data.words_per_form = (3, 16)
  config.data.max_len = 64
  for key, value in overrides.items():
    setattr(config.data, key, value)
  return config


@pytest.fixture(scope="module")
def bank(bank_cache_dir):
  from configs import tiny

  return bank_lib.load_word_bank(tiny.get_config().data, "train", cache_dir=bank_cache_dir)


def compose_many(bank, data_config, num=NUM_EXAMPLES, seed=0):
  composer = composer_lib.SyntheticComposer(bank, data_config)
  compose = tf.function(composer.compose)
  examples = []
  for i in range(num):
    example = compose(tf.constant([seed, i], tf.int64))
    examples.append({k: v.numpy() for k, v in example.items()})
  return composer, examples


def expected_text(bank, word_ids, lines, crossed=None):
  """The target the layout implies: spaces, "\\n" between lines, punctuation
  attached; words `crossed` out are left out (the word after keeps its own
  separator).

  lines: each word's line (anything equal along a line, e.g. its box's top).
  """
  text = ""
  for k, i in enumerate(word_ids):
    word = str(bank.texts[i])
    if crossed is not None and crossed[k]:
      continue
    if k == 0:
      separator = ""
    elif lines[k] != lines[k - 1]:
      separator = "\n"
    else:
      separator = "" if word in composer_lib.PUNCTUATION else " "
    text += separator + word
  return text


def check_example(bank, layout, example):
  """Words inside the canvas, disjoint, drawn exactly, and the text says exactly them."""
  n = example["num_words"]
  word_ids, boxes = example["word_ids"][:n], example["boxes"][:n]
  assert n >= 1 and (example["word_ids"][n:] == -1).all()
  height, width = layout.canvas_height, layout.canvas_width
  assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= height).all()
  assert (boxes[:, 3] <= width).all()
  covered = np.zeros((height, width), np.int32)
  for top, left, bottom, right in boxes:
    covered[top:bottom, left:right] += 1
  assert covered.max() == 1, "two words overlap"

  ink = example["ink"]
  for i, (top, left, bottom, right) in zip(word_ids, boxes):
    np.testing.assert_array_equal(ink[top:bottom, left:right], bank.word_image(i))
  assert not ink[covered == 0].any(), "ink outside the words"

  text = example["text"].decode()
  assert text == expected_text(bank, word_ids, boxes[:, 0])
  assert example["num_lines"] == text.count("\n") + 1 == len(set(boxes[:, 0]))
  assert len(text) <= layout.max_chars


@pytest.mark.parametrize("level", ["form", "line", "word"])
def test_layout_draws_exactly_the_words_of_the_text(tiny_config, bank, level):
  config = form_config(tiny_config, level=level)
  composer, examples = compose_many(bank, config.data)
  for example in examples:
    check_example(bank, composer.layout, example)
  lines = [e["num_lines"] for e in examples]
  words = [e["num_words"] for e in examples]
  if level == "form":
    assert max(lines) >= 3, "forms should span several lines"
  elif level == "line":
    assert max(lines) == 1 and max(words) <= config.data.words_per_line[1]
  else:
    assert max(words) == 1


def test_short_max_len_drops_words_not_text(tiny_config, bank):
  config = form_config(tiny_config, max_len=12)
  composer, examples = compose_many(bank, config.data)
  for example in examples:
    check_example(bank, composer.layout, example)
  assert max(len(e["text"]) for e in examples) <= 10


def test_lines_that_do_not_fit_are_dropped_with_their_words(tiny_config, bank):
  config = form_config(tiny_config, image_height=48, words_per_form=(16, 16))
  composer, examples = compose_many(bank, config.data)
  for example in examples:
    check_example(bank, composer.layout, example)
    assert example["num_words"] < 16


def test_word_cap_caps_the_words_drawn(tiny_config, bank):
  config = form_config(tiny_config, words_per_form=(6, 16))
  composer = composer_lib.SyntheticComposer(bank, config.data)
  compose = tf.function(composer.compose)

  def counts(cap):
    result = []
    for i in range(NUM_EXAMPLES):
      example = compose(tf.constant([0, i], tf.int64), cap)
      example = {k: v.numpy() for k, v in example.items()}
      check_example(bank, composer.layout, example)
      result.append(int(example["num_words"]))
    return result

  # Below the low end, the cap itself is drawn; above it, words range up to the cap.
  assert set(counts(2)) == {2}
  assert max(counts(8)) <= 8
  assert max(counts(16)) > 8


def test_punctuation_words_attach_to_the_word_before(tiny_config, bank_cache_dir, tmp_path):
  text_file = tmp_path / "text.txt"
  text_file.write_text("Hello , world . Is it raining ? Yes ; it is : very much !\n" * 20)
  config = form_config(
    tiny_config, text_file=str(text_file), bank_size=200, words_per_writer=(200, 200)
  )
  bank = bank_lib.load_word_bank(config.data, "train", cache_dir=bank_cache_dir)
  composer, examples = compose_many(bank, config.data)
  for example in examples:
    check_example(bank, composer.layout, example)
    text = example["text"].decode()
    for mark in ",.?;:!":
      assert f" {mark}" not in text
  assert any(" world." in e["text"].decode() for e in examples)


def test_same_seed_same_example_other_seed_other_example(tiny_config, bank):
  config = form_config(tiny_config)
  _, first = compose_many(bank, config.data, num=4, seed=3)
  _, again = compose_many(bank, config.data, num=4, seed=3)
  _, other = compose_many(bank, config.data, num=4, seed=4)
  for a, b, c in zip(first, again, other):
    assert a["text"] == b["text"] and (a["ink"] == b["ink"]).all()
  assert [a["text"] for a in first] != [c["text"] for c in other]


def test_canvas_smaller_than_a_word_is_a_clear_error(tiny_config, bank):
  config = form_config(tiny_config, image_height=8)
  with pytest.raises(ValueError, match="data.image_height"):
    composer_lib.SyntheticComposer(bank, config.data)


def test_no_word_fits_is_a_clear_error(tiny_config, bank):
  # Every word image is at least 3 px wide (its ink plus a pixel a side).
  assert bank.widths.min() >= 3
  config = form_config(tiny_config, image_width=2)
  with pytest.raises(ValueError, match="data.image_width"):
    composer_lib.SyntheticComposer(bank, config.data)


@pytest.mark.parametrize("perspective", [False, True])
def test_warp_keeps_the_text_on_the_canvas(perspective):
  height, width = 64, 96
  corners = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float64)
  for i in range(40):
    # Text boxes from a small patch to the whole canvas.
    top, left = i % 5, (3 * i) % 11
    box = tf.constant([top, left, height - (i % 3), width - (i % 7)], tf.int32)
    matrix = augment.warp_matrix(
      box,
      (height, width),
      tf.constant([i, 1]),
      max_rotation=10.0,
      perspective=perspective,
      random_placement=True,
    ).numpy()
    b = box.numpy().astype(np.float64)
    points = np.stack(
      [
        b[1] - 0.5 + corners[:, 0] * (b[3] - b[1]),
        b[0] - 0.5 + corners[:, 1] * (b[2] - b[0]),
        np.ones(4),
      ],
      axis=1,
    )
    mapped = points @ matrix.T
    mapped = mapped[:, :2] / mapped[:, 2:]
    assert (mapped >= -0.5 - 1e-6).all()
    assert (mapped[:, 0] <= width - 0.5 + 1e-6).all()
    assert (mapped[:, 1] <= height - 0.5 + 1e-6).all()


def test_augmented_form_keeps_its_ink(tiny_config, bank):
  config = form_config(tiny_config)
  composer = composer_lib.SyntheticComposer(bank, config.data)
  for i in range(6):
    example = composer.compose(tf.constant([5, i], tf.int64))
    warped = augment.warp(
      example["ink"],
      example["content_box"],
      tf.constant([6, i]),
      max_rotation=3.0,
      perspective=True,
      random_placement=True,
    )
    ratio = float(tf.reduce_sum(warped) / tf.reduce_sum(tf.cast(example["ink"], tf.float32)))
    # Scale +-10% changes the area by at most ~21%; a cut-off would lose more.
    assert 0.7 < ratio < 1.3
    grey = augment.photometric(1.0 - warped / 255.0, tf.constant([7, i]))
    assert grey.dtype == tf.float32 and grey.shape == (96, 160)
    assert float(tf.reduce_min(grey)) >= 0.0 and float(tf.reduce_max(grey)) <= 1.0


def test_glyph_centres_sit_on_their_letters_and_between_words(tiny_config, bank):
  config = form_config(tiny_config)
  _, examples = compose_many(bank, config.data, num=8)
  for example in examples:
    n = example["num_words"]
    boxes, text = example["boxes"][:n], example["text"].decode()
    centres = example["glyph_centres"]
    assert centres.shape == (config.data.max_len - 1, 2)
    assert (centres[len(text) + 1 :] == 0).all()
    position = 0
    for k, (word_id, (top, left, bottom, right)) in enumerate(zip(example["word_ids"][:n], boxes)):
      if k and text[position] in " \n":
        y, x = centres[position]
        previous = boxes[k - 1]
        # Right of the word before, on its line; a space also left of its word.
        assert previous[0] <= y < previous[2] and x >= previous[3]
        assert text[position] == "\n" or x <= left
        position += 1
      xs = []
      for _ in str(bank.texts[word_id]):
        y, x = centres[position]
        assert top <= y < bottom and left <= x < right
        xs.append(x)
        position += 1
      assert xs == sorted(xs)
    assert position == len(text)
    y, x = centres[position]  # <EOS>, right of the last word
    assert boxes[-1][0] <= y < boxes[-1][2] and x >= boxes[-1][3]


def test_warp_points_follow_the_ink():
  height, width = 64, 96
  box = tf.constant([8, 8, 56, 88], tf.int32)
  options = dict(max_rotation=8.0, perspective=True, random_placement=True)
  for i in range(8):
    y, x = 14 + 5 * i, 12 + 9 * i
    ink = np.zeros((height, width), np.float32)
    ink[y - 1 : y + 2, x - 1 : x + 2] = 255.0
    seed = tf.constant([i, 3])
    warped = augment.warp(ink, box, seed, **options).numpy()
    rows, cols = np.mgrid[:height, :width]
    centroid = np.array([(rows * warped).sum(), (cols * warped).sum()]) / warped.sum()
    point = augment.warp_points(
      tf.constant([[y, x]], tf.float32), box, (height, width), seed, **options
    ).numpy()[0]
    np.testing.assert_allclose(point, centroid, atol=0.3)


def test_scan_look_greys_the_paper_and_keeps_the_ink_readable(tiny_config, bank):
  config = form_config(tiny_config)
  composer = composer_lib.SyntheticComposer(bank, config.data)
  example = composer.compose(tf.constant([5, 0], tf.int64))
  grey = 1.0 - tf.cast(example["ink"], tf.float32) / 255.0
  ink = grey.numpy() < 0.5
  papers, contrasts = [], []
  for i in range(24):
    looked = augment.scan_look(grey, tf.constant([9, i]))
    again = augment.scan_look(grey, tf.constant([9, i]))
    np.testing.assert_array_equal(looked.numpy(), again.numpy())  # a pure function of its seed
    looked = looked.numpy()
    assert looked.shape == grey.shape and looked.min() >= 0.0 and looked.max() <= 1.0
    papers.append(np.median(looked[~ink]))
    contrasts.append(np.median(looked[~ink]) - np.median(looked[ink]))
  # Paper from dark grey to light grey (the light falls off across the page);
  # ink always darker than its paper.
  assert min(papers) < 0.75 and max(papers) > 0.85
  assert min(contrasts) > 0.03 and np.median(contrasts) > 0.1


def test_scale_range_sets_the_size_of_the_text(tiny_config, bank):
  config = form_config(tiny_config)
  composer = composer_lib.SyntheticComposer(bank, config.data)
  example = composer.compose(tf.constant([5, 1], tf.int64))
  total = float(tf.reduce_sum(tf.cast(example["ink"], tf.float32)))
  for scale in (0.5, 1.0):
    warped = augment.warp(
      example["ink"],
      example["content_box"],
      tf.constant([6, 1]),
      max_rotation=0.0,
      perspective=False,
      random_placement=True,
      scale_range=(scale, scale),
    )
    # Ink area goes with the square of the scale.
    assert float(tf.reduce_sum(warped)) / total == pytest.approx(scale**2, rel=0.1)
