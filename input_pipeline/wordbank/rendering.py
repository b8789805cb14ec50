"""Glyph rendering, TTF and Hershey: one word as one writer writes it (`render_word`).

Every crop has height `word_height` and its baseline at the same row
(`baseline_row(word_height)`), so crops pasted side by side at the same top
row line up like handwriting on a ruled line. Ink is darkness (0 = paper,
255 = full ink): paste with max() onto a blank page, then invert.

Every word adds small variations of its own (size, slant, baseline, ink) to
its writer's style; a word with a character its font has no glyph for is
refused.
"""

import dataclasses
import functools
import math

import numpy as np
from PIL import Image, ImageDraw

from input_pipeline.wordbank import fonts as fonts_lib
from input_pipeline.wordbank import writers

# Row of the baseline, as a fraction of word_height: room above for
# ascenders and capitals, below for descenders.
BASELINE_FRACTION = 0.72
# Glyphs are drawn, slanted and warped at this multiple of the output
# resolution, then box-filtered down: smooth edges from integer operations.
_SUPERSAMPLE = 3
# Cap line to descender line of the Hershey script fonts, in font units.
_HERSHEY_UNITS_PER_EM = 33
# Hershey script letters are about 1.6 times as wide, for their height, as
# those of the handwriting TTFs (and of most people's writing).
_HERSHEY_WIDTH = 0.65


def baseline_row(word_height: int) -> int:
  """Row of every crop in which the letters of a word sit (their bottom row)."""
  return int(round(BASELINE_FRACTION * word_height))


def _ttf_glyph_mask(font, char: str) -> tuple:
  """(size, bytes) of `char`'s rendering: equal for equal glyphs."""
  mask = font.getmask(char)
  return mask.size, bytes(mask)


@functools.cache
def font_metrics(font: fonts_lib.FontSource, charset: str) -> fonts_lib.FontMetrics:
  """Which `charset` characters `font` really draws, and its glyph extents."""
  if font.hershey is not None:
    glyphs, base = fonts_lib.hershey_font(font.hershey)
    coverage = frozenset(c for c in charset if c in glyphs and glyphs[c].strokes)

    def extent(c):
      ys = [y for stroke in glyphs[c].strokes for _, y in stroke]
      return base - min(ys), max(ys) - base
  else:
    reference_size = 100
    ttf = fonts_lib.truetype(font.path, reference_size, None)
    # A character without a glyph renders as .notdef (or nothing), exactly
    # like a private-use code point that no handwriting font defines.
    notdef = {_ttf_glyph_mask(ttf, c) for c in ("\U0010fffd", "\uf8ff")}
    coverage = set()
    for c in charset:
      mask = _ttf_glyph_mask(ttf, c)
      if mask not in notdef and mask[0][0] > 0 and mask[0][1] > 0:
        coverage.add(c)
    coverage = frozenset(coverage)

    def extent(c):
      _, top, _, bottom = ttf.getbbox(c, anchor="ls")
      return -top / reference_size, bottom / reference_size

  def tops(chars):
    return [extent(c)[0] for c in chars if c in coverage]

  tall = tops(c for c in charset if c.isalnum())
  # The 90th percentile, not the max: one swash capital should not shrink
  # every word; the few words that overflow are shrunk one by one.
  ascent = float(np.percentile(tall, 90)) if tall else 1.0
  short = tops("acemnorsuvwxz")
  x_height = float(np.median(short)) if short else 0.5 * ascent
  metrics = fonts_lib.FontMetrics(coverage=coverage, ascent=ascent, x_height=x_height, joined=False)
  return dataclasses.replace(metrics, joined=_is_joined(font, metrics))


