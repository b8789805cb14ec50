"""Preparing a real scan: white paper, the text cropped, the writing at the training size."""

import dataclasses
import json

import numpy as np
from PIL import Image, ImageDraw
import pytest
from scipy import ndimage

from fphtr_jax import line_location, pixels
from input_pipeline import scan
from input_pipeline.wordbank import fonts as fonts_lib
from input_pipeline.wordbank import rendering
from input_pipeline.wordbank import writers as writers_lib

WORDS = "the quick brown fox jumps over a lazy dog while models read pages of text".split()


def _strokes(height: int, width: int, top: int, left: int, rows: int = 3) -> np.ndarray:
  """bool [height, width]: `rows` lines of zigzag strokes 4 px wide from (top, left)."""
  image = Image.new("L", (width, height), 0)
  draw = ImageDraw.Draw(image)
  for row in range(rows):
    y = top + 50 * row
    for k in range(6):
      x = left + 50 * k
      draw.line([(x, y), (x + 15, y + 30), (x + 30, y)], fill=255, width=4)
  return np.asarray(image) > 0


def _lighting(height: int, width: int) -> np.ndarray:
  """A grey paper lit unevenly: 0.5 on the left to 0.9 on the right, darker at the bottom."""
  return np.linspace(0.5, 0.9, width)[None, :] * np.linspace(1.0, 0.92, height)[:, None]


def _written_page(word_height: int, num_lines: int, font_name: str, seed: int = 0) -> np.ndarray:
  """Grey [h, w]: lines of five words of an average writer at `word_height`, composed
  like the synthetic pages (gaps and margins of the default config, scaled)."""
  rng = np.random.default_rng(seed)
  font = next(f for f in fonts_lib.list_default_fonts() if f.name == font_name)
  metrics = rendering.font_metrics(font, "".join(sorted(set("".join(WORDS)))))
  style = writers_lib.sample_writer_style(font, metrics, rng)
  style = dataclasses.replace(style, x_height=0.26, ink=0.9)  # the middle of the writers
  unit = word_height / 40
  lines = []
  for _ in range(num_lines):
    words = [
      rendering.render_word(str(rng.choice(WORDS)), style, word_height, rng, metrics)
      for _ in range(5)
    ]
    gap = np.zeros((word_height, int(16 * unit)), np.uint8)
    lines.append(np.concatenate([part for word in words for part in (word, gap)], axis=1))
  margin, line_gap = int(60 * unit), int(30 * unit)
  width = max(line.shape[1] for line in lines) + 2 * margin
  height = num_lines * (word_height + line_gap) + 2 * margin
  ink = np.zeros((height, width), np.uint8)
  for index, line in enumerate(lines):
    top = margin + index * (word_height + line_gap)
    ink[top : top + word_height, margin : margin + line.shape[1]] = line
  return 1.0 - ink / 255.0


# --- Paper --------------------------------------------------------------------------------------


def test_flatten_paper_whitens_uneven_grey_paper_and_blackens_grey_ink():
  height, width = 260, 400
  strokes = _strokes(height, width, 40, 40, rows=4)
  noise = np.random.default_rng(0).normal(0.0, 0.015, (height, width))
  grey = np.clip(_lighting(height, width) * np.where(strokes, 0.5, 1.0) + noise, 0, 1)
  assert grey[strokes].max() > grey[~strokes].min()  # no one grey level splits ink and paper
  flat = scan.flatten_paper(grey)
  assert flat.shape == grey.shape and flat.dtype == np.float32
  paper = ~ndimage.binary_dilation(strokes, iterations=2)
  assert np.percentile(flat[paper], 5) > 0.95
  assert np.percentile(flat[strokes], 99) < 0.3 and flat[strokes].mean() < 0.15
  np.testing.assert_array_equal(scan.ink_mask(flat), flat < scan.INK_THRESHOLD)
  assert (scan.ink_mask(flat) == strokes).mean() > 0.98


