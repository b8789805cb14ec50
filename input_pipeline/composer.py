"""Synthetic handwritten words, lines and pages, composed from a word bank in TF ops.

The FPHTR recipe: take a contiguous span of one writer's words and stitch the
word images into lines, and the lines into a page, with random word gaps, line
gaps and margins. Every word image of a bank has the same height with the
baseline on the same row, so pasting words at the same top row lines up their
baselines, punctuation included.

Everything per example is TF graph ops on tensors captured from the bank (no
Python callbacks), so composition runs in parallel inside `tf.data`, and every
random choice comes from stateless ops: an example is a pure function of its
seed.

Layout ranges in the config are in pixels at a word height of 40 px (IAM at
half resolution, ~140 dpi) and are scaled by the bank's word height.

Pages may be laid out on a canvas taller than the image
(`data.layout_height`): they hold more lines, and the fit onto the image
writes a page with more lines than the image holds at the word height
smaller, as a real page shrunk onto the canvas is. A canvas wider than the
image (`data.layout_width`) does the same for long lines: a page's lines
still break at `data.line_width`, but a lone line (`compose(one_line=...)`)
runs to the canvas's edge, so a long one is written smaller, as a real
line scan of 8-12 words is shrunk onto the canvas.

Two options make lines less regular than a font's (both off at 0):
`data.line_gap_jitter` draws each gap between lines on its own, and
`data.line_tilt` tilts each line and lets it wander (`_line_shifts`).
`data.crossed_out` strikes a share of the words through, as a writer
crosses out a mistake; they stay on the page and leave the text, as a
transcriber skips them (`_crossed_out`, `_strike`). `data.short_lines`
ends a page's line after a word with that chance, before the line is full,
as a paragraph's last line, a list's item or an address's line ends.
"""

import dataclasses

import numpy as np
import tensorflow as tf

LEVELS = ("form", "line", "word")
# Attached to the word before: no space in the text and a narrow gap on the page.
PUNCTUATION = frozenset(",.;:!?")
# The word height the config's pixel ranges are written for.
REFERENCE_WORD_HEIGHT = 40
# Height of the middle of the lower-case letters, as a fraction of the word height
# (the baseline is at wordbank.rendering.BASELINE_FRACTION = 0.72).
GLYPH_CENTRE_FRACTION = 0.6
# Separators written before a word in the target text, by code.
_SEPARATORS = ("", " ", "\n")
_NO_SEPARATOR, _SPACE, _NEWLINE = 0, 1, 2
# Largest data.line_tilt, degrees: steeper lines are not a page's lines any more.
MAX_LINE_TILT = 10.0
# A line's wander: amplitude up to WANDER * word_height per degree of data.line_tilt.
WANDER = 0.1
# Largest data.crossed_out: a page with more struck words is not worth reading.
MAX_CROSSED_OUT = 0.5
# Largest data.short_lines: past it most lines would hold a word or two.
MAX_SHORT_LINES = 0.5


@dataclasses.dataclass(frozen=True)
class Layout:
  """Pixel ranges (inclusive) for one level and canvas, resolved from the config."""

  level: str
  canvas_height: int
  canvas_width: int
  word_height: int
  num_words: tuple[int, int]  # words drawn from the writer's text
  word_gap: tuple[int, int]
  line_width: tuple[int, int]
  line_gap: tuple[int, int]
  margin_x: tuple[int, int]  # left and right
  margin_y: tuple[int, int]  # top and bottom
  max_chars: int  # longest target text, in characters
  max_lines: int  # static bound on the lines of one example
  line_gap_jitter: float = 0.0  # each line gap is line_gap times U[1 - j, 1 + j]
  line_tilt: float = 0.0  # degrees: each line's slope in [-tilt, tilt], and its wander
  crossed_out: float = 0.0  # share of the words struck through and left out of the text
  min_page_height: int = 0  # pages' heights drawn in [this, canvas_height]; 0 = canvas_height
  short_lines: float = 0.0  # chance that a page's line ends after a word that would fit


def _scaled(value_range, scale: float, field: str) -> tuple[int, int]:
  lo, hi = value_range
  if not 0 <= lo <= hi:
    raise ValueError(
      f"data.{field}={tuple(value_range)} must be a range (lo, hi) with 0 <= lo <= hi."
    )
  return int(round(lo * scale)), int(round(hi * scale))


