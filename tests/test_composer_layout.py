"""Uneven line gaps, tilted lines, crossed-out words and short lines
(data.line_gap_jitter, data.line_tilt, data.crossed_out, data.short_lines).

The real TF composer on the tiny config's real word bank.
"""

import numpy as np
import pytest

from input_pipeline import composer as composer_lib
from input_pipeline.wordbank import bank as bank_lib
from tests.test_synthetic import check_example, compose_many, expected_text, form_config


@pytest.fixture(scope="module")
def bank(bank_cache_dir):
  from configs import tiny

  return bank_lib.load_word_bank(tiny.get_config().data, "train", cache_dir=bank_cache_dir)


def page_config(config, **overrides):
  """Full pages of several lines: more words than the canvas holds."""
  overrides = dict(image_height=160, words_per_form=(24, 24), max_len=200) | overrides
  return form_config(config, **overrides)


def check_boxes_hold_the_ink(bank, example):
  """Word boxes inside the canvas and disjoint, each holding all of its word's ink, and no
  ink outside them."""
  n = example["num_words"]
  ink = example["ink"].astype(np.int64)
  covered = np.zeros(ink.shape, np.int32)
  for word_id, (top, left, bottom, right) in zip(example["word_ids"][:n], example["boxes"][:n]):
    assert 0 <= top < bottom <= ink.shape[0] and 0 <= left < right <= ink.shape[1]
    assert ink[top:bottom, left:right].sum() == bank.word_image(word_id).sum(dtype=np.int64)
    covered[top:bottom, left:right] += 1
  assert covered.max() == 1, "two words overlap"
  assert not ink[covered == 0].any(), "ink outside the words"


def ink_rows(bank, example, k):
  """{canvas column: canvas row where the column of word k's image starts} for its inked
  columns, found by matching the canvas column against the image's."""
  top, left, bottom, right = example["boxes"][k]
  image = bank.word_image(example["word_ids"][k])
  word_height = image.shape[0]
  rows = {}
  for c in np.flatnonzero(image.any(axis=0)):
    column = example["ink"][top:bottom, left + c]
    starts = [
      s
      for s in range(bottom - top - word_height + 1)
      if (column[s : s + word_height] == image[:, c]).all()
      and column.sum(dtype=np.int64) == image[:, c].sum(dtype=np.int64)
    ]
    assert len(starts) == 1, f"column {c} of word {k} is not drawn whole"
    rows[left + c] = top + starts[0]
  return rows


def line_tops(example):
  return example["line_boxes"][: example["num_lines"], 0]


def test_fields_absent_or_zero_compose_the_same_examples(tiny_config, bank):
  for level in ("form", "line"):
    absent = form_config(tiny_config.copy_and_resolve_references(), level=level)
    del absent.data.line_gap_jitter, absent.data.line_tilt, absent.data.crossed_out
    del absent.data.short_lines
    zero = form_config(
      tiny_config.copy_and_resolve_references(),
      level=level,
      line_gap_jitter=0.0,
      line_tilt=0.0,
      crossed_out=0.0,
      short_lines=0.0,
    )
    _, first = compose_many(bank, absent.data, num=8, seed=11)
    _, second = compose_many(bank, zero.data, num=8, seed=11)
    for a, b in zip(first, second):
      assert a.keys() == b.keys()
      for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_line_gap_jitter_spaces_lines_unevenly_and_cuts_nothing(tiny_config, bank):
  composer, even = compose_many(bank, page_config(tiny_config.copy_and_resolve_references()).data)
  for example in even:
    check_example(bank, composer.layout, example)
    assert len(set(np.diff(line_tops(example)))) <= 1

  # No margins: a line the fit let through too low would lose its bottom rows.
  config = page_config(tiny_config, line_gap_jitter=0.5, page_margin=(0, 0))
  composer, examples = compose_many(bank, config.data)
  uneven = 0
  for example in examples:
    # Exactly the words of the text, each whole and inside the canvas, no other ink.
    check_example(bank, composer.layout, example)
    check_boxes_hold_the_ink(bank, example)
    uneven += len(set(np.diff(line_tops(example)))) > 1
  assert uneven >= len(examples) // 2
  assert min(e["num_lines"] for e in examples) >= 3
  # Pages are full: the lines that do not fit were dropped with their words.
  assert min(e["num_words"] for e in examples) < config.data.words_per_form[0]


