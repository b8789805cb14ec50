"""Prepares a real scan for the model: white paper, black ink, the text cropped and sized.

The model was trained on synthetic pages: dark ink on white paper (grey 1),
the words `data.word_height` pixels tall. A real scan has grey or yellowed
paper, uneven lighting, pencil-grey ink, wide margins and any text size, so
`prepare`:

1. flattens the paper (`flatten_paper`): the background (paper and
   lighting), estimated at a scale well above a stroke's width, is divided
   out, and the contrast stretched so that paper is 1 and the darkest ink 0;
2. crops the image to its ink (`text_box`), ignoring specks and scanner
   edges, with a margin of half the writing's word height;
3. picks the scale that brings its writing to the training word height,
   from the writing's height in the image (`text_height`).

Grey images are float [h, w] in [0, 1], paper = 1 (numpy only).
"""

import dataclasses

import numpy as np
from scipy import ndimage

# The background is estimated over windows this many times smaller than the image's shorter
# side, and at least MIN_BACKGROUND_WINDOW pixels wide (well above a pen stroke of a scan).
BACKGROUND_WINDOWS = 4
MIN_BACKGROUND_WINDOW = 48
# Windows are cut into blocks; the paper of a block is this percentile of its grey levels
# (ink pulls it down in a block inside a word, but not in its neighbours a window away).
PAPER_PERCENTILE = 90
BLOCKS_PER_WINDOW = 4
# Darkness (relative to the paper) within this many noise deviations of the paper is paper.
PAPER_NOISE = 2.5
# Ink is darker than the paper by at least INK_CONTRAST and INK_NOISE noise deviations;
# a page with less than MIN_INK_PIXELS of it is blank.
INK_CONTRAST = 0.15
INK_NOISE = 6.0
MIN_INK_PIXELS = 20
# The darkest ink, this percentile of the ink's darkness, becomes black.
DARKEST_INK_PERCENTILE = 95
# In a flattened image, ink is what is darker than this.
INK_THRESHOLD = 0.5
# Specks: blobs of ink of fewer pixels than this, or than this share of all the ink.
MIN_SPECK_PIXELS = 8
SPECK_SHARE = 0.001
# Scanner edges and page borders: the outer rows (columns) of an image, while at least
# EDGE_SHARE of each is ink, up to EDGE_DEPTH of the image's height (width) deep.
EDGE_SHARE = 0.5
EDGE_DEPTH = 0.05
# The writing's height is measured in vertical strips about this many heights wide (a
# slanted line stays within its strip's band).
STRIP_HEIGHTS = 12
# In a strip's row profile (ink pixels per row), a line's core (its lower-case letters'
# bodies) is the rows around a peak holding at least CORE_SHARE of it; the rows above and
# below it, within a core's height, hold the line's ascenders and descenders. Peaks under
# MIN_PEAK_SHARE of the strip's highest are strays, not lines.
CORE_SHARE = 0.5
MIN_PEAK_SHARE = 0.25
# The core's height is this share of the word height. Measured with `text_height` on pages
# of this project's word images (wordbank.rendering.render_word, paper 1, ink 0): the 15
# default fonts, 6 writers each (writers.sample_writer_style), word heights 20, 40 and 80,
# pages of 1, 3 and 5 lines of 5 words with the default config's word and line gaps. The
# median ratio of the 810 pages was 0.275 (0.275 at word heights 40 and 80, 0.3 at 20, where
# the strokes are a larger part of the core); 90% of them lay within 18% of it, the writers'
# own x-heights (0.22 to 0.3 of the word height) making most of the spread.
CORE_FRACTION = 0.275
# The automatic scale stays within these bounds.
SCALE_RANGE = (0.05, 4.0)
# The crop's margin, in word heights of the writing (text_height / CORE_FRACTION).
MARGIN_WORD_HEIGHTS = 0.5


@dataclasses.dataclass(frozen=True)
class Prepared:
  """A scan made ready for `input_pipeline.common.fit_to_canvas`.

  Attributes:
    grey: float32 [h, w] in [0, 1], the flattened page cropped to its text
      (not yet scaled).
    scale: the scale to place it at (the text at the training word height).
    box: (top, left, bottom, right) of the crop in the original image's
      pixels, bottom and right exclusive.
    text_height: the writing's height in the original image (`text_height`),
      in pixels; None when there is no ink.
    effective_scale: min(scale, what fits the canvas): the scale the
      canvas fitting will really apply.
  """

  grey: np.ndarray
  scale: float
  box: tuple[int, int, int, int]
  text_height: float | None
  effective_scale: float


