"""Embedded handwriting source: words rendered in handwriting fonts.

Builds a `WordBank`: grayscale crops of words written by synthetic "writers",
ready for the synthetic composer to paste into lines and pages. Needs no
download: the fonts are the pip-installed handwriting TTFs (fontpkg-*) and the
Hershey script stroke fonts; the words come from `wordfreq`, or from any UTF-8
text file (`data.text_file`).

Every crop has height `data.word_height` and its baseline at the same row
(`baseline_row(word_height)`), so crops pasted side by side at the same top
row line up like handwriting on a ruled line. Ink is stored as darkness
(0 = paper, 255 = full ink): paste with max() onto a blank page, then invert.

A writer is one font plus style parameters drawn once (size, slant, stroke,
letter spacing, ink, baseline wobble); every word adds small variations of its
own. A writer never gets a word with a character its font has no glyph for.

The bank is deterministic (same config -> same bytes) and cached on disk as
one .npz keyed by a hash of everything that shapes it.
"""

import concurrent.futures
import dataclasses
import functools
import hashlib
import importlib.metadata
import importlib.resources
import json
import math
import multiprocessing
import os
import pathlib
import tempfile
import time
from collections.abc import Iterator, Sequence

from absl import logging
import numpy as np
import PIL
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

# Bump whenever a change to this module changes the rendered pixels or texts,
# so that cached banks are rebuilt.
RENDER_VERSION = 3
# Row of the baseline, as a fraction of word_height: room above for
# ascenders and capitals, below for descenders.
BASELINE_FRACTION = 0.72
# Glyphs are drawn, slanted and warped at this multiple of the output
# resolution, then box-filtered down: smooth edges from integer operations.
_SUPERSAMPLE = 3
# Hershey fonts used by default: the cursive ones. (The others look typeset.)
DEFAULT_HERSHEY_FONTS = ("scripts", "scriptc", "cursive")
# `data.font_paths` entries with this prefix name a Hershey font.
HERSHEY_PREFIX = "hershey:"
# ... and with this one a pip-installed fontpkg family of any category.
FONTPKG_PREFIX = "fontpkg:"
# Cap line to descender line of the Hershey script fonts, in font units.
_HERSHEY_UNITS_PER_EM = 33
# Hershey script letters are about 1.6 times as wide, for their height, as
# those of the handwriting TTFs (and of most people's writing).
_HERSHEY_WIDTH = 0.65
_FONT_SUFFIXES = (".ttf", ".otf")
_FONTPKG_ENTRY_POINTS = "fontpkg.family"
_WORDFREQ_LANGUAGE = "en"
_WORDFREQ_VOCABULARY_SIZE = 30_000
# Word probabilities are frequency ** exponent: common words stay common while
# the bank covers more of the vocabulary than raw frequencies would.
_WORDFREQ_EXPONENT = 0.75
# Words the default vocabulary leaves out: page previews are shown to people.
_OFFENSIVE_STEMS = ("fuck", "shit", "cunt", "bitch", "nigg", "whore", "slut", "pussy",
                    "porn", "retard")
_OFFENSIVE_WORDS = frozenset(("dick", "dicks", "cock", "cocks", "fag", "fags", "rape", "raped",
                              "rapist", "bastard", "bastards", "tits", "cum", "anal"))
_SPLITS = ("train", "eval")
_DEFAULT_WORDS_PER_WRITER = (200, 400)
# Banks smaller than this render in-process; starting workers costs more.
_PARALLEL_MIN_WORDS = 2000
_LOG_EVERY_SECONDS = 5.0


@dataclasses.dataclass(frozen=True)
class WordBank:
  """Rendered words, side by side in one strip.

  strip: uint8 [word_height, total_width]; 0 = paper, 255 = full ink.
  offsets: int32 [N]; column in `strip` where word i starts.
  widths: int32 [N]; width in pixels of word i (>= 1).
  texts: object [N] of str; the exact text of word i (no spaces inside).
  writers: int32 [N]; writer id of word i. Each writer's words are contiguous
    and in text order, so a contiguous span of one writer reads like a passage.
  writer_names: str per writer id, e.g. "Caveat[wght]#3".
  font_names: str per writer id; the font file stem (or "hershey-<name>").
  """
  strip: np.ndarray
  offsets: np.ndarray
  widths: np.ndarray
  texts: np.ndarray
  writers: np.ndarray
  writer_names: tuple
  font_names: tuple

  def __len__(self):
    return len(self.texts)

  def word_image(self, i: int) -> np.ndarray:
    """uint8 [word_height, widths[i]]: the crop of word i."""
    return self.strip[:, self.offsets[i]:self.offsets[i] + self.widths[i]]


@dataclasses.dataclass(frozen=True)
class FontSource:
  """A font to write with: a TTF/OTF file or a built-in Hershey stroke font."""
  name: str  # file stem, or "hershey-<name>"
  path: str | None = None
  hershey: str | None = None


@dataclasses.dataclass(frozen=True)
class FontMetrics:
  """What a font can draw, and how big its glyphs are.

  Lengths are per unit of scale: per pixel of font size for TTF/OTF, per
  Hershey coordinate unit for Hershey fonts.
  """
  coverage: frozenset  # charset characters with a real glyph (not .notdef)
  ascent: float  # ink above the baseline of tall letters and digits
  x_height: float  # ink above the baseline of short letters (a, c, e, ...)
  joined: bool  # letters connect (cursive), so spacing must stay near 0


