"""The font word bank: words rendered in handwriting fonts by synthetic writers.

Builds a `WordBank`: grayscale crops of words written by synthetic "writers",
ready for the synthetic composer to paste into lines and pages. Needs no
download: the fonts are the pip-installed handwriting TTFs (fontpkg-*) and the
Hershey script stroke fonts (`fonts`); the words come from `wordfreq`, or from
any UTF-8 text file (`data.text_file`, see `text`).

A writer is one font plus style parameters drawn once (`writers`: size, slant,
stroke, letter spacing, ink, baseline wobble); every word adds small variations
of its own (`rendering`). With `data.size_drift` and `data.slant_drift`, a
writer's size and slant also drift along their text (`slow_wave`), so that
the words and lines of one page differ in size and slant. A writer never
gets a word with a character its font has no glyph for.

The bank is deterministic (same config -> same bytes) and cached on disk as
one .npz keyed by a hash of everything that shapes it (`cache`).
"""

from collections.abc import Callable, Iterator, Sequence
import concurrent.futures
import dataclasses
import importlib.metadata
import multiprocessing
import os
import pathlib
import time

from absl import logging
import numpy as np
import PIL

from input_pipeline.wordbank import cache, rendering
from input_pipeline.wordbank import fonts as fonts_lib
from input_pipeline.wordbank import text as text_lib
from input_pipeline.wordbank import writers as writers_lib

# Bump whenever a change to the word bank modules changes the rendered pixels
# or texts, so that cached banks are rebuilt.
RENDER_VERSION = 3
_SPLITS = ("train", "eval")
# Banks smaller than this render in-process; starting workers costs more.
_PARALLEL_MIN_WORDS = 2000
_LOG_EVERY_SECONDS = 5.0
# Largest data.size_drift: smaller words than half the writer's size are not
# their handwriting any more.
MAX_SIZE_DRIFT = 0.5
# Largest data.slant_drift, in shear (horizontal pixels per pixel of height):
# as much as the whole range between writers (writers.sample_writer_style).
MAX_SLANT_DRIFT = 0.4
# The period of a writer's size and slant drifts, in words: a line's worth to a few lines'.
_DRIFT_PERIOD = (8.0, 40.0)


