"""Character and word error rates, computed on strings (rapidfuzz Levenshtein).

Rates are corpus-level: total edits over total reference length, the way IAM
results are reported. For CER the line break "\n" is one character like any
other; for WER any whitespace (spaces and line breaks) separates words.
"""

from rapidfuzz.distance import Levenshtein


def _check(references, hypotheses):
  if len(references) != len(hypotheses):
    raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses.")


def character_edits(reference: str, hypothesis: str) -> int:
  return Levenshtein.distance(reference, hypothesis)


def word_edits(reference: str, hypothesis: str) -> int:
  return Levenshtein.distance(reference.split(), hypothesis.split())


def character_error_rate(references: list[str], hypotheses: list[str]) -> float:
  """Sum of character edit distances / sum of reference lengths."""
  _check(references, hypotheses)
  edits = sum(map(character_edits, references, hypotheses))
  return edits / max(sum(len(r) for r in references), 1)


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
  """Sum of word edit distances / sum of reference word counts."""
  _check(references, hypotheses)
  edits = sum(map(word_edits, references, hypotheses))
  return edits / max(sum(len(r.split()) for r in references), 1)