def _is_joined(font: fonts_lib.FontSource, metrics: fonts_lib.FontMetrics) -> bool:
  """Whether the font connects its letters, like cursive handwriting."""
  if not set("mnu") <= metrics.coverage:
    return False
  pen = 0.04 if font.hershey is not None else 0.0
  style = writers.WriterStyle(
    font=font,
    x_height=0.25,
    width=1.0,
    slant=0.0,
    stroke=pen,
    spacing=0.0,
    ink=1.0,
    ink_texture=0.0,
    wobble=0.0,
    wobble_period=1.0,
  )
  image = _draw_word("mnunm", style, 48, metrics, 0.25, 1.0, 0.0, 0.0, 0.0, np.zeros((5, 3)))
  ink = image.max(axis=0)
  columns = np.flatnonzero(ink > 0.02)
  # Joined: ink in every column from the first letter to the last.
  return bool(len(columns) and ink[columns[0] : columns[-1] + 1].min() > 0.1)


def _ttf_layout(text, style, scale, spacing, stroke, jitter):
  """(ink bbox around the pen origin on the baseline, draw function).

  jitter: float [len(text), 3], standard normal; with `style.distortion` > 0,
  each letter's size and height vary by it (no two letters alike).
  """
  if style.distortion > 0:
    fonts = [
      fonts_lib.truetype(
        style.font.path, max(1, round(scale * (1 + 0.5 * style.distortion * size))), style.weight
      )
      for size, _, _ in jitter
    ]
    advances = [f.getlength(c) + spacing for f, c in zip(fonts, text)]
    xs = np.concatenate([[0.0], np.cumsum(advances)[:-1]])
    lifts = 0.25 * style.distortion * scale * jitter[:, 2]
  else:  # the font's own layout, kerning included
    font = fonts_lib.truetype(style.font.path, max(1, round(scale)), style.weight)
    fonts = [font] * len(text)
    xs = [font.getlength(text[:i]) + i * spacing for i in range(len(text))]
    lifts = [0] * len(text)
  boxes = [f.getbbox(c, anchor="ls", stroke_width=stroke) for f, c in zip(fonts, text)]
  bbox = (
    min(x + b[0] for x, b in zip(xs, boxes)),
    min(b[1] - y for y, b in zip(lifts, boxes)),
    max(x + b[2] for x, b in zip(xs, boxes)),
    max(b[3] - y for y, b in zip(lifts, boxes)),
  )

  def draw(canvas, x0, y0):
    for x, y, f, c in zip(xs, lifts, fonts, text):
      canvas.text(
        (x0 + x, y0 - y), c, font=f, anchor="ls", fill=255, stroke_width=stroke, stroke_fill=255
      )

  return bbox, draw


def _smooth_field(rng, shape, cell: float, std: float) -> np.ndarray:
  """float32 [2, *shape]: a random displacement, smooth over `cell` pixels."""
  height, width = shape
  grid = (math.ceil(height / cell) + 3, math.ceil(width / cell) + 3)
  field = []
  for knots in std * rng.standard_normal((2, *grid)):
    upsampled = Image.fromarray(knots.astype(np.float32), mode="F").resize(
      (round((grid[1] - 1) * cell), round((grid[0] - 1) * cell)), Image.Resampling.BICUBIC
    )
    field.append(np.asarray(upsampled)[:height, :width])
  return np.stack(field)


