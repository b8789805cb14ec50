"""Words to render: made-up English text from wordfreq, or the words of a text file."""

from collections.abc import Iterator, Sequence
import functools
import os
import pathlib

from absl import logging
import numpy as np

_WORDFREQ_LANGUAGE = "en"
_WORDFREQ_VOCABULARY_SIZE = 30_000
# Word probabilities are frequency ** exponent: common words stay common while
# the bank covers more of the vocabulary than raw frequencies would.
_WORDFREQ_EXPONENT = 0.75
# Words the default vocabulary leaves out: page previews are shown to people.
_OFFENSIVE_STEMS = (
  "fuck",
  "shit",
  "cunt",
  "bitch",
  "nigg",
  "whore",
  "slut",
  "pussy",
  "porn",
  "retard",
)
_OFFENSIVE_WORDS = frozenset(
  (
    "dick",
    "dicks",
    "cock",
    "cocks",
    "fag",
    "fags",
    "rape",
    "raped",
    "rapist",
    "bastard",
    "bastards",
    "tits",
    "cum",
    "anal",
  )
)


def word_charset(charset: str) -> str:
  """The characters a word may contain: the charset minus whitespace."""
  return "".join(sorted(set(charset) - set(" \n\t\r")))


@functools.cache
def _wordfreq_vocabulary(charset: str) -> tuple[tuple, np.ndarray]:
  """(words, cumulative probabilities) of the frequent English words."""
  import wordfreq  # pylint: disable=g-import-not-at-top

  allowed = set(charset)
  words, weights = [], []
  vocabulary = wordfreq.top_n_list(_WORDFREQ_LANGUAGE, _WORDFREQ_VOCABULARY_SIZE)
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
      weights.append(frequency**_WORDFREQ_EXPONENT)
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


def _sentence(
  rng: np.random.Generator, words: tuple, cumulative: np.ndarray, allowed: set
) -> list[str]:
  """One made-up sentence: frequent words, capitals, punctuation, numbers."""
  length = int(np.clip(rng.poisson(11), 2, 30))
  core = []
  for _ in range(length):
    if rng.random() < 0.025:
      core.append(_sample_number(rng))
    elif rng.random() < 0.002:
      core.append("&")
    else:
      core.append(words[min(np.searchsorted(cumulative, rng.random()), len(words) - 1)])
  for i, word in enumerate(core):
    if i == 0 or rng.random() < 0.04:  # sentence start, names
      core[i] = word[:1].upper() + word[1:]
    elif rng.random() < 0.006 and len(word) > 1:
      core[i] = word.upper()
  if len(core) > 2 and rng.random() < 0.04:  # compound word
    i = int(rng.integers(0, len(core) - 1))
    core[i : i + 2] = [core[i] + "-" + core[i + 1]]
  opening = [""] * len(core)
  closing = [""] * len(core)
  punctuation = [""] * len(core)
  for marks, probability in ((("(", ")"), 0.08), (('"', '"'), 0.1), (("'", "'"), 0.02)):
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
  punctuation[-1] = "." if end < 0.85 else "?" if end < 0.93 else ("!" if end < 0.99 else "...")
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


def wordfreq_stream(charset: str, rng: np.random.Generator) -> Iterator[str]:
  """Endless made-up English text, one word at a time."""
  words, cumulative = _wordfreq_vocabulary(charset)
  if not words:
    raise ValueError(
      f"data.charset {charset!r} cannot write any English word; add "
      "letters to data.charset or set data.text_file."
    )
  allowed = set(charset)
  while True:
    yield from _sentence(rng, words, cumulative, allowed)


def sample_words(charset: str, num_words: int, seed: int = 0) -> list[str]:
  """`num_words` words of made-up English text, drawn from wordfreq.

  Words follow their frequency (tempered), with sentence capitals, names,
  punctuation attached to words, and numbers; every character is in
  `charset` (whitespace aside).
  """
  stream = wordfreq_stream(word_charset(charset), np.random.default_rng(seed))
  return [next(stream) for _ in range(num_words)]


def check_text_file(path: str):
  """Raises ValueError, naming data.text_file, unless `path` is a readable file."""
  file = pathlib.Path(path).expanduser()
  if file.is_dir():
    raise ValueError(
      f"data.text_file: {path} is a folder; give a UTF-8 text file (its words are rendered)."
    )
  if not file.exists():
    raise ValueError(f"data.text_file: {path} does not exist; give a UTF-8 text file.")
  if not file.is_file():
    raise ValueError(f"data.text_file: {path} is not a regular file; give a UTF-8 text file.")
  if not os.access(file, os.R_OK):
    raise ValueError(f"data.text_file: {path} cannot be read (permission denied).")


def read_text_words(path: str, charset: str, skip_unknown_chars: bool = False) -> list[str]:
  """The words of a UTF-8 text file, in order (split on whitespace).

  Raises:
    ValueError: the file is missing, a folder, unreadable or not UTF-8, has no
      usable word, or has a word with a character outside `charset` (unless
      `skip_unknown_chars`, which skips such words and logs how many).
  """
  allowed = set(word_charset(charset))
  check_text_file(path)
  try:
    text = pathlib.Path(path).expanduser().read_text(encoding="utf-8")
  except OSError as e:
    raise ValueError(f"data.text_file: {path} cannot be read ({e.strerror or e}).") from e
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
          "data.skip_unknown_chars=True to skip such words."
        )
  if skipped:
    logging.warning("Skipped %d words of %s with characters outside data.charset.", skipped, path)
  if not words:
    raise ValueError(
      f"data.text_file: {path} has no usable words (no word made only of data.charset characters)."
    )
  return words


def cycle_from(words: Sequence[str], start: int) -> Iterator[str]:
  """`words` endlessly, in order, from `words[start]` on."""
  while True:
    for i in range(len(words)):
      yield words[(start + i) % len(words)]