def test_line_tilt_moves_the_ink_of_a_line_along_it(tiny_config, bank):
  # No margins: a line the fit let through too low would lose its bottom rows.
  config = page_config(tiny_config, line_tilt=3.0, page_margin=(0, 0))
  composer, examples = compose_many(bank, config.data)
  word_height = composer.layout.word_height
  rises = []
  for example in examples:
    check_boxes_hold_the_ink(bank, example)
    n, num_lines = example["num_words"], example["num_lines"]
    boxes, line_boxes = example["boxes"][:n], example["line_boxes"][:num_lines]
    assert num_lines >= 3
    assert (line_boxes[1:, 0] >= line_boxes[:-1, 2]).all(), "lines overlap"
    assert (line_boxes[:, 2] <= composer.layout.canvas_height).all()
    assert (example["content_box"] == [*boxes[:, :2].min(0), *boxes[:, 2:].max(0)]).all()

    rows = {}  # per line: canvas column -> row of the image's top there
    line_of = []
    for k in range(n):
      (line,) = np.flatnonzero(
        (line_boxes[:, 0] <= boxes[k, 0]) & (boxes[k, 2] <= line_boxes[:, 2])
      )
      line_of.append(line)
      rows.setdefault(line, {}).update(ink_rows(bank, example, k))
    for line_rows in rows.values():
      columns = sorted(line_rows)
      rises.append(abs(line_rows[columns[-1]] - line_rows[columns[0]]))

    # A glyph centre sits GLYPH_CENTRE_FRACTION of a word height below its
    # column's ink top, inside its word's box; a space, line break or <EOS> on
    # the line of the word before.
    text, position = example["text"].decode(), 0
    centres = example["glyph_centres"]
    for k in range(n):
      top, left, bottom, right = boxes[k]
      word_rows = ink_rows(bank, example, k)
      if k and text[position] in " \n":
        line_top, _, line_bottom, _ = line_boxes[line_of[k - 1]]
        assert line_top <= centres[position, 0] < line_bottom
        position += 1
      for _ in str(bank.texts[example["word_ids"][k]]):
        y, x = centres[position]
        assert top <= y < bottom and left <= x < right
        column = int(np.floor(x))
        if column in word_rows:
          expected = word_rows[column] + composer_lib.GLYPH_CENTRE_FRACTION * word_height
          assert y == pytest.approx(expected)
        position += 1
    assert position == len(text)
    line_top, _, line_bottom, _ = line_boxes[line_of[n - 1]]
    assert line_top <= centres[position, 0] < line_bottom
  assert max(rises) > 1, "no line tilts"


@pytest.mark.parametrize("level", ["line", "word"])
def test_steepest_tilt_keeps_lines_and_words_on_the_canvas(tiny_config, bank, level):
  # A 160 px line at 10 degrees rises 28 px: more than the canvas's 16 spare rows.
  config = form_config(tiny_config, level=level, line_tilt=composer_lib.MAX_LINE_TILT)
  config.data.image_height = 32
  composer, examples = compose_many(bank, config.data)
  heights = []
  for example in examples:
    check_boxes_hold_the_ink(bank, example)
    for k in range(example["num_words"]):
      ink_rows(bank, example, k)
    top, _, bottom, _ = example["content_box"]
    heights.append(bottom - top)
  assert max(heights) > composer.layout.word_height + 1


@pytest.mark.parametrize(
  "field, value",
  [
    ("line_gap_jitter", -0.1),
    ("line_gap_jitter", 1.5),
    ("line_tilt", -1.0),
    ("line_tilt", 12.0),
    ("crossed_out", -0.1),
    ("crossed_out", 0.7),
    ("short_lines", -0.1),
    ("short_lines", 0.6),
  ],
)
def test_out_of_range_line_options_are_a_clear_error(tiny_config, field, value):
  config = form_config(tiny_config, **{field: value})
  with pytest.raises(ValueError, match=rf"data\.{field}={value}"):
    composer_lib.resolve_layout(config.data, int(config.data.word_height))