@dataclasses.dataclass(frozen=True)
class WriterStyle:
  """The style of one synthetic writer, fixed for all of their words."""
  font: FontSource
  x_height: float  # height of short letters, / word_height
  width: float  # horizontal scale of the letters (narrow < 1 < wide)
  slant: float  # horizontal shear per pixel above the baseline (+ = right)
  stroke: float  # Hershey pen width, or extra TTF outline; / word_height
  spacing: float  # extra letter spacing, / glyph scale (em)
  ink: float  # darkness of the ink, 0..1
  ink_texture: float  # depth of the uneven ink flow, 0..1
  wobble: float  # amplitude of the wavy baseline, / word_height
  wobble_period: float  # wavelength of the wavy baseline, / word_height
  weight: float | None = None  # "wght" axis of a variable font
  # How far each word's letters stray from the font's shapes: std of a smooth
  # random displacement of the ink, / x-height (letters of TTF fonts also vary
  # in size and height by a part of it). 0 = the font's shapes exactly.
  distortion: float = 0.0


def baseline_row(word_height: int) -> int:
  """Row of every crop in which the letters of a word sit (their bottom row)."""
  return int(round(BASELINE_FRACTION * word_height))


# --- Fonts -------------------------------------------------------------------


def _fontpkg_families() -> dict:
  """{family name: (metadata, files root)} of the pip-installed fontpkg fonts."""
  families = {}
  for entry_point in importlib.metadata.entry_points(group=_FONTPKG_ENTRY_POINTS):
    root = importlib.resources.files(entry_point.value)
    metadata = json.loads((root / "metadata.json").read_text(encoding="utf-8"))
    families[entry_point.name.replace("_", "-")] = (metadata, root)
  return families


def _fontpkg_files(metadata, root) -> list[FontSource]:
  """The font files of one fontpkg family."""
  fonts = []
  for entry in sorted(metadata["files"], key=lambda f: f["path"]):
    path = pathlib.Path(str(root.joinpath(*entry["path"].split("/"))))
    fonts.append(FontSource(name=path.stem, path=str(path)))
  return fonts


def list_default_fonts() -> list[FontSource]:
  """The pip-installed handwriting fonts: fontpkg-* TTFs, then Hershey fonts."""
  fonts = []
  for _, (metadata, root) in sorted(_fontpkg_families().items()):
    # Other fontpkg families (sans, serif, ...) may be installed too.
    if "HANDWRITING" in metadata.get("category", ()):
      fonts.extend(_fontpkg_files(metadata, root))
  fonts.extend(
      FontSource(name=f"hershey-{name}", hershey=name)
      for name in DEFAULT_HERSHEY_FONTS)
  return fonts


def resolve_fonts(font_paths: str | Sequence[str] | None,
                  extra_fonts: str | Sequence[str] | None = None,
                  ) -> list[FontSource]:
  """Fonts named by `data.font_paths` and `data.extra_fonts`.

  Entries are TTF/OTF files, folders (searched recursively), "hershey:NAME"
  (a Hershey stroke font) or "fontpkg:NAME" (every file of a pip-installed
  fontpkg family, e.g. "fontpkg:quicksand" from `pip install
  fontpkg-quicksand`); a string may list several, separated by commas.
  No font_paths gives `list_default_fonts()`; extra_fonts are added to the
  fonts of font_paths (a font already there is not added twice).
  """
  fonts = (_fonts_of("data.font_paths", font_paths) if font_paths
           else list_default_fonts())
  names = {f.name for f in fonts}
  for font in _fonts_of("data.extra_fonts", extra_fonts or ()):
    if font.name not in names:
      fonts.append(font)
      names.add(font.name)
  return fonts


def _fonts_of(field: str, entries: str | Sequence[str]) -> list[FontSource]:
  """The fonts of the entries of config field `field`; see `resolve_fonts`."""
  if isinstance(entries, str):
    entries = _split_entries(entries)
  elif isinstance(entries, os.PathLike):
    entries = [entries]
  fonts = []
  for entry in entries:
    entry = str(entry)
    if entry.startswith(HERSHEY_PREFIX):
      name = entry[len(HERSHEY_PREFIX):]
      available = _hershey_font_names()
      if name not in available:
        raise ValueError(
            f"{field}: unknown Hershey font {entry!r}; available: "
            + ", ".join(HERSHEY_PREFIX + n for n in available))
      fonts.append(FontSource(name=f"hershey-{name}", hershey=name))
      continue
    if entry.startswith(FONTPKG_PREFIX):
      name = entry[len(FONTPKG_PREFIX):].replace("_", "-")
      families = _fontpkg_families()
      if name not in families:
        raise ValueError(
            f"{field}: fontpkg family {name!r} is not installed (pip install "
            f"fontpkg-{name}); installed: {', '.join(sorted(families))}.")
      fonts.extend(_fontpkg_files(*families[name]))
      continue
    path = pathlib.Path(entry).expanduser()
    if path.is_dir():
      files = sorted(p for p in path.rglob("*")
                     if p.is_file() and p.suffix.lower() in _FONT_SUFFIXES)
      if not files:
        raise ValueError(
            f"{field}: folder {path} holds no .ttf or .otf font files.")
    elif path.is_file():
      if path.suffix.lower() not in _FONT_SUFFIXES:
        raise ValueError(f"{field}: {path} is not a .ttf or .otf font file.")
      files = [path]
    else:
      raise ValueError(f"{field}: {path} does not exist.")
    for file in files:
      try:
        ImageFont.truetype(str(file), 20)
      except OSError as e:
        raise ValueError(f"{field}: cannot read font file {file}: {e}") from e
      fonts.append(FontSource(name=file.stem, path=str(file)))
  return fonts