def _sample(image: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
  """`image` at fractional (rows, cols), bilinear; 0 outside."""
  padded = np.pad(image, 1)
  rows = np.clip(rows + 1, 0, padded.shape[0] - 1.001)
  cols = np.clip(cols + 1, 0, padded.shape[1] - 1.001)
  r0, c0 = np.floor(rows).astype(int), np.floor(cols).astype(int)
  fr, fc = rows - r0, cols - c0
  top = padded[r0, c0] * (1 - fc) + padded[r0, c0 + 1] * fc
  bottom = padded[r0 + 1, c0] * (1 - fc) + padded[r0 + 1, c0 + 1] * fc
  return top * (1 - fr) + bottom * fr


def _hershey_layout(text, style, scale, spacing, pen, jitter):
  """(ink bbox around the pen origin on the baseline, draw function).

  jitter: float [len(text), 3], standard normal: per-letter size, slant and
  height variation, because a stroke font drawn exactly looks typeset.
  """
  glyphs, base = fonts_lib.hershey_font(style.font.hershey)
  strokes, x = [], 0.0
  for c, (size, slant, lift) in zip(text, jitter):
    glyph = glyphs[c]
    s = scale * (1 + 0.04 * size)
    for stroke in glyph.strokes:
      strokes.append(
        [
          (
            x + ((gx - glyph.left_offset) + 0.05 * slant * (base - gy)) * s * _HERSHEY_WIDTH,
            (gy - base + 0.4 * lift) * s,
          )
          for gx, gy in stroke
        ]
      )
    x += glyph.char_width * s * _HERSHEY_WIDTH + spacing
  xs = [p[0] for s in strokes for p in s]
  ys = [p[1] for s in strokes for p in s]
  r = pen / 2
  bbox = (min(xs) - r, min(ys) - r, max(xs) + r, max(ys) + r)
  width = max(1, round(pen))

  def draw(canvas, x0, y0):
    for stroke in strokes:
      points = [(x0 + px, y0 + py) for px, py in stroke]
      if len(points) > 1:
        canvas.line(points, fill=255, width=width, joint="curve")
      # Round pen tips.
      for px, py in (points[0], points[-1]):
        canvas.ellipse((px - r, py - r, px + r, py + r), fill=255)

  return bbox, draw


def _draw_word(
  text, style, word_height, metrics, x_height, width_scale, slant, shift, phase, jitter, rng=None
):
  """float32 [word_height, W] ink coverage in [0, 1], before cropping."""
  ss = _SUPERSAMPLE
  height = word_height * ss
  base_y = (baseline_row(word_height) + 1) * ss  # letters end just above
  wobble = style.wobble * height
  margin = wobble + abs(shift) + 1
  room_up = max(base_y - margin, 1.0)
  room_down = max(height - base_y - margin, 1.0)
  # Writers differ in x-height, but tall letters must fit above the baseline.
  scale = min(x_height * height / metrics.x_height, room_up / metrics.ascent)
  if style.font.hershey is not None:
    pen = max(1.0, style.stroke * height)
    layout = lambda s: _hershey_layout(  # pylint: disable=g-long-lambda
      text, style, s, style.spacing * s * _HERSHEY_UNITS_PER_EM, pen, jitter
    )
  else:
    outline = round(style.stroke * height / 2)
    layout = lambda s: _ttf_layout(  # pylint: disable=g-long-lambda
      text, style, s, style.spacing * s, outline, jitter
    )
  bbox, draw = layout(scale)
  # A swash capital or a tall mark would be cut off: shrink just this word.
  for _ in range(2):
    if -bbox[1] <= room_up:
      break
    scale *= 0.98 * room_up / -bbox[1]
    bbox, draw = layout(scale)

  depth = max(bbox[3], 1.0)  # ink below the baseline
  below = height - base_y
  source_below = max(below, math.ceil(below * depth / room_down))
  pad = math.ceil(abs(slant) * (base_y + source_below) / width_scale) + 2 * ss
  drawn_width = math.ceil(bbox[2] - bbox[0]) + 2 * pad
  image = Image.new("L", (drawn_width, base_y + source_below), 0)
  draw(ImageDraw.Draw(image), pad - bbox[0], base_y)
  # Narrow or widen the letters, and slant them about the baseline (so the
  # baseline stays put): x' = width_scale * x + slant * (base_y - y).
  width = math.ceil(drawn_width * width_scale)
  width += -width % ss
  image = image.transform(
    (width, image.height),
    Image.Transform.AFFINE,
    (1 / width_scale, slant / width_scale, -slant * base_y / width_scale, 0, 1, 0),
    resample=Image.Resampling.BILINEAR,
  )
  if source_below > below:
    # Long descenders: squeeze what is below the baseline into the room left.
    squeezed = image.crop((0, base_y, width, base_y + source_below)).resize(
      (width, below), Image.Resampling.BILINEAR
    )
    image = image.crop((0, 0, width, height))
    image.paste(squeezed, (0, base_y))
  coverage = np.asarray(image, np.float32)[:height] / 255
  # Wavy baseline: shift every column up or down by a smooth offset.
  columns = np.arange(width)
  offsets = shift + wobble * np.sin(2 * np.pi * columns / (style.wobble_period * height) + phase)
  if style.distortion > 0:
    # Bend the letters: sample the ink through a smooth random displacement.
    x_height_px = x_height * height
    dy, dx = _smooth_field(rng, (height, width), x_height_px, style.distortion * x_height_px)
    rows = np.arange(height)[:, None] - offsets[None, :] + dy
    coverage = _sample(coverage, rows, columns[None, :] + dx)
  else:
    rows = np.arange(height)[:, None] - np.round(offsets).astype(int)[None, :]
    inside = (rows >= 0) & (rows < height)
    coverage = np.where(inside, coverage[np.clip(rows, 0, height - 1), columns], 0)
  return coverage.reshape(word_height, ss, width // ss, ss).mean(axis=(1, 3))


def render_word(
  text: str,
  style: writers.WriterStyle,
  word_height: int,
  rng: np.random.Generator,
  metrics: fonts_lib.FontMetrics | None = None,
) -> np.ndarray:
  """Renders one word as `style`'s writer would write it this time.

  Args:
    text: the word; every character must be in the font's coverage.
    style: the writer.
    word_height: height of the crop in pixels.
    rng: draws this word's own variation (size, slant, baseline, ink).
    metrics: `font_metrics(style.font, charset)`; computed when None.

  Returns:
    uint8 [word_height, width], 0 = paper, 255 = full ink, letters sitting on
    row `baseline_row(word_height)`; width = ink extent plus a pixel a side.
  """
  if metrics is None:
    metrics = font_metrics(style.font, "".join(sorted(set(text))))
  missing = set(text) - metrics.coverage
  if missing:
    raise ValueError(
      f"Font {style.font.name} has no glyph for {''.join(sorted(missing))!r} in {text!r}."
    )
  x_height = style.x_height * (1 + 0.03 * rng.standard_normal())
  width_scale = style.width * (1 + 0.03 * rng.standard_normal())
  slant = style.slant + 0.03 * rng.standard_normal()
  shift = np.clip(
    0.008 * word_height * _SUPERSAMPLE * rng.standard_normal(), -_SUPERSAMPLE, _SUPERSAMPLE
  )
  phase = rng.uniform(0, 2 * np.pi)
  ink = np.clip(style.ink * (1 + 0.06 * rng.standard_normal()), 0.35, 1.0)
  jitter = rng.standard_normal((len(text), 3))
  coverage = _draw_word(
    text, style, word_height, metrics, x_height, width_scale, slant, shift, phase, jitter, rng
  )

  inked = np.flatnonzero(coverage.max(axis=0) > 0.03)
  if len(inked) == 0:
    return np.zeros((word_height, 1), np.uint8)
  left, right = max(inked[0] - 1, 0), min(inked[-1] + 2, coverage.shape[1])
  coverage = coverage[:, left:right]
  # Uneven ink flow along the word, and grain; paper stays exactly 0 so that
  # crops leave no rectangles on the page.
  cells = rng.uniform(
    1 - style.ink_texture, 1, size=(2, math.ceil(coverage.shape[1] / word_height) + 2)
  )
  flow = np.asarray(
    Image.fromarray(cells.astype(np.float32), mode="F").resize(
      (coverage.shape[1], word_height), Image.Resampling.BILINEAR
    )
  )
  grain = 1 + 0.05 * rng.standard_normal(coverage.shape)
  darkness = coverage * ink * flow * grain
  return np.clip(np.round(darkness * 255), 0, 255).astype(np.uint8)
