"""Where each written line is on the page, from the decoder's cross-attention (numpy only).

The model reads the whole page with no line segmenter, but while the decoder
writes a character its cross-attention looks at that character's glyph (the
guided-attention recipes train it to). So:

1. Each token's attention peak, refined to a fraction of a cell by the
   centroid of the 3 x 3 cells around it, says where its glyph is.
2. A line's centre row is the median row of its characters' peaks;
   characters whose peak lies more than a cell row away from it looked at
   another line and are left out (their x is interpolated from their
   neighbours). The others' least-squares slope is the line's slant. The
   first and last characters' peaks, widened by half the mean character
   pitch, give the line's left and right ends.
3. The ink says how tall the line is. The line is cut into segments about
   two cells wide; in each, between the midpoints to the lines above and
   below along the slant (one cell row up and down where there is none),
   the rows holding ink are the line, and the baseline is the lowest row of
   the main body of the letters (where the ink thins out into descenders).
   A segment reaches as far up and down as its neighbours, which smooths
   the outline, and its baseline is the median of its and theirs. Without
   ink there (or without an image) a segment is one cell row tall around
   its centre.
4. Words split the line at the spaces: a word runs from half a pitch before
   its first character's peak to half a pitch after its last one.

Everything is mapped from the canvas the model read back to the original
image: the page sits at the canvas's top-left, scaled by placed size /
original size (predict's --scale and canvas fitting), and every coordinate
is clipped to the image. A page cut from a larger image (predict crops a
scan to its text) goes back into it with `LineLocation.shifted`.

Coordinates are pixels, x to the right and y down. A box is (left, top,
right, bottom) with right and bottom exclusive; polygon and baseline points
are pixel positions (x, y), inside [0, width - 1] x [0, height - 1].
"""

import dataclasses
import re

import numpy as np

from fphtr_jax import pixels

# Ink is what is darker than the paper (the page's median grey level) by more than this.
INK_CONTRAST = 0.1
# A row belongs to a line when it holds this share of the ink of the line's inkiest row
# (and at least MIN_ROW_INK: a tenth of a pixel of black ink).
INK_ROW_SHARE = 0.02
MIN_ROW_INK = 0.1
# A row is part of the letters' main body (above the baseline) at this share of the inkiest row.
BODY_ROW_SHARE = 0.35
# Segments of a line are about this many feature cells wide.
SEGMENT_CELLS = 2
MAX_SEGMENTS = 16
# The steepest slant of a line's centre taken from its characters' peaks (about 11 degrees).
MAX_SLANT = 0.2
# A word is what lies between single spaces; extra spaces stay with the word after them,
# so joining the words with " " gives the line's text back exactly.
_WORD_BREAK = re.compile(r"(?<=\S) ")


@dataclasses.dataclass
class WordLocation:
  """One word of a line: its text, box, polygon (as a line's) and the [start, end) of its
  characters in the line's text."""

  text: str
  box: tuple[int, int, int, int]
  polygon: list[tuple[int, int]]
  char_span: tuple[int, int]

  def shifted(self, dx: int, dy: int) -> "WordLocation":
    """The word moved `dx` pixels right and `dy` down."""
    return dataclasses.replace(
      self, box=_shift_box(self.box, dx, dy), polygon=_shift_points(self.polygon, dx, dy)
    )


@dataclasses.dataclass
class LineLocation:
  """Where one line is, in the original image's pixels.

  Attributes:
    box: (left, top, right, bottom), right and bottom exclusive.
    polygon: (x, y) points clockwise from the top-left: the top edge left to
      right, then the bottom edge right to left.
    baseline: (x, y) points left to right.
    words: the line's words (split at spaces), in order.
  """

  box: tuple[int, int, int, int]
  polygon: list[tuple[int, int]]
  baseline: list[tuple[int, int]]
  words: list[WordLocation]

  def shifted(self, dx: int, dy: int) -> "LineLocation":
    """The line and its words moved `dx` pixels right and `dy` down: from a crop's pixels
    to those of the image it was cut from at (left, top) = (dx, dy)."""
    return LineLocation(
      _shift_box(self.box, dx, dy),
      _shift_points(self.polygon, dx, dy),
      _shift_points(self.baseline, dx, dy),
      [word.shifted(dx, dy) for word in self.words],
    )