def _split_entries(text: str) -> list[str]:
  """The entries of a comma-separated list of fonts.

  A comma inside an existing file's name (variable fonts are often named so:
  "Fredoka[wdth,wght].ttf") does not split it.
  """
  entries, pending = [], []
  for piece in text.split(","):
    pending.append(piece)
    entry = ",".join(pending).strip()
    if (len(pending) == 1 and entry.startswith((HERSHEY_PREFIX, FONTPKG_PREFIX))
        or pathlib.Path(entry).expanduser().exists()):
      entries.append(entry)
      pending = []
  # What names no existing file stays split, for an error about each piece.
  entries.extend(p.strip() for p in pending)
  return [entry for entry in entries if entry]


@functools.cache
def _hershey_font_names() -> tuple:
  """Names of the Hershey fonts built into the HersheyFonts package."""
  from HersheyFonts import HersheyFonts  # pylint: disable=g-import-not-at-top
  return tuple(HersheyFonts().default_font_names)


@functools.cache
def _hershey_font(name: str):
  """(glyphs: {char: glyph}, baseline y) of a built-in Hershey font."""
  from HersheyFonts import HersheyFonts  # pylint: disable=g-import-not-at-top
  font = HersheyFonts()
  font.load_default_font(name)
  return font.all_glyphs, float(font.render_options["base_line"])


@functools.lru_cache(maxsize=512)
def _truetype(path: str, size: int, weight: float | None):
  font = ImageFont.truetype(path, size)
  if weight is not None:
    font.set_variation_by_axes([weight])
  return font


def _weight_range(font: FontSource) -> tuple[float, float] | None:
  """(min, max) of the "wght" axis of a variable font, else None."""
  if font.path is None:
    return None
  try:
    axes = _truetype(font.path, 20, None).get_variation_axes()
  except OSError:  # not a variable font
    return None
  for axis in axes:
    if axis["name"] in (b"Weight", "Weight"):
      return float(axis["minimum"]), float(axis["maximum"])
  return None


def _ttf_glyph_mask(font, char: str) -> tuple:
  """(size, bytes) of `char`'s rendering: equal for equal glyphs."""
  mask = font.getmask(char)
  return mask.size, bytes(mask)


@functools.cache
def font_metrics(font: FontSource, charset: str) -> FontMetrics:
  """Which `charset` characters `font` really draws, and its glyph extents."""
  if font.hershey is not None:
    glyphs, base = _hershey_font(font.hershey)
    coverage = frozenset(
        c for c in charset if c in glyphs and glyphs[c].strokes)

    def extent(c):
      ys = [y for stroke in glyphs[c].strokes for _, y in stroke]
      return base - min(ys), max(ys) - base
  else:
    reference_size = 100
    ttf = _truetype(font.path, reference_size, None)
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
  metrics = FontMetrics(coverage=coverage, ascent=ascent, x_height=x_height,
                        joined=False)
  return dataclasses.replace(metrics, joined=_is_joined(font, metrics))


def _is_joined(font: FontSource, metrics: FontMetrics) -> bool:
  """Whether the font connects its letters, like cursive handwriting."""
  if not set("mnu") <= metrics.coverage:
    return False
  pen = 0.04 if font.hershey is not None else 0.0
  style = WriterStyle(font=font, x_height=0.25, width=1.0, slant=0.0,
                      stroke=pen, spacing=0.0, ink=1.0, ink_texture=0.0,
                      wobble=0.0, wobble_period=1.0)
  image = _draw_word("mnunm", style, 48, metrics, 0.25, 1.0, 0.0, 0.0, 0.0,
                     np.zeros((5, 3)))
  ink = image.max(axis=0)
  columns = np.flatnonzero(ink > 0.02)
  # Joined: ink in every column from the first letter to the last.
  return bool(len(columns) and ink[columns[0]:columns[-1] + 1].min() > 0.1)


# --- Rendering ---------------------------------------------------------------


def _ttf_layout(text, style, scale, spacing, stroke, jitter):
  """(ink bbox around the pen origin on the baseline, draw function).

  jitter: float [len(text), 3], standard normal; with `style.distortion` > 0,
  each letter's size and height vary by it (no two letters alike).
  """
  if style.distortion > 0:
    fonts = [_truetype(style.font.path,
                       max(1, round(scale * (1 + 0.5 * style.distortion * size))),
                       style.weight) for size, _, _ in jitter]
    advances = [f.getlength(c) + spacing for f, c in zip(fonts, text)]
    xs = np.concatenate([[0.0], np.cumsum(advances)[:-1]])
    lifts = 0.25 * style.distortion * scale * jitter[:, 2]
  else:  # the font's own layout, kerning included
    font = _truetype(style.font.path, max(1, round(scale)), style.weight)
    fonts = [font] * len(text)
    xs = [font.getlength(text[:i]) + i * spacing for i in range(len(text))]
    lifts = [0] * len(text)
  boxes = [f.getbbox(c, anchor="ls", stroke_width=stroke)
           for f, c in zip(fonts, text)]
  bbox = (min(x + b[0] for x, b in zip(xs, boxes)),
          min(b[1] - y for y, b in zip(lifts, boxes)),
          max(x + b[2] for x, b in zip(xs, boxes)),
          max(b[3] - y for y, b in zip(lifts, boxes)))

  def draw(canvas, x0, y0):
    for x, y, f, c in zip(xs, lifts, fonts, text):
      canvas.text((x0 + x, y0 - y), c, font=f, anchor="ls", fill=255,
                  stroke_width=stroke, stroke_fill=255)
  return bbox, draw