def flatten_paper(grey: np.ndarray) -> np.ndarray:
  """Paper 1 everywhere, the darkest ink 0: lighting and paper tone divided out.

  The background is the paper seen through the ink: each block's bright
  percentile, the dips of the blocks inside words closed, smoothed and
  interpolated back to the image's size. The image divided by it is the paper's
  reflectance; its darkness below the paper (beyond the paper's noise) is
  then stretched so that the darkest ink is black. A page with no ink
  darker than the paper's noise comes back as blank paper.

  Args:
    grey: float [h, w] grey levels in [0, 1].

  Returns:
    float32 [h, w] in [0, 1], paper = 1.
  """
  grey = np.asarray(grey, np.float32)
  reflectance = np.clip(grey / _background(grey), 0.0, 1.5)
  paper = float(np.median(reflectance))
  darkness = (paper - reflectance) / max(paper, 1e-3)
  noise = 1.4826 * float(np.median(np.abs(darkness)))  # the paper's (most pixels)
  ink = darkness[darkness > max(INK_CONTRAST, INK_NOISE * noise)]
  if ink.size < MIN_INK_PIXELS:
    return np.ones_like(grey)
  white = PAPER_NOISE * noise
  black = max(float(np.percentile(ink, DARKEST_INK_PERCENTILE)), white + INK_CONTRAST)
  return 1.0 - np.clip((darkness - white) / (black - white), 0.0, 1.0).astype(np.float32)