def _shift_box(box: tuple[int, int, int, int], dx: int, dy: int) -> tuple[int, int, int, int]:
  left, top, right, bottom = box
  return left + dx, top + dy, right + dx, bottom + dy


def _shift_points(points: list[tuple[int, int]], dx: int, dy: int) -> list[tuple[int, int]]:
  return [(x + dx, y + dy) for x, y in points]


def grid_size(canvas_shape: tuple[int, int], stride: tuple[int, int]) -> tuple[int, int]:
  """(rows, columns) of the encoder's grid over a canvas (H, W) at stride (height, width)."""
  return -(-int(canvas_shape[0]) // int(stride[0])), -(-int(canvas_shape[1]) // int(stride[1]))


def attention_peaks(attention: np.ndarray, grid: tuple[int, int], stride: tuple[int, int]):
  """Each attention row's peak, in canvas pixels.

  Args:
    attention: float32 [N, S], S = rows * columns of `grid`, row-major.
    grid: (rows, columns) of the encoder's grid.
    stride: (height, width) canvas pixels per cell.

  Returns:
    float64 [N, 2]: (y, x) of the centroid of the 3 x 3 cells around each
    row's most attended cell (cell (i, j) spans pixels [i * stride_h,
    (i + 1) * stride_h) x [j * stride_w, (j + 1) * stride_w)).
  """
  rows, cols = grid
  attention = np.asarray(attention, np.float64)
  if attention.ndim != 2 or attention.shape[1] != rows * cols:
    raise ValueError(
      f"attention of shape {attention.shape} does not fit a {rows} x {cols} grid: "
      f"expected [tokens, {rows * cols}]."
    )
  if not len(attention):
    return np.zeros((0, 2))
  maps = attention.reshape(-1, rows, cols)
  flat = np.argmax(attention, axis=1)
  peak_r, peak_c = flat // cols, flat % cols
  padded = np.pad(maps, ((0, 0), (1, 1), (1, 1)))
  offsets = np.arange(-1, 2)
  # [N, 3, 3] windows around the peaks (cells past the grid weigh 0).
  windows = padded[
    np.arange(len(maps))[:, None, None],
    (peak_r + 1)[:, None, None] + offsets[None, :, None],
    (peak_c + 1)[:, None, None] + offsets[None, None, :],
  ]
  total = np.maximum(windows.sum(axis=(1, 2)), 1e-12)
  centre_r = peak_r + (windows.sum(axis=2) * offsets).sum(axis=1) / total
  centre_c = peak_c + (windows.sum(axis=1) * offsets).sum(axis=1) / total
  return np.stack([(centre_r + 0.5) * stride[0], (centre_c + 0.5) * stride[1]], axis=1)


def ink_map(canvas: np.ndarray, placed: tuple[int, int]) -> np.ndarray:
  """float32 [placed h, placed w] in [0, 1]: how much darker than the paper each pixel is.

  canvas: float32 [H, W, 1], normalised. The paper is the page's median grey
  level (most of a page is paper); differences under INK_CONTRAST are not ink.
  """
  grey = pixels.to_grey(canvas)[: placed[0], : placed[1]]
  paper = float(np.median(grey))
  return np.clip(paper - grey - INK_CONTRAST, 0.0, 1.0) / max(paper - INK_CONTRAST, 1e-3)


def _ink_rows(ink: np.ndarray | None, top: float, bottom: float, left: float, right: float):
  """(first row, per-row ink counts) of the ink in [top, bottom) x [left, right), or None."""
  if ink is None:
    return None
  r0, r1 = max(int(np.floor(top)), 0), min(int(np.ceil(bottom)), ink.shape[0])
  c0, c1 = max(int(np.floor(left)), 0), min(int(np.ceil(right)), ink.shape[1])
  if r1 <= r0 or c1 <= c0:
    return None
  profile = ink[r0:r1, c0:c1].sum(axis=1)
  if profile.max() < MIN_ROW_INK:
    return None
  return r0, profile


def _vertical_extent(ink, centre, upper, lower, left, right, stride_h):
  """(top, bottom, baseline) of one stretch of a line, in canvas pixels (continuous)."""
  rows = _ink_rows(ink, upper, lower, left, right)
  if rows is None:  # No ink: a cell row around the centre, the baseline at its letters' foot.
    top, bottom = max(centre - stride_h / 2, upper), min(centre + stride_h / 2, lower)
    return top, bottom, top + 0.75 * (bottom - top)
  first, profile = rows
  inky = np.flatnonzero(profile >= max(MIN_ROW_INK, INK_ROW_SHARE * profile.max()))
  body = np.flatnonzero(profile >= BODY_ROW_SHARE * profile.max())
  return first + inky[0], first + inky[-1] + 1.0, first + body[-1] + 1.0


def _char_positions(peaks: np.ndarray, stride: tuple[float, float]) -> dict:
  """A line's characters from their peaks [n, 2] (y, x): centre row, slant, x of each.

  Peaks more than a cell row from the median row are outliers: their x is
  interpolated from their neighbours'. The slant is the least-squares slope
  of the other peaks' rows over their columns (none for short lines), at
  most MAX_SLANT.
  """
  stride_h, stride_w = stride
  centre = float(np.median(peaks[:, 0]))
  inlier = np.abs(peaks[:, 0] - centre) <= stride_h
  index = np.arange(len(peaks))
  xs = np.interp(index, index[inlier], peaks[inlier, 1])
  middle, slant = float(np.median(xs[inlier])), 0.0
  if inlier.sum() >= 3 and np.ptp(xs[inlier]) >= 2 * stride_w:
    slant = float(np.clip(np.polyfit(xs[inlier], peaks[inlier, 0], 1)[0], -MAX_SLANT, MAX_SLANT))
  # Characters are written left to right: a peak left of an earlier one is taken as at it.
  return dict(centre=centre, middle=middle, slant=slant, xs=np.maximum.accumulate(xs))


def _centre_at(line: dict, x):
  """A line's centre row at column(s) x."""
  return line["centre"] + line["slant"] * (np.asarray(x) - line["middle"])


def _line_tokens(attention_rows: int, line) -> tuple[np.ndarray, int | None]:
  """(attention rows of the line's characters, row of the token that ends it or None)."""
  start, stop = line.token_span
  # Row t of the attention predicted token t + 1.
  rows = np.arange(max(start - 1, 0), max(stop - 1, 0))
  rows = rows[rows < attention_rows]
  chars = rows[: len(line.text)]
  end = int(rows[len(line.text)]) if len(rows) > len(line.text) else None
  return chars, end


def locate_lines(
  attention: np.ndarray,
  transcription,
  stride: tuple[int, int],
  canvas: np.ndarray | None,
  placed: tuple[int, int],
  original: tuple[int, int],
  canvas_shape: tuple[int, int] | None = None,
) -> list[LineLocation]:
  """Locates every line of a transcription on its page.

  Args:
    attention: float32 [L - 1, S], `transcribe.cross_attention` of the page's
      decoded tokens (averaged over heads and layers); S = the encoder grid's
      rows * columns (`grid_size` of the canvas at `stride`), row-major.
    transcription: its `confidence.Transcription` (lines' texts and token spans).
    stride: (height, width) canvas pixels per grid cell (`resnet.encoder_stride`).
    canvas: float32 [H, W, 1], the normalised canvas the model read (its ink
      sets each line's height and baseline), or None to go by attention alone.
    placed: (height, width) of the page on the canvas, at its top-left.
    original: (height, width) of the original image.
    canvas_shape: (H, W) of the canvas; needed only when `canvas` is None.

  Returns:
    One LineLocation per line of `transcription.lines`, in the original
    image's pixels, clipped to it.
  """
  if canvas is not None:
    canvas_shape = canvas.shape[:2]
  if canvas_shape is None:
    raise ValueError("locate_lines needs the canvas or its shape (canvas_shape=(H, W)).")
  stride_h, stride_w = float(stride[0]), float(stride[1])
  placed_h, placed_w = int(placed[0]), int(placed[1])
  orig_h, orig_w = int(original[0]), int(original[1])
  if min(placed_h, placed_w, orig_h, orig_w) < 1:
    raise ValueError(f"placed={placed} and original={original} must be positive sizes.")
  peaks = attention_peaks(attention, grid_size(canvas_shape, stride), stride)
  # Attention past the page (on the blank canvas around it) counts as at its edge.
  peaks[:, 0] = np.clip(peaks[:, 0], 0.0, placed_h)
  peaks[:, 1] = np.clip(peaks[:, 1], 0.0, placed_w)
  ink = None if canvas is None else ink_map(canvas, (placed_h, placed_w))

  # Per line: its characters' (y, x) and its centre row.
  lines = []
  for line in transcription.lines:
    chars, end = _line_tokens(len(peaks), line)
    if len(chars):
      located = _char_positions(peaks[chars], (stride_h, stride_w))
      ends = located["xs"][[0, -1]]
    else:  # No character: where the token that ended it looked (else the page's top-left).
      y, x = peaks[end] if end is not None else (stride_h / 2, 0.0)
      located = dict(centre=float(y), middle=float(x), slant=0.0, xs=np.zeros(0))
      ends = np.array([x, x])
    xs = located["xs"]
    pitch = max(float(np.mean(np.diff(xs))) if len(xs) > 1 else stride_w, 1.0)
    left = max(ends[0] - pitch / 2, 0.0)
    right = min(max(ends[1] + pitch / 2, left + 1.0), float(placed_w))
    # Characters past the attention's rows (a shorter attention than the text) end the line.
    located["xs"] = np.concatenate([xs, np.full(len(line.text) - len(xs), ends[1])])
    lines.append(dict(located, text=line.text, pitch=pitch, lr=(left, right)))

  scale = (orig_w / placed_w, orig_h / placed_h)
  size = (orig_w, orig_h)
  locations = []
  for index, line in enumerate(lines):
    above = lines[index - 1] if index > 0 else None
    below = lines[index + 1] if index + 1 < len(lines) else None
    outline = _outline(line, above, below, ink, stride_h, stride_w)
    box, polygon, baseline = outline.in_pixels(scale, size)
    words = []
    last = len(line["xs"]) - 1
    for start, end in split_words(line["text"]):
      # From half a pitch before its first character to half a pitch after its last
      # (the empty word after a space that ends the line: at the line's end).
      a = max(line["xs"][min(start, last)] - line["pitch"] / 2, outline.xs[0])
      b = min(line["xs"][min(max(end - 1, start), last)] + line["pitch"] / 2, outline.xs[-1])
      if words:  # words do not overlap
        a = max(a, words[-1][1])
      b = max(b, a + 1.0 / scale[0])
      words.append((start, end, a, b))
    word_locations = []
    for start, end, a, b in words:
      word_box, word_polygon, _ = outline.between(a, b).in_pixels(scale, size)
      word_locations.append(
        WordLocation(line["text"][start:end], word_box, word_polygon, (start, end))
      )
    locations.append(LineLocation(box, polygon, baseline, word_locations))
  return locations


@dataclasses.dataclass
class _Outline:
  """A line's outline on the canvas (continuous pixels): vertices left to right.

  xs: the left end, the segments' middles, the right end (exclusive).
  tops, bottoms (exclusive), bases: the top, bottom and baseline at each.
  """

  xs: np.ndarray
  tops: np.ndarray
  bottoms: np.ndarray
  bases: np.ndarray

  def between(self, a: float, b: float) -> "_Outline":
    """The outline cut to [a, b]."""
    inside = (self.xs > a) & (self.xs < b)
    xs = np.concatenate([[a], self.xs[inside], [b]])
    return _Outline(xs, *(np.interp(xs, self.xs, v) for v in (self.tops, self.bottoms, self.bases)))

  def in_pixels(self, scale, size):
    """(box, polygon, baseline) in the original image: `scale` (x, y) per canvas pixel,
    `size` (width, height); right and bottom edges are exclusive, so the last
    pixel of each is one before."""
    (scale_x, scale_y), (width, height) = scale, size

    def x_at(v, exclusive=False):
      return int(np.clip(round(v * scale_x) - exclusive, 0, width - 1))

    def y_at(v, exclusive=False):
      return int(np.clip(round(v * scale_y) - exclusive, 0, height - 1))

    last = len(self.xs) - 1
    xs = [x_at(x, exclusive=i == last) for i, x in enumerate(self.xs)]
    polygon = [(x, y_at(t)) for x, t in zip(xs, self.tops)]
    polygon += [(x, y_at(b, exclusive=True)) for x, b in reversed(list(zip(xs, self.bottoms)))]
    baseline = [(x, y_at(b, exclusive=True)) for x, b in zip(xs, self.bases)]
    polygon, baseline = _dedupe(polygon), _dedupe(baseline)
    box = (
      min(p[0] for p in polygon),
      min(p[1] for p in polygon),
      max(p[0] for p in polygon) + 1,
      max(p[1] for p in polygon) + 1,
    )
    return box, polygon, baseline


def _outline(line: dict, above, below, ink, stride_h: float, stride_w: float) -> _Outline:
  """A line's outline: its segments' tops, bottoms and baselines from the ink around them."""
  left, right = line["lr"]
  num_segments = int(np.clip(round((right - left) / (SEGMENT_CELLS * stride_w)), 1, MAX_SEGMENTS))
  edges = np.linspace(left, right, num_segments + 1)
  extents = []
  for a, b in zip(edges[:-1], edges[1:]):
    middle = (a + b) / 2
    centre = float(_centre_at(line, middle))  # the segment follows the line's slant
    # Halfway to the neighbouring lines (lines out of order do not bound each other).
    upper, lower = centre - stride_h, centre + stride_h
    if above is not None and _centre_at(above, middle) < centre:
      upper = (float(_centre_at(above, middle)) + centre) / 2
    if below is not None and _centre_at(below, middle) > centre:
      lower = (float(_centre_at(below, middle)) + centre) / 2
    extents.append(_vertical_extent(ink, centre, upper, lower, a, b, stride_h))
  tops, bottoms, bases = (np.array([e[k] for e in extents]) for k in range(3))
  # Each segment reaches as far up and down as its neighbours: a smoother outline that
  # keeps the ascenders and descenders near a segment's edge.
  tops, bottoms = _with_neighbours(tops, np.min), _with_neighbours(bottoms, np.max)
  # A segment full of descenders would pull the baseline down on its own.
  bases = _with_neighbours(bases, np.median)
  xs = np.concatenate([[left], (edges[:-1] + edges[1:]) / 2, [right]])

  def ends(values):
    return np.concatenate([values[:1], values, values[-1:]])

  return _Outline(xs, ends(tops), ends(bottoms), ends(bases))


def _with_neighbours(values: np.ndarray, pick) -> np.ndarray:
  """pick (np.min, np.max, np.median) of each value and its neighbours'."""
  padded = np.concatenate([values[:1], values, values[-1:]])
  return pick(np.stack([padded[:-2], padded[1:-1], padded[2:]]), axis=0)


def _dedupe(points: list[tuple[int, int]]) -> list[tuple[int, int]]:
  """`points` without repeats of the point before; at least two points (PAGE wants two)."""
  out = [points[0]]
  for point in points[1:]:
    if point != out[-1]:
      out.append(point)
  return out if len(out) > 1 else out * 2


def split_words(text: str) -> list[tuple[int, int]]:
  """[start, end) of each word of a line's text, split at single spaces (none if empty)."""
  spans, start = [], 0
  for part in _WORD_BREAK.split(text) if text else []:
    spans.append((start, start + len(part)))
    start += len(part) + 1
  return spans