def test_a_blank_page_stays_blank():
  rng = np.random.default_rng(1)
  for paper in (np.full((200, 300), 0.7), _lighting(200, 300)):
    grey = np.clip(paper + rng.normal(0.0, 0.02, paper.shape), 0, 1)
    flat = scan.flatten_paper(grey)
    assert not scan.ink_mask(flat).any() and flat.min() > 0.9
    assert scan.text_box(flat, 10) == (0, 0, 200, 300)
    assert scan.text_height(flat) is None
  np.testing.assert_array_equal(scan.flatten_paper(np.zeros((50, 60))), 1.0)  # all dark


# --- The text -----------------------------------------------------------------------------------


def test_text_box_finds_the_text_and_ignores_specks_and_scanner_edges():
  height, width = 400, 600
  strokes = _strokes(height, width, 150, 200)  # rows 150..~252, columns 200..~482
  rows, cols = np.flatnonzero(strokes.any(axis=1)), np.flatnonzero(strokes.any(axis=0))
  expected = (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1)
  grey = np.where(strokes, 0.1, 1.0)
  for y, x in ((10, 10), (380, 580), (30, 500), (300, 40)):  # specks of 1 to 2 px
    grey[y : y + 2, x : x + 1 + (y % 2)] = 0.0
  grey[:, :3] = 0.2  # a dark scanner edge down the left side
  grey[397:, :] = 0.3  # and along the bottom
  flat = scan.flatten_paper(grey)
  box = scan.text_box(flat)
  assert np.abs(np.subtract(box, expected)).max() <= 2, (box, expected)
  top, left, bottom, right = scan.text_box(flat, margin=20)
  assert (top, left, bottom, right) == (box[0] - 20, box[1] - 20, box[2] + 20, box[3] + 20)
  assert scan.text_box(flat, margin=1000) == (0, 0, height, width)  # clipped to the image
  assert scan.text_box(np.ones((30, 40))) == (0, 0, 30, 40)  # no text: all of it


@pytest.mark.parametrize("word_height", [20, 80])
def test_the_automatic_scale_brings_the_writing_to_the_word_height(word_height):
  target = 40
  for font_name in ("Kalam-Regular", "hershey-scripts"):
    for num_lines in (1, 4):
      page = _written_page(word_height, num_lines, font_name)
      height = scan.text_height(scan.flatten_paper(page))
      written = scan.auto_scale(height, target) * word_height  # the word height after scaling
      assert 0.75 * target < written < 1.25 * target, (font_name, num_lines, height)


def test_the_automatic_scale_stays_in_its_range():
  assert scan.auto_scale(None, 40) == 1.0
  assert scan.auto_scale(1.0, 40) == scan.SCALE_RANGE[1]
  assert scan.auto_scale(1e5, 40) == scan.SCALE_RANGE[0]


def test_prepare_crops_to_the_text_and_picks_the_scale():
  page = _written_page(80, 2, "Kalam-Regular")
  grey = np.clip(_lighting(*page.shape) * page, 0, 1)
  prepared = scan.prepare(grey, 40, (256, 512))
  top, left, bottom, right = prepared.box
  ink = scan.text_box(scan.flatten_paper(grey))
  margin = np.array([ink[0] - top, ink[1] - left, bottom - ink[2], right - ink[3]])
  # Half a word height (80 px) around the ink, unless the image ends first.
  assert ((margin >= 0) & (margin <= 60)).all() and margin.max() >= 25, margin
  assert prepared.grey.shape == (bottom - top, right - left)
  assert 0.4 < prepared.scale < 0.63 and prepared.text_height > 0
  fits = min(256 / (bottom - top), 512 / (right - left))
  assert prepared.effective_scale == pytest.approx(min(prepared.scale, fits))
  forced = scan.prepare(grey, 40, (256, 512), scale=0.25)
  assert forced.scale == 0.25 and forced.box == prepared.box
  assert scan.prepare(grey, 40, (64, 128), scale=0.25).effective_scale < 0.25  # shrunk to fit
  with pytest.raises(ValueError, match="above 0"):
    scan.prepare(grey, 40, (256, 512), scale=0.0)


# --- predict ------------------------------------------------------------------------------------