@dataclasses.dataclass(frozen=True)
class WordBank:
  """Rendered words, side by side in one strip.

  Every crop has its letters' baseline on row `rendering.baseline_row(word_height)`.
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
    return self.strip[:, self.offsets[i] : self.offsets[i] + self.widths[i]]

  @classmethod
  def from_crops(
    cls,
    crops: Sequence[np.ndarray],
    texts: Sequence[str],
    writers,
    writer_names: Sequence[str],
    font_names: Sequence[str],
  ) -> "WordBank":
    """The bank of `crops` (uint8 [word_height, w_i] each, in bank order) side by side.

    writers: int [N], the writer id of each crop (contiguous per writer).
    """
    widths = np.array([c.shape[1] for c in crops], np.int32)
    text_array = np.empty(len(texts), dtype=object)
    text_array[:] = list(texts)
    return cls(
      strip=np.concatenate(crops, axis=1),
      offsets=np.concatenate([[0], np.cumsum(widths)[:-1]]).astype(np.int32),
      widths=widths,
      texts=text_array,
      writers=np.asarray(writers, np.int32),
      writer_names=tuple(writer_names),
      font_names=tuple(font_names),
    )


# --- Building the bank -------------------------------------------------------


def _bank_options(data_config) -> dict:
  """The `config.data` fields that shape a bank, checked."""
  options = dict(
    charset=text_lib.word_charset(data_config.charset),
    word_height=int(data_config.word_height),
    bank_size=int(data_config.bank_size),
    font_paths=data_config.font_paths or None,
    extra_fonts=data_config.extra_fonts or None,
    text_file=data_config.text_file or None,
    heldout_fonts=tuple(data_config.heldout_fonts),
    words_per_writer=tuple(data_config.words_per_writer),
    train_words_per_writer=tuple(data_config.train_words_per_writer or ()) or None,
    bank_seed=int(data_config.bank_seed),
    skip_unknown_chars=bool(data_config.skip_unknown_chars),
    shape_distortion=float(data_config.shape_distortion),
    # Absent from data configs made before this field existed: off.
    size_drift=float(data_config.get("size_drift", 0.0)),
    slant_drift=float(data_config.get("slant_drift", 0.0)),
  )
  for field in ("font_paths", "extra_fonts"):
    if isinstance(options[field], (list, tuple)):
      options[field] = [str(p) for p in options[field]]
  if options["bank_size"] < 1:
    raise ValueError(f"data.bank_size must be >= 1, got {options['bank_size']}.")
  for field, most in (
    ("shape_distortion", 0.5),
    ("size_drift", MAX_SIZE_DRIFT),
    ("slant_drift", MAX_SLANT_DRIFT),
  ):
    if not 0 <= options[field] <= most:
      raise ValueError(f"data.{field} must be in [0, {most}], got {options[field]}.")
  if options["word_height"] < 8:
    raise ValueError(f"data.word_height must be >= 8, got {options['word_height']}.")
  return options


def _split_fonts(options: dict, split: str) -> list[fonts_lib.FontSource]:
  """Fonts of `split` among those of the bank options: train = all but the
  held-out ones; eval = the held-out ones (all of them if none)."""
  if split not in _SPLITS:
    raise ValueError(f"split must be one of {_SPLITS}, got {split!r}.")
  fonts = fonts_lib.resolve_fonts(options["font_paths"], options["extra_fonts"])
  heldout = options["heldout_fonts"]
  names = {f.name for f in fonts}
  unknown = [name for name in heldout if name not in names]
  if unknown:
    raise ValueError(
      f"data.heldout_fonts: {unknown} are not among the fonts; available: {sorted(names)}."
    )
  if split == "train":
    chosen = [f for f in fonts if f.name not in heldout]
    if not chosen:
      raise ValueError(
        "data.heldout_fonts holds out every font, which leaves no font for training."
      )
    return chosen
  return [f for f in fonts if f.name in heldout] if heldout else fonts


def _split_options(options: dict, split: str) -> dict:
  """The bank options as they apply to `split`: data.shape_distortion, the
  drifts and data.train_words_per_writer are for training only (eval keeps
  the fonts' shapes, one size and slant a writer, and its own writers)."""
  options = dict(options)
  train_words_per_writer = options.pop("train_words_per_writer")
  if split == "train":
    options["words_per_writer"] = train_words_per_writer or options["words_per_writer"]
  else:
    options["shape_distortion"] = 0.0
    options["size_drift"] = 0.0
    options["slant_drift"] = 0.0
  return options


def _writer_quotas(
  bank_size: int, words_per_writer: Sequence[int], rng: np.random.Generator
) -> list[int]:
  """How many words each writer writes: about words_per_writer, >= its low."""
  low, high = words_per_writer
  if not 1 <= low <= high:
    raise ValueError(
      "data.words_per_writer must be (low, high) with "
      f"1 <= low <= high, got {tuple(words_per_writer)}."
    )
  num_writers = int(np.clip(round(2 * bank_size / (low + high)), 1, max(1, bank_size // low)))
  if num_writers * low > bank_size:
    return [bank_size]  # fewer words than one writer's minimum
  # Dirichlet shares: some writers write much more than others.
  extra = rng.multinomial(bank_size - num_writers * low, rng.dirichlet(np.full(num_writers, 2.0)))
  return [low + int(e) for e in extra]


def _assign_words(
  stream: Iterator[str], styles: list[writers_lib.WriterStyle], quotas: list[int], coverage: dict
) -> list[list[str]]:
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
          "text it has glyphs for."
        )
    assignments.append(words)
  if dropped:
    logging.warning(
      "Dropped words with characters no font has a glyph for (character: words): %s", dropped
    )
  return assignments


def slow_wave(num_words: int, rng: np.random.Generator) -> np.ndarray:
  """float [num_words] in [0, 1]: how far along its drift each word of a writer is.

  A sine of a random period (`_DRIFT_PERIOD` words) and phase: neighbouring
  words are alike, and lines a few words apart differ.
  """
  period = rng.uniform(*_DRIFT_PERIOD)
  phase = rng.uniform(0, 2 * np.pi)
  return 0.5 + 0.5 * np.sin(2 * np.pi * np.arange(num_words) / period + phase)


def _render_writer_words(task) -> list[np.ndarray]:
  """Renders one writer's words; a top-level function for worker processes."""
  seed, writer_id, style, words, word_height, metrics, sizes, slants = task
  return [
    rendering.render_word(
      word,
      dataclasses.replace(style, x_height=style.x_height * size, slant=style.slant + slant),
      word_height,
      np.random.default_rng(seed + [writer_id, i]),
      metrics,
    )
    for i, (word, size, slant) in enumerate(zip(words, sizes, slants))
  ]


def _default_num_workers(num_words: int) -> int:
  if num_words < _PARALLEL_MIN_WORDS:
    return 1
  return max(1, min(len(os.sched_getaffinity(0)), 16))


def build_word_bank(data_config, split: str = "train", num_workers: int | None = None) -> WordBank:
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
    metrics[font.name] = rendering.font_metrics(font, charset)
    if not any(c.isalpha() for c in metrics[font.name].coverage):
      raise ValueError(
        f"Font {font.path or font.name} has no glyph for any letter of data.charset {charset!r}."
      )
  seed = [options["bank_seed"], _SPLITS.index(split)]
  rng = np.random.default_rng(seed)

  text_file = options["text_file"]
  if text_file:
    words = text_lib.read_text_words(text_file, charset, options["skip_unknown_chars"])
    # Eval starts half-way through the text, so it reads other passages.
    stream = text_lib.cycle_from(words, 0 if split == "train" else len(words) // 2)
  else:
    stream = text_lib.wordfreq_stream(charset, np.random.default_rng(seed + [1]))

  quotas = _writer_quotas(bank_size, options["words_per_writer"], rng)
  font_order = rng.permutation(len(fonts))
  styles = []
  for writer_id in range(len(quotas)):
    font = fonts[font_order[writer_id % len(fonts)]]
    styles.append(
      writers_lib.sample_writer_style(font, metrics[font.name], rng, options["shape_distortion"])
    )
  coverage = {name: m.coverage for name, m in metrics.items()}
  assignments = _assign_words(stream, styles, quotas, coverage)

  # Each word at 1 - size_drift to 1 times its writer's size, and its writer's
  # slant +- slant_drift; drawn from generators of their own, so that banks
  # without a drift are as they were.
  size_rng, slant_rng = np.random.default_rng(seed + [2]), np.random.default_rng(seed + [3])
  tasks = [
    (
      seed,
      writer_id,
      style,
      words,
      word_height,
      metrics[style.font.name],
      1.0 - options["size_drift"] * slow_wave(len(words), size_rng),
      options["slant_drift"] * (2.0 * slow_wave(len(words), slant_rng) - 1.0),
    )
    for writer_id, (style, words) in enumerate(zip(styles, assignments))
  ]
  crops = _render_tasks(tasks, bank_size, num_workers, split)

  return WordBank.from_crops(
    [c for writer in crops for c in writer],
    [word for words in assignments for word in words],
    writers=np.repeat(np.arange(len(quotas)), quotas),
    writer_names=[f"{s.font.name}#{i}" for i, s in enumerate(styles)],
    font_names=[s.font.name for s in styles],
  )


def _render_tasks(tasks, total, num_workers, split):
  """Runs `_render_writer_words` over `tasks`, logging progress."""
  if num_workers is None:
    num_workers = _default_num_workers(total)
  logging.info(
    "Rendering a %s word bank: %d words, %d writers, %d processes.",
    split,
    total,
    len(tasks),
    num_workers,
  )
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
        logging.info(
          "Word bank (%s): %d/%d words, %.0f words/s, ETA %.0f s.",
          split,
          done,
          total,
          rate,
          (total - done) / rate,
        )
        last_log = now

  if num_workers > 1:
    try:
      with concurrent.futures.ProcessPoolExecutor(
        num_workers, mp_context=_worker_context()
      ) as executor:
        collect(executor.map(_render_writer_words, tasks))
      return crops
    except concurrent.futures.process.BrokenProcessPool as e:
      logging.warning("Word bank workers failed (%s); rendering in this process instead.", e)
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


def _cache_inputs(data_config, split: str) -> dict:
  """Everything that shapes the bank of `split`: the inputs of its cache key."""
  options = _split_options(_bank_options(data_config), split)
  text_file = options.pop("text_file")
  # Only the split's own fonts shape its bank: a training font added or held
  # out elsewhere leaves the eval bank (and its cache file) as it was.
  fonts = _split_fonts(options, split)
  for field in ("font_paths", "extra_fonts", "heldout_fonts"):
    del options[field]
  if text_file:
    text_lib.check_text_file(text_file)
  return dict(
    options,
    fonts=[
      (
        f.name,
        f.hershey,
        cache.file_digest(f.path) if f.path else importlib.metadata.version("Hershey-Fonts"),
      )
      for f in fonts
    ],
    text=(
      cache.file_digest(pathlib.Path(text_file).expanduser())
      if text_file
      else "wordfreq-" + importlib.metadata.version("wordfreq")
    ),
    split=split,
    render_version=RENDER_VERSION,
    pillow=PIL.__version__,
  )


def word_bank_path(data_config, split: str = "train", cache_dir: str | None = None) -> pathlib.Path:
  """Where `load_word_bank` caches the bank of `data_config` and `split`."""
  return cache.bank_path(
    cache_dir or data_config.cache_dir, f"word_bank_{split}", _cache_inputs(data_config, split)
  )


def load_or_build(path: pathlib.Path, build: Callable[[], WordBank], what: str) -> WordBank:
  """The bank cached at `path`; else `build()`, saved there first. `what` names it in the log."""
  if path.exists():
    logging.info("Loading the %s from %s.", what, path)
    return WordBank(**cache.load(path))
  start = time.monotonic()
  bank = build()
  cache.save(bank, path)
  logging.info(
    "Built the %s (%d words) in %.1f s; saved to %s.",
    what,
    len(bank),
    time.monotonic() - start,
    path,
  )
  return bank


def load_word_bank(data_config, split: str = "train", cache_dir: str | None = None) -> WordBank:
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
  return load_or_build(
    word_bank_path(data_config, split, cache_dir),
    lambda: build_word_bank(data_config, split),
    f"{split} word bank",
  )