@pytest.mark.parametrize("line_tilt", [0.0, 3.0])
def test_crossed_out_words_are_struck_through_and_left_out_of_the_text(
  tiny_config, bank, line_tilt
):
  config = page_config(tiny_config, crossed_out=0.4, line_tilt=line_tilt)
  composer, examples = compose_many(bank, config.data)
  struck = total = 0
  for example in examples:
    n = example["num_words"]
    crossed = example["crossed_out"][:n]
    assert not example["crossed_out"][n:].any()
    boxes, word_ids = example["boxes"][:n], example["word_ids"][:n]
    # The text is the words left standing, with the separators the layout gives them.
    line_boxes = example["line_boxes"][: example["num_lines"]]
    lines = [
      next(i for i, (top, _, bottom, _) in enumerate(line_boxes) if top <= box[0] < bottom)
      for box in boxes
    ]
    texts = [str(bank.texts[i]) for i in word_ids] + [""]
    for k in np.flatnonzero(crossed):
      assert k > 0 and lines[k] == lines[k - 1], "a line starts with a struck word"
      assert composer_lib.PUNCTUATION.isdisjoint({texts[k], texts[k + 1]})
    text = example["text"].decode()
    assert text == expected_text(bank, word_ids, lines, crossed)
    assert example["num_lines"] == text.count("\n") + 1
    # Guided attention has a centre for each character and <EOS>, and none past them.
    assert (example["glyph_centres"].any(axis=1)).sum() == len(text) + 1
    # The struck words keep their ink and gain a stroke; the others are drawn as they are.
    ink = example["ink"].astype(np.int64)
    covered = np.zeros(ink.shape, bool)
    for k, (top, left, bottom, right) in enumerate(boxes):
      covered[top:bottom, left:right] = True
      drawn = ink[top:bottom, left:right].sum()
      written = bank.word_image(word_ids[k]).sum(dtype=np.int64)
      if crossed[k]:
        # A stroke at least 1.5 px thick across the word's width.
        assert drawn - written >= (right - left) * 255 // 2
      else:
        assert drawn == written
    assert not ink[~covered].any(), "ink outside the words"
    struck += crossed.sum()
    total += n
  assert 0.1 * total < struck < 0.4 * total


def test_short_lines_end_lines_early_and_keep_the_words(tiny_config, bank):
  full = page_config(tiny_config.copy_and_resolve_references())
  _, baseline = compose_many(bank, full.data, seed=5)
  composer, examples = compose_many(bank, page_config(tiny_config, short_lines=0.4).data, seed=5)
  earlier = 0
  for example, base in zip(examples, baseline):
    check_example(bank, composer.layout, example)
    check_boxes_hold_the_ink(bank, example)
    # The same words in the same order, fewer of them on each line.
    n = example["num_words"]
    assert 1 <= n <= base["num_words"]
    np.testing.assert_array_equal(example["word_ids"][:n], base["word_ids"][:n])
    base_lines = len(set(base["boxes"][:n, 0]))
    assert example["num_lines"] >= base_lines
    earlier += example["num_lines"] > base_lines
    # Punctuation stays on its word's line.
    lines = example["text"].decode().split("\n")
    assert not any(line[:1] in composer_lib.PUNCTUATION for line in lines)
  assert earlier >= len(examples) // 2


def test_short_lines_leave_lone_lines_whole(tiny_config, bank):
  line = form_config(tiny_config.copy_and_resolve_references(), level="line")
  _, whole = compose_many(bank, line.data, num=8, seed=3)
  config = form_config(tiny_config, level="line", short_lines=composer_lib.MAX_SHORT_LINES)
  composer, examples = compose_many(bank, config.data, num=8, seed=3)
  assert composer.layout.short_lines == 0
  for a, b in zip(whole, examples):
    assert b["num_lines"] == 1
    np.testing.assert_array_equal(a["ink"], b["ink"])
    assert a["text"] == b["text"]