def _background(grey: np.ndarray) -> np.ndarray:
  """float32 [h, w]: the paper's grey level under every pixel (at least 1e-3)."""
  h, w = grey.shape
  window = max(MIN_BACKGROUND_WINDOW, min(h, w) // BACKGROUND_WINDOWS)
  block = max(1, window // BLOCKS_PER_WINDOW)
  rows, cols = -(-h // block), -(-w // block)
  padded = np.pad(grey, ((0, rows * block - h), (0, cols * block - w)), mode="edge")
  blocks = padded.reshape(rows, block, cols, block).transpose(0, 2, 1, 3).reshape(rows, cols, -1)
  paper = np.percentile(blocks, PAPER_PERCENTILE, axis=2)
  # A closing fills the dips of blocks darkened by ink and keeps the lighting's slopes.
  paper = ndimage.grey_closing(paper, size=BLOCKS_PER_WINDOW + 1, mode="nearest")
  paper = ndimage.uniform_filter(paper, size=3, mode="nearest").astype(np.float32)
  # Linear between the blocks' centres, (i + 0.5) * block, one axis after the other.
  background = _interpolate(_interpolate(paper, h, block), w, block, axis=1)
  return np.maximum(background, 1e-3)


def _interpolate(values: np.ndarray, size: int, block: int, axis: int = 0) -> np.ndarray:
  """`values` of blocks along `axis`, linearly interpolated to `size` pixels there."""
  values = np.moveaxis(values, axis, 0)
  at = np.clip((np.arange(size) + 0.5) / block - 0.5, 0, len(values) - 1)
  below = np.floor(at).astype(int)
  above = np.minimum(below + 1, len(values) - 1)
  weight = (at - below).astype(np.float32)[:, None]
  return np.moveaxis(values[below] * (1 - weight) + values[above] * weight, 0, axis)


def ink_mask(grey: np.ndarray, threshold: float = INK_THRESHOLD) -> np.ndarray:
  """bool [h, w]: the ink of a flattened image (`flatten_paper`): darker than `threshold`."""
  return np.asarray(grey) < threshold


def text_mask(grey: np.ndarray) -> np.ndarray:
  """bool [h, w]: the ink of a flattened image without specks and scanner edges.

  Scanner edges are the image's outer rows and columns that are mostly ink
  (EDGE_SHARE, EDGE_DEPTH); specks are blobs (8-connected) of fewer than
  MIN_SPECK_PIXELS pixels or SPECK_SHARE of the ink.
  """
  mask = _without_edges(ink_mask(grey))
  labels, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
  if not count:
    return mask
  sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
  keep = sizes >= max(MIN_SPECK_PIXELS, SPECK_SHARE * sizes.sum())
  return np.concatenate([[False], keep])[labels]


def _without_edges(mask: np.ndarray) -> np.ndarray:
  """`mask` without the dark bands along its edges: outer rows and columns, one after
  another inwards, while EDGE_SHARE of each is ink, up to EDGE_DEPTH of the image deep."""
  mask = mask.copy()
  for lines in (mask, mask.T):  # rows, then columns (views: clearing them clears `mask`)
    depth = max(int(EDGE_DEPTH * len(lines)), 1)
    for order in (range(depth), range(len(lines) - 1, len(lines) - 1 - depth, -1)):
      for index in order:
        if lines[index].mean() < EDGE_SHARE:
          break
        lines[index] = False
  return mask


def text_box(grey: np.ndarray, margin: int = 0) -> tuple[int, int, int, int]:
  """(top, left, bottom, right) of a flattened image's text, padded by `margin` pixels.

  Bottom and right are exclusive; the box is clipped to the image. Specks
  and scanner edges are not text (`text_mask`); with no text, the box is
  the whole image.
  """
  h, w = np.shape(grey)
  mask = text_mask(grey)
  if not mask.any():
    return 0, 0, h, w
  rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
  margin = max(int(margin), 0)
  return (
    max(int(rows[0]) - margin, 0),
    max(int(cols[0]) - margin, 0),
    min(int(rows[-1]) + 1 + margin, h),
    min(int(cols[-1]) + 1 + margin, w),
  )


def text_height(grey: np.ndarray) -> float | None:
  """The height of a flattened image's writing in pixels: its lines' core; None without ink.

  The core of a line is the band of its lower-case letters' bodies (about
  the x-height), found in the row profiles of vertical strips of the text
  (`_cores`); the height is the median of all cores, weighted by their ink.
  It is CORE_FRACTION of the word height of the project's word images.
  """
  mask = text_mask(grey)
  if not mask.any():
    return None
  rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
  mask = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
  # A first guess from the whole width sets the strips' width; the strips then see each
  # line's core at its own height, even if the line slants.
  estimate = _weighted_median(_cores(mask))
  strip = max(int(STRIP_HEIGHTS * estimate), 1)
  cores = [
    c for start in range(0, mask.shape[1], strip) for c in _cores(mask[:, start : start + strip])
  ]
  return _weighted_median(cores or _cores(mask))


def _cores(mask: np.ndarray) -> list[tuple[float, float]]:
  """(height, ink) of each line's core in a strip of ink (bool [h, w]), peak after peak.

  The highest remaining peak of the row profile (smoothed over 3 rows) is a
  line; its core is the rows around it holding CORE_SHARE of the peak, and
  a core's height above and below it is taken as the line's, not another's.
  """
  profile = ndimage.uniform_filter1d(mask.sum(axis=1).astype(np.float64), 3, mode="constant")
  left = profile.copy()
  top_peak = profile.max(initial=0.0)
  cores = []
  while left.max(initial=0.0) > 0 and left.max() >= MIN_PEAK_SHARE * top_peak:
    peak_row = int(np.argmax(left))
    level = CORE_SHARE * left[peak_row]
    top, bottom = peak_row, peak_row + 1
    while top > 0 and left[top - 1] >= level:
      top -= 1
    while bottom < len(left) and left[bottom] >= level:
      bottom += 1
    height = bottom - top
    cores.append((float(height), float(profile[top:bottom].sum())))
    left[max(top - height, 0) : bottom + height] = 0.0
  return cores


def _weighted_median(values: list[tuple[float, float]]) -> float:
  """The median of (value, weight) pairs (at least one, weights above 0)."""
  values = sorted(values)
  weights = np.cumsum([w for _, w in values])
  return values[int(np.searchsorted(weights, weights[-1] / 2))][0]


def auto_scale(height: float | None, word_height: float) -> float:
  """The scale that makes writing `height` pixels tall (`text_height`) the word height's.

  Clipped to SCALE_RANGE; 1 when the height is unknown (no ink).
  """
  if not height:
    return 1.0
  return float(np.clip(CORE_FRACTION * word_height / height, *SCALE_RANGE))


def prepare(
  grey: np.ndarray, word_height: float, canvas_shape: tuple[int, int], scale: float | str = "auto"
) -> Prepared:
  """Flattens a scan's paper, crops it to its text and picks its scale.

  Args:
    grey: float [h, w] grey levels in [0, 1], paper = 1.
    word_height: the model's word height (data.word_height) in pixels.
    canvas_shape: (height, width) of the model's canvas.
    scale: "auto" (the writing at `word_height`, `auto_scale`) or a scale
      above 0 to place the crop at.

  Returns:
    The cropped flattened page, its scale, its box in `grey` and its
    writing's height.
  """
  flat = flatten_paper(grey)
  height = text_height(flat)
  chosen = auto_scale(height, word_height) if scale == "auto" else float(scale)
  if not chosen > 0:
    raise ValueError(f"scale={scale!r}: expected 'auto' or a number above 0.")
  margin = round(MARGIN_WORD_HEIGHTS * height / CORE_FRACTION) if height else 0
  top, left, bottom, right = text_box(flat, margin)
  fits = min(canvas_shape[0] / (bottom - top), canvas_shape[1] / (right - left))
  return Prepared(
    grey=flat[top:bottom, left:right],
    scale=chosen,
    box=(top, left, bottom, right),
    text_height=height,
    effective_scale=min(chosen, fits),
  )