def _fit(value_range: tuple[int, int], cap: int) -> tuple[int, int]:
  """Shrinks a range proportionally so that its upper end is at most `cap`."""
  lo, hi = value_range
  cap = max(cap, 0)
  if hi <= cap:
    return value_range
  return int(lo * cap / hi) if hi else 0, cap


def _layout_size(data_config, axis: str, image_size: int) -> int:
  """data.layout_<axis> in pixels (0 = data.image_<axis>); an error below the image's."""
  size = int(data_config.get(f"layout_{axis}", 0))
  if size and size < image_size:
    raise ValueError(
      f"data.layout_{axis}={size} is below data.image_{axis}={image_size}; use 0 (pages "
      "laid out on the canvas) or a larger page."
    )
  return size or image_size


def resolve_layout(data_config, word_height: int, level: str | None = None) -> Layout:
  """Turns `config.data` into the pixel ranges of one level on the fixed canvas."""
  level = level or data_config.level
  if level not in LEVELS:
    raise ValueError(f"data.level={level!r} is not one of {LEVELS}.")
  height, width = int(data_config.image_height), int(data_config.image_width)
  if height < word_height:
    raise ValueError(
      f"data.image_height={height} is smaller than the word height {word_height} "
      "(data.word_height); a word would not fit the canvas."
    )
  max_chars = int(data_config.max_len) - 2  # <SOS> and <EOS>
  if max_chars < 1:
    raise ValueError(f"data.max_len={data_config.max_len} leaves no room for text; use >= 3.")
  scale = word_height / REFERENCE_WORD_HEIGHT
  word_gap = _scaled(data_config.word_gap, scale, "word_gap")
  line_width = _scaled(data_config.line_width, scale, "line_width")
  line_gap = _scaled(data_config.line_gap, scale, "line_gap")
  margin = _scaled(data_config.page_margin, scale, "page_margin")
  # Absent from data configs made before these fields existed: off.
  jitter = float(data_config.get("line_gap_jitter", 0.0))
  tilt = float(data_config.get("line_tilt", 0.0))
  crossed_out = float(data_config.get("crossed_out", 0.0))
  short_lines = float(data_config.get("short_lines", 0.0))
  if not 0 <= jitter <= 1:
    raise ValueError(f"data.line_gap_jitter={jitter} must be in [0, 1] (0 = even line gaps).")
  if not 0 <= tilt <= MAX_LINE_TILT:
    raise ValueError(
      f"data.line_tilt={tilt} must be in [0, {MAX_LINE_TILT}] degrees (0 = straight lines)."
    )
  if not 0 <= crossed_out <= MAX_CROSSED_OUT:
    raise ValueError(
      f"data.crossed_out={crossed_out} must be in [0, {MAX_CROSSED_OUT}] (0 = no word struck "
      "through)."
    )
  if not 0 <= short_lines <= MAX_SHORT_LINES:
    raise ValueError(
      f"data.short_lines={short_lines} must be in [0, {MAX_SHORT_LINES}] (0 = every line "
      "runs to the page's line width)."
    )

  if level == "form":
    # A page laid out taller (or wider) than the canvas holds more lines (or
    # longer lone lines); the fit onto the canvas then writes them smaller
    # (common.ink_to_image).
    image_height = height
    height = _layout_size(data_config, "height", height)
    width = _layout_size(data_config, "width", width)
    min_page_height = int(data_config.get("layout_height_min", 0))
    if min_page_height and not image_height <= min_page_height <= height:
      raise ValueError(
        f"data.layout_height_min={min_page_height} must be 0 (every page as tall as the "
        f"layout) or in [data.image_height={image_height}, the layout's height {height}]."
      )
    num_words = tuple(data_config.words_per_form)
    # Margins of a small canvas shrink so that the text keeps most of the page.
    margin_x = _fit(margin, width // 8)
    margin_y = _fit(margin, min(height // 8, (height - word_height) // 2))
    usable = height - 2 * margin_y[0]
    # The smallest gap a jittered line gap can round to.
    least_gap = int(line_gap[0] * (1 - jitter))
    max_lines = max(1, (usable + least_gap) // (word_height + least_gap))
  else:
    min_page_height = 0
    num_words = tuple(data_config.words_per_line) if level == "line" else (1, 1)
    # A line or a word sits near the left edge, anywhere in height.
    margin_x = (0, min(word_gap[1], width // 8))
    margin_y = (0, 0)
    max_lines = 1
  if not 1 <= num_words[0] <= num_words[1]:
    raise ValueError(
      f"Words per example {num_words} must be a range (lo, hi) with 1 <= lo <= hi "
      "(data.words_per_form / data.words_per_line)."
    )
  return Layout(
    level=level,
    canvas_height=height,
    canvas_width=width,
    word_height=word_height,
    num_words=num_words,
    word_gap=word_gap,
    line_width=line_width,
    line_gap=line_gap,
    margin_x=margin_x,
    margin_y=margin_y,
    max_chars=max_chars,
    max_lines=min(max_lines, num_words[1]),
    line_gap_jitter=jitter,
    line_tilt=tilt,
    crossed_out=crossed_out,
    min_page_height=min_page_height,
    short_lines=short_lines if level == "form" else 0.0,
  )


def _randint(seed, lo, hi, shape=()):
  """int32 uniform in [lo, hi] (inclusive); bounds may be tensors."""
  lo = tf.cast(lo, tf.float32)
  hi = tf.cast(hi, tf.float32)
  u = tf.random.stateless_uniform(shape, seed, alg="philox")
  return tf.cast(tf.floor(lo + u * (hi - lo + 1.0)), tf.int32)


class SyntheticComposer:
  """Composes words, lines or pages from a word bank (see wordbank.bank.WordBank).

  `compose(seed)` is pure TF: call it inside `tf.data.Dataset.map`.
  """

  def __init__(self, bank, data_config, level: str | None = None):
    strip = np.asarray(bank.strip, np.uint8)
    if strip.ndim != 2 or len(bank.offsets) == 0:
      raise ValueError("The word bank is empty or its strip is not [word_height, width] uint8.")
    word_height = strip.shape[0]
    self.layout = layout = resolve_layout(data_config, word_height, level)
    texts = [str(t) for t in bank.texts]
    widths = np.asarray(bank.widths, np.int32)
    lengths = np.array([len(t) for t in texts], np.int32)
    punctuation = np.array([t in PUNCTUATION for t in texts])
    writers = np.asarray(bank.writers)
    # Each word's writer's range of words (they are contiguous in the bank).
    change = np.flatnonzero(np.diff(writers)) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [len(writers)]])
    run = np.repeat(np.arange(len(starts)), ends - starts)

    # Words an example may start with: they always fit, so no example is empty.
    room = layout.canvas_width - (
      2 * layout.margin_x[1] if layout.level == "form" else layout.margin_x[1]
    )
    valid = (widths <= room) & (lengths <= layout.max_chars)
    if layout.level != "word":
      valid &= ~punctuation
    if not valid.any():
      raise ValueError(
        f"No word of the bank fits a {layout.canvas_height}x{layout.canvas_width} canvas with "
        f"data.max_len={data_config.max_len} (widest room {room} px); enlarge "
        "data.image_width or data.max_len, or lower data.word_height."
      )
    self.start_words = tf.constant(np.flatnonzero(valid).astype(np.int32))

    # A blank column at the end of the strip: every miss of the layout reads it.
    self.blank_column = strip.shape[1]
    self.strip_columns = tf.constant(
      np.concatenate([strip.T, np.zeros((1, word_height), np.uint8)])
    )
    self.offsets = tf.constant(np.asarray(bank.offsets, np.int32))
    self.widths = tf.constant(widths)
    self.lengths = tf.constant(lengths)
    self.punctuation = tf.constant(punctuation)
    self.writer_start = tf.constant(starts[run].astype(np.int32))
    self.writer_count = tf.constant((ends - starts)[run].astype(np.int32))
    self.texts = tf.constant(texts, tf.string)

  def compose(self, seed, word_cap=None, one_line=None) -> dict[str, tf.Tensor]:
    """One example from a stateless seed (int32/int64 [2]).

    `word_cap` (int32 scalar, optional) caps the words drawn, which then
    range over [min(low, word_cap), word_cap]: the training curriculum's knob.
    `one_line` (bool scalar, optional): where true, the words run on one line
    to the canvas's edge (not breaking at data.line_width), and those past it
    are dropped: a lone line, however long.

    Returns a dict:
      ink: uint8 [H, W], 0 = paper, 255 = full ink.
      text: tf.string scalar, the words drawn, lines joined by "\\n".
      boxes: int32 [max_words, 4] (top, left, bottom, right), bottom/right
        exclusive, of each word drawn; zeros past `num_words`.
      word_ids: int32 [max_words], bank index of each word drawn; -1 past `num_words`.
      num_words, num_lines: int32 scalars.
      content_box: int32 [4] (top, left, bottom, right) around all words.
      glyph_centres: float32 [max_chars + 1, 2], (y, x) of each character of
        the text and then of <EOS> (see `_glyph_centres`).
      line_boxes: int32 [max_lines, 4] (top, left, bottom, right), bottom/right
        exclusive, around the words of each line; zeros past `num_lines`.
      crossed_out: bool [max_words], the words drawn struck through; their
        text, and the separator before it, are not in `text`.
    """
    lay = self.layout
    height, width, word_height = lay.canvas_height, lay.canvas_width, lay.word_height
    max_words = lay.num_words[1]
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=8)

    # A contiguous span of one writer's words, wrapping around within the writer.
    start = tf.gather(self.start_words, _randint(seeds[0], 0, tf.size(self.start_words) - 1))
    least, most = lay.num_words
    if word_cap is not None:
      most = tf.clip_by_value(tf.cast(word_cap, tf.int32), 1, most)
      least = tf.minimum(least, most)
    num_sampled = _randint(seeds[1], least, most)
    first = tf.gather(self.writer_start, start)
    count = tf.gather(self.writer_count, start)
    position = tf.range(max_words, dtype=tf.int32)
    ids = first + (start - first + position) % count
    word_widths = tf.gather(self.widths, ids)
    is_punctuation = tf.gather(self.punctuation, ids)

    # A writer keeps a habitual word spacing, give or take a quarter.
    gap_seed, jitter_seed = tf.unstack(tf.random.experimental.stateless_split(seeds[2], num=2))
    gap = _randint(gap_seed, lay.word_gap[0], lay.word_gap[1])
    gaps = gap + _randint(jitter_seed, -(gap // 4), gap // 4, [max_words])
    gaps = tf.where(is_punctuation, 0, gaps)
    left, right = tf.unstack(_randint(seeds[3], lay.margin_x[0], lay.margin_x[1], [2]))
    if lay.level == "form":
      top, bottom = tf.unstack(_randint(seeds[4], lay.margin_y[0], lay.margin_y[1], [2]))
      page_height = self._page_height(seeds[7])
      # Rows a line's shifts may take: the first line always fits.
      room = page_height - top - bottom - word_height
    else:
      bottom, right = 0, 0
      room = height - word_height  # the top row is drawn once the line's shifts are known
    line_gap = _randint(seeds[5], lay.line_gap[0], lay.line_gap[1])
    line_width = tf.minimum(
      _randint(seeds[6], lay.line_width[0], lay.line_width[1]), width - left - right
    )
    if one_line is not None:
      line_width = tf.where(one_line, width - left - right, line_width)
    # Punctuation may run into the right margin rather than start a line.
    limits = tf.where(is_punctuation, width - left, line_width)
    breaks = self._short_line_breaks(seeds[7], is_punctuation, one_line)

    # Greedy line breaking: a word goes on the current line while it fits
    # (and no short line ends before it).
    def place(state, word):
      line, _, end, words_on_line = state
      word_width, gap, limit, breaks_before = word
      x = tf.where(words_on_line > 0, end + gap, 0)
      new_line = (words_on_line > 0) & ((x + word_width > limit) | breaks_before)
      x = tf.where(new_line, 0, x)
      return (
        line + tf.cast(new_line, tf.int32),
        x,
        x + word_width,
        tf.where(new_line, 1, words_on_line + 1),
      )

    zero = tf.constant(0, tf.int32)
    lines, xs, _, _ = tf.scan(
      place, (word_widths, gaps, limits, breaks), initializer=(zero, zero, zero, zero)
    )

    # Separators in the text: none first, "\n" on a new line, none before punctuation.
    new_line = tf.concat([[False], lines[1:] != lines[:-1]], axis=0)
    separators = tf.where(new_line, _NEWLINE, tf.where(is_punctuation, _NO_SEPARATOR, _SPACE))
    separators = tf.concat([[_NO_SEPARATOR], separators[1:]], axis=0)
    chars = tf.gather(self.lengths, ids) + tf.cast(separators != _NO_SEPARATOR, tf.int32)
    # seeds[7] is new with the options below: the draws of seeds[:7] stay as they were.
    line_gap_seed, shift_seed = tf.unstack(tf.random.experimental.stateless_split(seeds[7], 2))
    crossed_seed, strike_seed = tf.unstack(
      tf.random.experimental.stateless_split(
        tf.random.experimental.stateless_fold_in(seeds[7], 1), 2
      )
    )
    crossed = self._crossed_out(crossed_seed, new_line, is_punctuation)
    chars = tf.where(crossed, 0, chars)

    # Keep the longest prefix that fits: the text stays exactly the words drawn.
    fits = (
      (position < num_sampled)
      & (left + xs + word_widths <= width)
      & (tf.cumsum(chars) <= lay.max_chars)
    )
    candidate = tf.cast(tf.math.cumprod(tf.cast(fits, tf.int32)), tf.bool)
    line_index = tf.range(lay.max_lines, dtype=tf.int32)
    line_words = candidate[None, :] & (lines[None, :] == line_index[:, None])
    line_ends = tf.reduce_max(tf.where(line_words, (xs + word_widths)[None, :], 0), axis=1)
    shifts = self._line_shifts(shift_seed, line_ends, left, room)
    spans = tf.reduce_max(shifts, axis=1)
    if lay.level == "form":
      # Each gap on its own: line_gap times U[1 - jitter, 1 + jitter], >= 0 as jitter <= 1.
      factors = 1.0 + lay.line_gap_jitter * tf.random.stateless_uniform(
        [lay.max_lines], line_gap_seed, -1.0, 1.0, alg="philox"
      )
      line_gaps = tf.cast(tf.round(tf.cast(line_gap, tf.float32) * factors), tf.int32)
      # A line keeps its word height plus its span of shifts: lines never overlap.
      pitches = word_height + spans + line_gaps
      line_tops = top + tf.concat([[0], tf.cumsum(pitches)[:-1]], axis=0)
      # Whole lines only (line tops only grow): a line cut at the bottom is dropped.
      lines_that_fit = tf.reduce_sum(
        tf.cast(line_tops + word_height + spans <= page_height - bottom, tf.int32)
      )
    else:
      top = _randint(seeds[4], 0, height - word_height - spans[0])
      line_tops = top[None]
      lines_that_fit = 1
    if one_line is not None:
      lines_that_fit = tf.where(one_line, 1, lines_that_fit)  # the first line always fits
    kept = candidate & (lines < lines_that_fit)
    num_words = tf.reduce_sum(tf.cast(kept, tf.int32))
    num_lines = tf.gather(lines, num_words - 1) + 1

    pieces = tf.strings.join(
      [
        tf.gather(tf.constant(_SEPARATORS), separators[:num_words]),
        tf.gather(self.texts, ids[:num_words]),
      ]
    )
    text = tf.strings.reduce_join(tf.where(crossed[:num_words], "", pieces))

    ink = self._render(
      ids,
      lines,
      xs,
      word_widths,
      kept,
      num_words,
      num_lines,
      left,
      line_tops,
      shifts,
      crossed,
      strike_seed,
    )

    word_lines = tf.minimum(lines, lay.max_lines - 1)
    tops = tf.gather(line_tops, word_lines)
    lefts = left + xs
    # A word's box spans its line's shifts over the word's own columns.
    columns = tf.range(width, dtype=tf.int32)[None, :]
    in_word = (columns >= lefts[:, None]) & (columns < (lefts + word_widths)[:, None])
    word_shifts = tf.gather(shifts, word_lines)
    shift_low = tf.reduce_min(tf.where(in_word, word_shifts, height), axis=1)
    shift_high = tf.reduce_max(tf.where(in_word, word_shifts, 0), axis=1)
    boxes = tf.stack(
      [tops + shift_low, lefts, tops + shift_high + word_height, lefts + word_widths], axis=1
    )
    boxes = tf.where(kept[:, None], boxes, 0)
    content_box = tf.stack(
      [
        tf.reduce_min(tf.where(kept, boxes[:, 0], height)),
        left,
        tf.reduce_max(tf.where(kept, boxes[:, 2], 0)),
        tf.reduce_max(tf.where(kept, lefts + word_widths, 0)),
      ]
    )
    glyphs = self._glyph_centres(
      separators,
      chars,
      tf.gather(self.lengths, ids),
      gaps,
      tops,
      lefts,
      word_widths,
      num_words,
      word_lines,
      shifts,
    )
    # Each line's box: the union of its words' boxes.
    on_line = kept[None, :] & (lines[None, :] == tf.range(lay.max_lines, dtype=tf.int32)[:, None])
    line_boxes = tf.stack(
      [
        tf.reduce_min(tf.where(on_line, boxes[None, :, 0], height), axis=1),
        tf.reduce_min(tf.where(on_line, boxes[None, :, 1], width), axis=1),
        tf.reduce_max(tf.where(on_line, boxes[None, :, 2], 0), axis=1),
        tf.reduce_max(tf.where(on_line, boxes[None, :, 3], 0), axis=1),
      ],
      axis=1,
    )
    line_boxes = tf.where(tf.reduce_any(on_line, axis=1)[:, None], line_boxes, 0)
    return {
      "ink": ink,
      "text": text,
      "boxes": boxes,
      "word_ids": tf.where(kept, ids, -1),
      "num_words": num_words,
      "num_lines": num_lines,
      "content_box": content_box,
      "glyph_centres": glyphs,
      "line_boxes": line_boxes,
      "crossed_out": crossed & kept,
    }

  def _glyph_centres(
    self, separators, chars, lengths, gaps, tops, lefts, widths, num_words, word_lines, shifts
  ):
    """float32 [max_chars + 1, 2]: (y, x) on the canvas of each text character, then <EOS>.

    A letter sits at its share of its word's width (letters are taken as
    equally wide), at the middle of the lower-case letters, moved down by its
    line's shift at its column. A space sits in the gap before its word; a
    line break and <EOS> just right of the word they follow. Rows past <EOS>
    are zero.
    """
    word_height, width = self.layout.word_height, self.layout.canvas_width
    position = tf.range(self.layout.max_chars + 1, dtype=tf.int32)
    ends = tf.cumsum(chars[:num_words])
    # Positions at and past the end of the text belong to <EOS>, after the last word.
    word = tf.minimum(tf.searchsorted(ends, position, side="right"), num_words - 1)
    offset = position - (tf.gather(ends, word) - tf.gather(chars, word))
    has_separator = tf.gather(separators, word) != _NO_SEPARATOR
    letter = offset - tf.cast(has_separator, tf.int32)
    length = tf.cast(tf.gather(lengths, word), tf.float32)
    letter_x = tf.cast(tf.gather(lefts, word), tf.float32) + (
      tf.cast(letter, tf.float32) + 0.5
    ) / length * tf.cast(tf.gather(widths, word), tf.float32)
    # A separator or <EOS> follows word `before`.
    is_eos = position >= tf.gather(ends, num_words - 1)
    before = tf.where(is_eos, num_words - 1, tf.maximum(word - 1, 0))
    is_space = ~is_eos & (tf.gather(separators, word) == _SPACE)
    after_gap = tf.where(
      is_space, tf.cast(tf.gather(gaps, word), tf.float32) / 2.0, word_height / 4.0
    )
    after_x = tf.cast(tf.gather(lefts, before) + tf.gather(widths, before), tf.float32) + after_gap
    after = is_eos | (has_separator & (offset == 0))
    x = tf.where(after, after_x, letter_x)
    owner = tf.where(after, before, word)
    column = tf.clip_by_value(tf.cast(tf.floor(x), tf.int32), 0, width - 1)
    shift = tf.gather_nd(shifts, tf.stack([tf.gather(word_lines, owner), column], axis=1))
    y = tf.cast(tf.gather(tops, owner) + shift, tf.float32) + GLYPH_CENTRE_FRACTION * word_height
    centres = tf.stack([y, x], axis=1)
    in_text = position <= tf.gather(ends, num_words - 1)
    return tf.where(in_text[:, None], centres, 0.0)

  def _page_height(self, seed):
    """int32 scalar: the rows a page's lines may fill, from its top.

    The layout's height, or with data.layout_height_min one drawn in
    [layout_height_min, layout height], so that pages of every line count
    fill the canvas once fitted onto it, a short page at full size as well as
    a long one written smaller.
    """
    lay = self.layout
    if not lay.min_page_height:
      return tf.constant(lay.canvas_height, tf.int32)
    seed = tf.random.experimental.stateless_fold_in(seed, 2)
    return _randint(seed, lay.min_page_height, lay.canvas_height)

  def _line_shifts(self, seed, line_ends, left, room):
    """int32 [max_lines, W]: how far down each line's ink is moved at each canvas column.

    With data.line_tilt > 0, a line slopes at an angle drawn in [-tilt, tilt]
    degrees and wanders along a sine of one canvas width's period, a random
    phase and an amplitude drawn in [0, WANDER * word_height * tilt]. Shifts
    count from the line's highest point over its columns, from `left` to
    `left + line_ends` (past its ends a line keeps its end value), so they are
    >= 0 and the line's ink stays within its word height plus its span (its
    largest shift) below its top row. A span over `room` rows is scaled down
    to it, so that a line alone always fits the canvas.
    """
    lay = self.layout
    max_lines, width = lay.max_lines, lay.canvas_width
    if not lay.line_tilt:
      return tf.zeros([max_lines, width], tf.int32)
    slope, amplitude, phase = tf.unstack(
      tf.random.stateless_uniform([3, max_lines, 1], seed, alg="philox")
    )
    slope = tf.tan(np.radians(lay.line_tilt) * (2.0 * slope - 1.0))
    amplitude = WANDER * lay.word_height * lay.line_tilt * amplitude
    last = left + tf.maximum(line_ends, 1)[:, None] - 1
    column = tf.minimum(tf.maximum(tf.range(width, dtype=tf.int32)[None, :], left), last)
    column = tf.cast(column, tf.float32)
    raw = slope * column + amplitude * tf.sin(2.0 * np.pi * (column / width + phase))
    low = tf.reduce_min(raw, axis=1, keepdims=True)
    spread = tf.reduce_max(raw, axis=1, keepdims=True) - low
    room = tf.cast(room, tf.float32)
    scale = tf.where(spread > room, tf.math.divide_no_nan(room, spread), 1.0)
    return tf.cast(tf.round((raw - low) * scale), tf.int32)

  def _short_line_breaks(self, seed, is_punctuation, one_line):
    """bool [max_words]: the words a short line ends before, each with chance
    data.short_lines; never punctuation (it stays on its word's line), and
    none on a lone line."""
    max_words = self.layout.num_words[1]
    if not self.layout.short_lines:
      return tf.zeros([max_words], tf.bool)
    # A stream of its own: the other draws stay as they were without short lines.
    seed = tf.random.experimental.stateless_fold_in(seed, 2)
    draw = tf.random.stateless_uniform([max_words], seed, alg="philox")
    breaks = (draw < self.layout.short_lines) & ~is_punctuation
    if one_line is not None:
      breaks = breaks & ~one_line
    return breaks

  def _crossed_out(self, seed, new_line, is_punctuation):
    """bool [max_words]: the words to strike through, a share data.crossed_out of them.

    Never a line's first word, punctuation, or a word punctuation attaches
    to: so the text keeps every line, and its separators stay as they were
    (the word after a struck one keeps its space or line break).
    """
    max_words = self.layout.num_words[1]
    if not self.layout.crossed_out:
      return tf.zeros([max_words], tf.bool)
    draw = tf.random.stateless_uniform([max_words], seed, alg="philox")
    before_punctuation = tf.concat([is_punctuation[1:], [False]], axis=0)
    first = tf.range(max_words) == 0
    return (draw < self.layout.crossed_out) & ~(
      first | new_line | is_punctuation | before_punctuation
    )

  def _strike(self, line_images, seed, word, struck, along, widths):
    """Line images with a pen stroke through the struck words' letters.

    Each struck word gets one stroke across its width, near the middle of its
    short letters, sloping by up to a tenth, 4-8% of the word height thick
    (at least a pixel and a half), in ink as dark as a writer's.

    Args:
      line_images: uint8 [max_lines, W, word_height].
      seed: the strokes' draws, one set a word.
      word: int32 [max_lines, W], the word at each column of each line.
      struck: bool [max_lines, W], the columns of struck words.
      along: int32 [max_lines, W], the column within its word.
      widths: int32 [max_lines, W], its word's width.
    """
    word_height = self.layout.word_height
    slope, centre, thickness, darkness = [
      tf.gather(v, word)
      for v in tf.unstack(
        tf.random.stateless_uniform([4, self.layout.num_words[1]], seed, alg="philox")
      )
    ]
    centre = word_height * (GLYPH_CENTRE_FRACTION - 0.08 + 0.12 * centre)
    offset = tf.cast(along, tf.float32) - tf.cast(widths, tf.float32) / 2.0
    row = centre + 0.1 * (2.0 * slope - 1.0) * offset  # [max_lines, W]
    half = tf.maximum(word_height * (0.04 + 0.04 * thickness), 1.5) / 2.0
    distance = tf.abs(tf.range(word_height, dtype=tf.float32) - row[..., None])
    # Anti-aliased: full ink within the stroke, a pixel's fade at its edges.
    cover = tf.clip_by_value(half[..., None] + 0.5 - distance, 0.0, 1.0)
    ink = (160.0 + 95.0 * darkness)[..., None] * cover
    ink = tf.where(struck[..., None], ink, 0.0)
    return tf.maximum(line_images, tf.cast(tf.round(ink), tf.uint8))

  def _render(
    self,
    ids,
    lines,
    xs,
    word_widths,
    kept,
    num_words,
    num_lines,
    left,
    line_tops,
    shifts,
    crossed,
    strike_seed,
  ):
    """uint8 [H, W] canvas by gathering strip columns, then pixels: no scatter, no loop.

    crossed: bool [max_words], the words to strike through (`_strike`, with
    `strike_seed`), drawn on their line before the line takes its shifts.
    """
    lay = self.layout
    height, width, word_height = lay.canvas_height, lay.canvas_width, lay.word_height
    max_lines = lay.max_lines
    # Word j covers keys line_j * stride + [x_j, x_j + w_j); keys rise with j.
    stride = width + 1
    keys = tf.where(kept, lines * stride + xs, tf.int32.max)
    line_index = tf.range(max_lines, dtype=tf.int32)[:, None]
    x = tf.range(width, dtype=tf.int32)[None, :] - left
    queries = tf.reshape(line_index * stride + x, [1, -1])
    word = tf.reshape(tf.searchsorted(keys[None, :], queries, side="right"), [max_lines, width]) - 1
    word_clipped = tf.maximum(word, 0)
    word_x = tf.gather(xs, word_clipped)
    inside = (
      (word >= 0)
      & (word < num_words)
      & (tf.gather(lines, word_clipped) == line_index)
      & (x - word_x < tf.gather(word_widths, word_clipped))
    )
    column = tf.gather(self.offsets, tf.gather(ids, word_clipped)) + x - word_x
    column = tf.where(inside, column, self.blank_column)
    line_images = tf.gather(self.strip_columns, column)  # [max_lines, W, word_height]
    if lay.crossed_out:
      line_images = self._strike(
        line_images,
        strike_seed,
        word_clipped,
        inside & tf.gather(crossed, word_clipped),
        x - word_x,
        tf.gather(word_widths, word_clipped),
      )

    # Each canvas row's line (line tops only grow) and row below that line's top.
    y = tf.range(height, dtype=tf.int32)
    row_line = tf.searchsorted(line_tops, y, side="right") - 1
    line = tf.maximum(row_line, 0)
    row = y - tf.gather(line_tops, line)
    on_line = (row_line >= 0) & (row_line < num_lines)
    if not lay.line_tilt:
      # Straight lines: a canvas row is a row of its line's image, a gather of whole rows.
      rows = tf.reshape(tf.transpose(line_images, [0, 2, 1]), [max_lines * word_height, width])
      rows = tf.concat([rows, tf.zeros([1, width], tf.uint8)], axis=0)
      on_line &= row < word_height
      return tf.gather(rows, tf.where(on_line, line * word_height + row, max_lines * word_height))
    # Tilted lines: pixel (y, x) shows row y - line top - shift at x of its line's image.
    row = row[:, None] - tf.gather(shifts, line)
    on_line = on_line[:, None] & (row >= 0) & (row < word_height)
    pixels = tf.concat([tf.reshape(line_images, [-1]), tf.zeros([1], tf.uint8)], axis=0)
    source = (line[:, None] * width + tf.range(width, dtype=tf.int32)[None, :]) * word_height + row
    return tf.gather(pixels, tf.where(on_line, source, max_lines * width * word_height))