def test_predict_prepares_a_scan(tmp_path):
  from fphtr_jax import predict

  page = _written_page(80, 2, "Kalam-Regular")
  padded = np.pad(page, ((100, 20), (30, 150)), constant_values=1.0)  # wide margins
  grey = np.clip(_lighting(*padded.shape) * padded, 0, 1)
  path = str(tmp_path / "scan.png")
  Image.fromarray(np.round(grey * 255).astype(np.uint8)).save(path)
  file_h, file_w = grey.shape
  height, width = 512, 1024  # large enough not to shrink the image

  auto = predict.load_page(path, height, width, "auto", word_height=40)
  top, left, bottom, right = auto.crop
  assert auto.original_size == (file_h, file_w) and auto.crop_box == auto.crop
  assert top > 100 and left > 30 and bottom < file_h - 20 and right < file_w - 150
  assert 0.4 < auto.scale < 0.63 and auto.text_height > 0
  assert abs(auto.height - (bottom - top) * auto.scale) <= 1
  assert abs(auto.width - (right - left) * auto.scale) <= 1
  # The text on white paper at the canvas's top-left.
  canvas = pixels.to_grey(auto.image)
  assert canvas[: auto.height, : auto.width].min() < 0.2
  np.testing.assert_allclose(canvas[auto.height :], 1.0, atol=1e-5)

  forced = predict.load_page(path, height, width, "0.5", word_height=40)
  assert forced.scale == 0.5 and forced.crop == auto.crop
  assert predict.load_page(path, height, width, 0.5).scale == 0.5  # no word height needed

  plain = predict.load_page(path, height, width, 0.5, prepare=False)
  expected, placed_h, placed_w = predict.place_on_canvas(
    predict.read_grey(path), height, width, 0.5
  )
  np.testing.assert_array_equal(plain.image, expected)
  assert (plain.height, plain.width) == (placed_h, placed_w)
  assert plain.crop_box == (0, 0, file_h, file_w) and plain.scale == 0.5
  unprepared = predict.load_page(path, height, width, "auto", word_height=40, prepare=False)
  assert (unprepared.scale, unprepared.text_height) == (auto.scale, auto.text_height)

  with pytest.raises(ValueError, match="word height"):
    predict.load_page(path, height, width, "auto")
  assert [predict.parse_scale(s) for s in ("auto", "0.5", 2)] == ["auto", 0.5, 2.0]
  assert all(predict.parse_scale(s) is None for s in ("0", "-1", "inf", "big"))


def test_json_output_says_how_the_image_was_placed():
  from fphtr_jax import confidence, predict

  text = confidence.Transcription(
    text="ab", char_probs=[0.9] * 2, confidence=0.9, min_confidence=0.9, log_prob=-0.2, lines=[]
  )
  page = predict.Page(
    "scan.png",
    np.zeros((4, 4, 1)),
    2,
    3,
    (100, 200),
    crop=(10, 20, 60, 95),
    scale=0.04,
    text_height=12.0,
  )
  out, _ = predict.format_result("scan.png", text, None, "json", [], page)
  result = json.loads(out)
  assert (result["scale"], result["text_height"], result["crop"]) == (0.04, 12.0, [20, 10, 95, 60])


def test_line_locations_shift_into_the_image_a_crop_was_cut_from():
  word = line_location.WordLocation("ab", (1, 2, 5, 8), [(1, 2), (4, 2), (4, 7), (1, 7)], (0, 2))
  line = line_location.LineLocation(
    (1, 2, 9, 8), [(1, 2), (8, 2), (8, 7), (1, 7)], [(1, 6), (8, 6)], [word]
  )
  moved = line.shifted(dx=100, dy=10)
  assert moved.box == (101, 12, 109, 18)
  assert moved.polygon == [(101, 12), (108, 12), (108, 17), (101, 17)]
  assert moved.baseline == [(101, 16), (108, 16)]
  assert moved.words == [
    line_location.WordLocation(
      "ab", (101, 12, 105, 18), [(101, 12), (104, 12), (104, 17), (101, 17)], (0, 2)
    )
  ]
  assert line.box == (1, 2, 9, 8)  # the original is unchanged