def _smooth_field(rng, shape, cell: float, std: float) -> np.ndarray:
  """float32 [2, *shape]: a random displacement, smooth over `cell` pixels."""
  height, width = shape
  grid = (math.ceil(height / cell) + 3, math.ceil(width / cell) + 3)
  field = []
  for knots in std * rng.standard_normal((2, *grid)):
    upsampled = Image.fromarray(knots.astype(np.float32), mode="F").resize(
        (round((grid[1] - 1) * cell), round((grid[0] - 1) * cell)),
        Image.Resampling.BICUBIC)
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
  glyphs, base = _hershey_font(style.font.hershey)
  strokes, x = [], 0.0
  for c, (size, slant, lift) in zip(text, jitter):
    glyph = glyphs[c]
    s = scale * (1 + 0.04 * size)
    for stroke in glyph.strokes:
      strokes.append([
          (x + ((gx - glyph.left_offset) + 0.05 * slant * (base - gy)) * s
           * _HERSHEY_WIDTH, (gy - base + 0.4 * lift) * s)
          for gx, gy in stroke])
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


def _draw_word(text, style, word_height, metrics, x_height, width_scale, slant,
               shift, phase, jitter, rng=None):
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
        text, style, s, style.spacing * s * _HERSHEY_UNITS_PER_EM, pen, jitter)
  else:
    outline = round(style.stroke * height / 2)
    layout = lambda s: _ttf_layout(  # pylint: disable=g-long-lambda
        text, style, s, style.spacing * s, outline, jitter)
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
      (width, image.height), Image.Transform.AFFINE,
      (1 / width_scale, slant / width_scale, -slant * base_y / width_scale,
       0, 1, 0), resample=Image.Resampling.BILINEAR)
  if source_below > below:
    # Long descenders: squeeze what is below the baseline into the room left.
    squeezed = image.crop((0, base_y, width, base_y + source_below)).resize(
        (width, below), Image.Resampling.BILINEAR)
    image = image.crop((0, 0, width, height))
    image.paste(squeezed, (0, base_y))
  coverage = np.asarray(image, np.float32)[:height] / 255
  # Wavy baseline: shift every column up or down by a smooth offset.
  columns = np.arange(width)
  offsets = shift + wobble * np.sin(
      2 * np.pi * columns / (style.wobble_period * height) + phase)
  if style.distortion > 0:
    # Bend the letters: sample the ink through a smooth random displacement.
    x_height_px = x_height * height
    dy, dx = _smooth_field(rng, (height, width), x_height_px,
                           style.distortion * x_height_px)
    rows = np.arange(height)[:, None] - offsets[None, :] + dy
    coverage = _sample(coverage, rows, columns[None, :] + dx)
  else:
    rows = np.arange(height)[:, None] - np.round(offsets).astype(int)[None, :]
    inside = (rows >= 0) & (rows < height)
    coverage = np.where(inside,
                        coverage[np.clip(rows, 0, height - 1), columns], 0)
  return coverage.reshape(word_height, ss, width // ss, ss).mean(axis=(1, 3))


def render_word(text: str, style: WriterStyle, word_height: int,
                rng: np.random.Generator,
                metrics: FontMetrics | None = None) -> np.ndarray:
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
    raise ValueError(f"Font {style.font.name} has no glyph for "
                     f"{''.join(sorted(missing))!r} in {text!r}.")
  x_height = style.x_height * (1 + 0.03 * rng.standard_normal())
  width_scale = style.width * (1 + 0.03 * rng.standard_normal())
  slant = style.slant + 0.03 * rng.standard_normal()
  shift = np.clip(0.008 * word_height * _SUPERSAMPLE * rng.standard_normal(),
                  -_SUPERSAMPLE, _SUPERSAMPLE)
  phase = rng.uniform(0, 2 * np.pi)
  ink = np.clip(style.ink * (1 + 0.06 * rng.standard_normal()), 0.35, 1.0)
  jitter = rng.standard_normal((len(text), 3))
  coverage = _draw_word(text, style, word_height, metrics, x_height,
                        width_scale, slant, shift, phase, jitter, rng)

  inked = np.flatnonzero(coverage.max(axis=0) > 0.03)
  if len(inked) == 0:
    return np.zeros((word_height, 1), np.uint8)
  left, right = max(inked[0] - 1, 0), min(inked[-1] + 2, coverage.shape[1])
  coverage = coverage[:, left:right]
  # Uneven ink flow along the word, and grain; paper stays exactly 0 so that
  # crops leave no rectangles on the page.
  cells = rng.uniform(1 - style.ink_texture, 1,
                      size=(2, math.ceil(coverage.shape[1] / word_height) + 2))
  flow = np.asarray(Image.fromarray(cells.astype(np.float32), mode="F").resize(
      (coverage.shape[1], word_height), Image.Resampling.BILINEAR))
  grain = 1 + 0.05 * rng.standard_normal(coverage.shape)
  darkness = coverage * ink * flow * grain
  return np.clip(np.round(darkness * 255), 0, 255).astype(np.uint8)


def sample_writer_style(font: FontSource, metrics: FontMetrics,
                        rng: np.random.Generator,
                        distortion: float = 0.0) -> WriterStyle:
  """Draws the fixed style of a new writer who writes with `font`.

  distortion: the writers' mean `WriterStyle.distortion`; each draws 0.5 to
  1.5 times it (none with 0).
  """
  weights = _weight_range(font)
  if font.hershey is not None:
    stroke = rng.uniform(0.025, 0.055)  # pen width
  else:
    stroke = rng.choice([0.0, 0.0, 0.02, 0.04])  # extra boldness
  if metrics.joined:
    spacing = rng.uniform(-0.02, 0.01)  # more would break the joins
  else:
    spacing = rng.uniform(-0.03, 0.1)
  return WriterStyle(
      font=font,
      x_height=float(rng.uniform(0.22, 0.3)),
      width=float(rng.uniform(0.85, 1.15)),
      slant=float(rng.uniform(-0.12, 0.3)),
      stroke=float(stroke),
      spacing=float(spacing),
      ink=float(rng.uniform(0.6, 1.0)),
      ink_texture=float(rng.uniform(0.0, 0.35)),
      wobble=float(rng.uniform(0.0, 0.02)),
      wobble_period=float(rng.uniform(2.0, 6.0)),
      weight=None if weights is None else float(rng.uniform(*weights)),
      distortion=float(distortion * rng.uniform(0.5, 1.5)) if distortion else 0.0)


# --- Words -------------------------------------------------------------------


def _word_charset(charset: str) -> str:
  """The characters a word may contain: the charset minus whitespace."""
  return "".join(sorted(set(charset) - set(" \n\t\r")))


@functools.cache
def _wordfreq_vocabulary(charset: str) -> tuple[tuple, np.ndarray]:
  """(words, cumulative probabilities) of the frequent English words."""
  import wordfreq  # pylint: disable=g-import-not-at-top
  allowed = set(charset)
  words, weights = [], []
  vocabulary = wordfreq.top_n_list(_WORDFREQ_LANGUAGE,
                                   _WORDFREQ_VOCABULARY_SIZE)
  for word in vocabulary:
    frequency = wordfreq.word_frequency(word, _WORDFREQ_LANGUAGE)
    if any(c.isdigit() for c in word):
      continue  # wordfreq merges digits; numbers are made up separately
    if word in _OFFENSIVE_WORDS or any(stem in word for stem in _OFFENSIVE_STEMS):
      continue
    if "." in word:
      word += "."  # "e.g" -> "e.g."
    if word == "i" or word.startswith("i'"):
      word = _if_allowed("I" + word[1:], word, allowed)
    if set(word) <= allowed:
      words.append(word)
      weights.append(frequency ** _WORDFREQ_EXPONENT)
  cumulative = np.cumsum(weights)
  return tuple(words), cumulative / cumulative[-1]


def _if_allowed(word: str, fallback: str, allowed: set) -> str:
  return word if set(word) <= allowed else fallback


def _sample_number(rng: np.random.Generator) -> str:
  """A number as people write them in running text."""
  kind = rng.random()
  if kind < 0.45:
    return str(rng.integers(0, 100))
  if kind < 0.62:
    return str(rng.integers(1800, 2031))  # a year
  if kind < 0.7:
    return str(rng.integers(100, 10_000))
  if kind < 0.76:
    return f"{rng.integers(1, 1000)},{rng.integers(0, 1000):03d}"
  if kind < 0.84:
    return f"{rng.integers(0, 100)}.{rng.integers(0, 100)}"
  if kind < 0.89:
    return f"{rng.integers(1, 13)}:{rng.choice([0, 15, 30, 45]):02d}"
  if kind < 0.94:
    n = int(rng.integers(1, 100))
    suffix = {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{'th' if 10 <= n % 100 <= 20 else suffix}"
  if kind < 0.96:
    return f"#{rng.integers(1, 100)}"
  if kind < 0.97:
    return f"+{rng.integers(1, 100)}"
  return f"{rng.integers(1, 4)}/{rng.choice([2, 3, 4, 8])}"


def _sentence(rng: np.random.Generator, words: tuple, cumulative: np.ndarray,
              allowed: set) -> list[str]:
  """One made-up sentence: frequent words, capitals, punctuation, numbers."""
  length = int(np.clip(rng.poisson(11), 2, 30))
  core = []
  for _ in range(length):
    if rng.random() < 0.025:
      core.append(_sample_number(rng))
    elif rng.random() < 0.002:
      core.append("&")
    else:
      core.append(words[min(np.searchsorted(cumulative, rng.random()),
                            len(words) - 1)])
  for i, word in enumerate(core):
    if i == 0 or rng.random() < 0.04:  # sentence start, names
      core[i] = word[:1].upper() + word[1:]
    elif rng.random() < 0.006 and len(word) > 1:
      core[i] = word.upper()
  if len(core) > 2 and rng.random() < 0.04:  # compound word
    i = int(rng.integers(0, len(core) - 1))
    core[i:i + 2] = [core[i] + "-" + core[i + 1]]
  opening = [""] * len(core)
  closing = [""] * len(core)
  punctuation = [""] * len(core)
  for marks, probability in ((("(", ")"), 0.08), (('"', '"'), 0.1),
                             (("'", "'"), 0.02)):
    if rng.random() < probability:
      start = int(rng.integers(0, len(core)))
      end = min(len(core) - 1, start + int(rng.integers(0, 5)))
      opening[start] += marks[0]
      closing[end] = marks[1] + closing[end]
  for i in range(len(core) - 1):
    mark = rng.random()
    if mark < 0.08:
      punctuation[i] = ","
    elif mark < 0.087:
      punctuation[i] = ";"
    elif mark < 0.094:
      punctuation[i] = ":"
  end = rng.random()
  punctuation[-1] = "." if end < 0.85 else "?" if end < 0.93 else (
      "!" if end < 0.99 else "...")
  sentence = []
  for i, word in enumerate(core):
    footnote = "*" if rng.random() < 0.002 else ""
    decorated = opening[i] + word + closing[i] + punctuation[i] + footnote
    # Drop whatever the charset cannot write.
    for candidate in (decorated, word, word.lower()):
      if set(candidate) <= allowed:
        sentence.append(candidate)
        break
    if i < len(core) - 1 and rng.random() < 0.006 and "-" in allowed:
      sentence.append("-")  # a dash between clauses
  return sentence


def _wordfreq_stream(charset: str, rng: np.random.Generator) -> Iterator[str]:
  """Endless made-up English text, one word at a time."""
  words, cumulative = _wordfreq_vocabulary(charset)
  if not words:
    raise ValueError(
        f"data.charset {charset!r} cannot write any English word; add "
        "letters to data.charset or set data.text_file.")
  allowed = set(charset)
  while True:
    yield from _sentence(rng, words, cumulative, allowed)


def sample_words(charset: str, num_words: int, seed: int = 0) -> list[str]:
  """`num_words` words of made-up English text, drawn from wordfreq.

  Words follow their frequency (tempered), with sentence capitals, names,
  punctuation attached to words, and numbers; every character is in
  `charset` (whitespace aside).
  """
  stream = _wordfreq_stream(_word_charset(charset),
                            np.random.default_rng(seed))
  return [next(stream) for _ in range(num_words)]


def read_text_words(path: str, charset: str,
                    skip_unknown_chars: bool = False) -> list[str]:
  """The words of a UTF-8 text file, in order (split on whitespace).

  Raises:
    ValueError: the file is missing or not UTF-8, has no usable word, or has a
      word with a character outside `charset` (unless `skip_unknown_chars`,
      which skips such words and logs how many).
  """
  allowed = set(_word_charset(charset))
  try:
    text = pathlib.Path(path).expanduser().read_text(encoding="utf-8")
  except FileNotFoundError as e:
    raise ValueError(f"data.text_file: {path} does not exist.") from e
  except UnicodeDecodeError as e:
    raise ValueError(f"data.text_file: {path} is not UTF-8 text ({e}).") from e
  words, skipped = [], 0
  for line_number, line in enumerate(text.split("\n"), start=1):
    for word in line.split():
      unknown = [c for c in word if c not in allowed]
      if not unknown:
        words.append(word)
      elif skip_unknown_chars:
        skipped += 1
      else:
        raise ValueError(
            f"data.text_file: {path}, line {line_number}: the word {word!r} "
            f"has the character {unknown[0]!r} (U+{ord(unknown[0]):04X}), "
            "which is not in data.charset. Add it to data.charset, or set "
            "data.skip_unknown_chars=True to skip such words.")
  if skipped:
    logging.warning("Skipped %d words of %s with characters outside "
                    "data.charset.", skipped, path)
  if not words:
    raise ValueError(
        f"data.text_file: {path} has no usable words (no word made only of "
        "data.charset characters).")
  return words


def _cycle_from(words: Sequence[str], start: int) -> Iterator[str]:
  while True:
    for i in range(len(words)):
      yield words[(start + i) % len(words)]


# --- Building the bank -------------------------------------------------------


def _bank_options(data_config) -> dict:
  """The `config.data` fields that shape a bank, checked, with defaults."""
  options = dict(
      charset=_word_charset(data_config.charset),
      word_height=int(data_config.word_height),
      bank_size=int(data_config.bank_size),
      font_paths=data_config.get("font_paths") or None,
      extra_fonts=data_config.get("extra_fonts") or None,
      text_file=data_config.get("text_file") or None,
      heldout_fonts=tuple(data_config.get("heldout_fonts") or ()),
      words_per_writer=tuple(data_config.get("words_per_writer")
                             or _DEFAULT_WORDS_PER_WRITER),
      train_words_per_writer=tuple(
          data_config.get("train_words_per_writer") or ()) or None,
      bank_seed=int(data_config.get("bank_seed") or 0),
      skip_unknown_chars=bool(data_config.get("skip_unknown_chars")),
      shape_distortion=float(data_config.get("shape_distortion") or 0.0))
  for field in ("font_paths", "extra_fonts"):
    if isinstance(options[field], (list, tuple)):
      options[field] = [str(p) for p in options[field]]
  if options["bank_size"] < 1:
    raise ValueError(
        f"data.bank_size must be >= 1, got {options['bank_size']}.")
  if not 0 <= options["shape_distortion"] <= 0.5:
    raise ValueError("data.shape_distortion must be in [0, 0.5], got "
                     f"{options['shape_distortion']}.")
  if options["word_height"] < 8:
    raise ValueError(
        f"data.word_height must be >= 8, got {options['word_height']}.")
  return options


def _split_fonts(options: dict, split: str) -> list[FontSource]:
  """Fonts of `split` among those of the bank options: train = all but the
  held-out ones; eval = the held-out ones (all of them if none)."""
  if split not in _SPLITS:
    raise ValueError(f"split must be one of {_SPLITS}, got {split!r}.")
  fonts = resolve_fonts(options["font_paths"], options["extra_fonts"])
  heldout = options["heldout_fonts"]
  names = {f.name for f in fonts}
  unknown = [name for name in heldout if name not in names]
  if unknown:
    raise ValueError(
        f"data.heldout_fonts: {unknown} are not among the fonts; available: "
        f"{sorted(names)}.")
  if split == "train":
    chosen = [f for f in fonts if f.name not in heldout]
    if not chosen:
      raise ValueError("data.heldout_fonts holds out every font, which leaves "
                       "no font for training.")
    return chosen
  return [f for f in fonts if f.name in heldout] if heldout else fonts


def _split_options(options: dict, split: str) -> dict:
  """The bank options as they apply to `split`: data.shape_distortion and
  data.train_words_per_writer are for training only (eval keeps the fonts'
  shapes and its own writers)."""
  options = dict(options)
  train_words_per_writer = options.pop("train_words_per_writer")
  if split == "train":
    options["words_per_writer"] = (train_words_per_writer
                                   or options["words_per_writer"])
  else:
    options["shape_distortion"] = 0.0
  return options


def _writer_quotas(bank_size: int, words_per_writer: Sequence[int],
                   rng: np.random.Generator) -> list[int]:
  """How many words each writer writes: about words_per_writer, >= its low."""
  low, high = words_per_writer
  if not 1 <= low <= high:
    raise ValueError("data.words_per_writer must be (low, high) with "
                     f"1 <= low <= high, got {tuple(words_per_writer)}.")
  num_writers = int(np.clip(round(2 * bank_size / (low + high)), 1,
                            max(1, bank_size // low)))
  if num_writers * low > bank_size:
    return [bank_size]  # fewer words than one writer's minimum
  # Dirichlet shares: some writers write much more than others.
  extra = rng.multinomial(bank_size - num_writers * low,
                          rng.dirichlet(np.full(num_writers, 2.0)))
  return [low + int(e) for e in extra]


def _assign_words(stream: Iterator[str], styles: list[WriterStyle],
                  quotas: list[int], coverage: dict) -> list[list[str]]:
  """Deals words to writers in text order, each only words it can write.

  A word the current writer's font cannot write waits for the next writer who
  can; words no font of the split can write are dropped.
  """
  fonts_coverage = list(coverage.values())
  waiting, assignments, dropped = [], [], {}
  for style, quota in zip(styles, quotas):
    writable = coverage[style.font.name]
    words, still_waiting = [], []
    for word in waiting:
      if len(words) < quota and set(word) <= writable:
        words.append(word)
      else:
        still_waiting.append(word)
    waiting, misses = still_waiting, 0
    while len(words) < quota:
      word = next(stream)
      chars = set(word)
      if chars <= writable:
        words.append(word)
        misses = 0
        continue
      if any(chars <= c for c in fonts_coverage):
        waiting.append(word)
      else:
        for c in chars - frozenset().union(*fonts_coverage):
          dropped[c] = dropped.get(c, 0) + 1
      misses += 1
      if misses > 100_000:
        raise ValueError(
            f"Font {style.font.name} cannot write any of the text's words; "
            "remove it from data.font_paths / data.extra_fonts or use a "
            "text it has glyphs for.")
    assignments.append(words)
  if dropped:
    logging.warning("Dropped words with characters no font has a glyph for "
                    "(character: words): %s", dropped)
  return assignments


def _render_writer_words(task) -> list[np.ndarray]:
  """Renders one writer's words; a top-level function for worker processes."""
  seed, writer_id, style, words, word_height, metrics = task
  return [
      render_word(word, style, word_height,
                  np.random.default_rng(seed + [writer_id, i]), metrics)
      for i, word in enumerate(words)]


def _default_num_workers(num_words: int) -> int:
  if num_words < _PARALLEL_MIN_WORDS:
    return 1
  return max(1, min(len(os.sched_getaffinity(0)), 16))


def build_word_bank(data_config, split: str = "train",
                    num_workers: int | None = None) -> WordBank:
  """Renders a new bank (no cache); see `load_word_bank`.

  Args:
    data_config: the `config.data` section.
    split: "train" or "eval".
    num_workers: processes rendering in parallel; None = the available cores
      for large banks, 1 for small ones. The bank is the same for any value.
  """
  options = _split_options(_bank_options(data_config), split)
  charset = options["charset"]
  word_height, bank_size = options["word_height"], options["bank_size"]
  fonts = _split_fonts(options, split)
  metrics = {}
  for font in fonts:
    metrics[font.name] = font_metrics(font, charset)
    if not any(c.isalpha() for c in metrics[font.name].coverage):
      raise ValueError(f"Font {font.path or font.name} has no glyph for any "
                       f"letter of data.charset {charset!r}.")
  seed = [options["bank_seed"], _SPLITS.index(split)]
  rng = np.random.default_rng(seed)

  text_file = options["text_file"]
  if text_file:
    words = read_text_words(text_file, charset, options["skip_unknown_chars"])
    # Eval starts half-way through the text, so it reads other passages.
    stream = _cycle_from(words, 0 if split == "train" else len(words) // 2)
  else:
    stream = _wordfreq_stream(charset, np.random.default_rng(seed + [1]))

  quotas = _writer_quotas(bank_size, options["words_per_writer"], rng)
  font_order = rng.permutation(len(fonts))
  styles = []
  for writer_id in range(len(quotas)):
    font = fonts[font_order[writer_id % len(fonts)]]
    styles.append(sample_writer_style(font, metrics[font.name], rng,
                                      options["shape_distortion"]))
  coverage = {name: m.coverage for name, m in metrics.items()}
  assignments = _assign_words(stream, styles, quotas, coverage)

  tasks = [(seed, writer_id, style, words, word_height,
            metrics[style.font.name])
           for writer_id, (style, words) in enumerate(zip(styles, assignments))]
  crops = _render_tasks(tasks, bank_size, num_workers, split)

  widths = np.array([c.shape[1] for writer in crops for c in writer], np.int32)
  offsets = np.concatenate([[0], np.cumsum(widths)[:-1]]).astype(np.int32)
  texts = np.empty(bank_size, dtype=object)
  texts[:] = [word for words in assignments for word in words]
  return WordBank(
      strip=np.concatenate([c for writer in crops for c in writer], axis=1),
      offsets=offsets,
      widths=widths,
      texts=texts,
      writers=np.repeat(np.arange(len(quotas), dtype=np.int32), quotas),
      writer_names=tuple(f"{s.font.name}#{i}" for i, s in enumerate(styles)),
      font_names=tuple(s.font.name for s in styles))


def _render_tasks(tasks, total, num_workers, split):
  """Runs `_render_writer_words` over `tasks`, logging progress."""
  if num_workers is None:
    num_workers = _default_num_workers(total)
  logging.info("Rendering a %s word bank: %d words, %d writers, %d processes.",
               split, total, len(tasks), num_workers)
  start = last_log = time.monotonic()
  done, crops = 0, []

  def collect(results):
    nonlocal done, last_log
    for writer_crops in results:
      crops.append(writer_crops)
      done += len(writer_crops)
      now = time.monotonic()
      if now - last_log >= _LOG_EVERY_SECONDS or done == total:
        rate = done / max(now - start, 1e-9)
        logging.info("Word bank (%s): %d/%d words, %.0f words/s, ETA %.0f s.",
                     split, done, total, rate, (total - done) / rate)
        last_log = now

  if num_workers > 1:
    try:
      with concurrent.futures.ProcessPoolExecutor(
          num_workers, mp_context=_worker_context()) as executor:
        collect(executor.map(_render_writer_words, tasks))
      return crops
    except concurrent.futures.process.BrokenProcessPool as e:
      logging.warning("Word bank workers failed (%s); rendering in this "
                      "process instead.", e)
      crops.clear()
      done = 0
  collect(map(_render_writer_words, tasks))
  return crops


def _worker_context():
  """The multiprocessing context of the rendering workers."""
  # Fork where there is fork: workers start at once and, unlike spawn, do not
  # re-import the caller's __main__ (which may lack a main guard, or import
  # JAX and TensorFlow). Workers only run PIL and NumPy, never the libraries
  # whose threads the caller may be running, so forking is safe here.
  if "fork" in multiprocessing.get_all_start_methods():
    return multiprocessing.get_context("fork")
  return multiprocessing.get_context("spawn")


# --- Cache -------------------------------------------------------------------


def _file_digest(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _cache_key(data_config, split: str) -> str:
  """A hash of everything that shapes the bank of `split`."""
  options = _split_options(_bank_options(data_config), split)
  text_file = options.pop("text_file")
  # Only the split's own fonts shape its bank: a training font added or held
  # out elsewhere leaves the eval bank (and its cache file) as it was.
  fonts = _split_fonts(options, split)
  for field in ("font_paths", "extra_fonts", "heldout_fonts"):
    del options[field]
  if text_file and not pathlib.Path(text_file).expanduser().is_file():
    raise ValueError(f"data.text_file: {text_file} does not exist.")
  inputs = dict(
      options,
      fonts=[(f.name, f.hershey, _file_digest(f.path) if f.path else
              importlib.metadata.version("Hershey-Fonts")) for f in fonts],
      text=(_file_digest(pathlib.Path(text_file).expanduser()) if text_file
            else "wordfreq-" + importlib.metadata.version("wordfreq")),
      split=split,
      render_version=RENDER_VERSION,
      pillow=PIL.__version__)
  return hashlib.sha256(
      json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:20]


def word_bank_path(data_config, split: str = "train",
                   cache_dir: str | None = None) -> pathlib.Path:
  """Where `load_word_bank` caches the bank of `data_config` and `split`."""
  cache_dir = cache_dir or data_config.get("cache_dir") or (
      pathlib.Path.home() / ".cache" / "fphtr_jax" / "word_banks")
  return (pathlib.Path(cache_dir).expanduser()
          / f"word_bank_{split}_{_cache_key(data_config, split)}.npz")


def _save(bank: WordBank, path: pathlib.Path):
  """Writes `bank` to `path` atomically (temp file + rename)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.stem,
                                   suffix=".tmp", delete=False) as f:
    try:
      np.savez_compressed(
          f, strip=bank.strip, offsets=bank.offsets, widths=bank.widths,
          texts=bank.texts.astype(str), writers=bank.writers,
          writer_names=np.array(bank.writer_names, str),
          font_names=np.array(bank.font_names, str))
      f.flush()
      os.fsync(f.fileno())
      os.chmod(f.name, 0o644)  # temp files are private; banks are shareable
    except BaseException:
      os.unlink(f.name)
      raise
  os.replace(f.name, path)


def _load(path: pathlib.Path) -> WordBank:
  with np.load(path, allow_pickle=False) as data:
    texts = np.empty(len(data["texts"]), dtype=object)
    texts[:] = data["texts"].tolist()
    return WordBank(
        strip=data["strip"], offsets=data["offsets"], widths=data["widths"],
        texts=texts, writers=data["writers"],
        writer_names=tuple(data["writer_names"].tolist()),
        font_names=tuple(data["font_names"].tolist()))


def load_word_bank(data_config, split: str = "train",
                   cache_dir: str | None = None) -> WordBank:
  """The word bank of `data_config` for `split`, built once then cached.

  Args:
    data_config: the `config.data` section: charset, word_height, bank_size,
      font_paths, extra_fonts, text_file, heldout_fonts, words_per_writer,
      train_words_per_writer, bank_seed, skip_unknown_chars, cache_dir.
    split: "train" (fonts not in data.heldout_fonts) or "eval" (the held-out
      fonts, or all fonts if none; other text than train either way).
    cache_dir: folder of cached banks; None = data.cache_dir, else
      ~/.cache/fphtr_jax/word_banks.

  Returns:
    The `WordBank`: data.bank_size words of data.word_height pixels.
  """
  path = word_bank_path(data_config, split, cache_dir)
  if path.exists():
    logging.info("Loading the %s word bank from %s.", split, path)
    return _load(path)
  start = time.monotonic()
  bank = build_word_bank(data_config, split)
  _save(bank, path)
  logging.info("Built the %s word bank (%d words) in %.1f s; saved to %s.",
               split, len(bank), time.monotonic() - start, path)
  return bank
