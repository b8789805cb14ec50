"""Decoded tokens -> text with per-character and per-line confidences (on the host).

Confidences are token probabilities under the model: the mean and the
minimum over a page or a line (its characters and the token that ends it).
"""

import dataclasses

import numpy as np

from fphtr_jax.tokenizer import EOS_ID, NUM_SPECIAL


@dataclasses.dataclass
class LineConfidence:
  """One line of a transcription.

  `confidence` / `min_confidence` are the mean / minimum probability of its
  tokens: its characters and the token that ends it ("\\n" or <EOS>).
  `token_span` is the [start, end) of those tokens in the token sequence.
  """

  text: str
  confidence: float
  min_confidence: float
  token_span: tuple[int, int]


@dataclasses.dataclass
class Transcription:
  """A page's text with its confidences.

  Attributes:
    text: the characters decoded, lines separated by "\\n".
    char_probs: the probability of each character of `text` ("\\n" included).
    confidence: mean probability of every emitted token, <EOS> included.
    min_confidence: the least probable emitted token's probability.
    log_prob: sum of the emitted tokens' log-probabilities.
    lines: one LineConfidence per line of `text` (`text.split("\\n")`).
  """

  text: str
  char_probs: list[float]
  confidence: float
  min_confidence: float
  log_prob: float
  lines: list[LineConfidence]

  def to_json(self, char_probs: bool = False) -> dict:
    """A JSON-able dict; lines without their token spans."""
    out = {
      "text": self.text,
      "confidence": self.confidence,
      "min_confidence": self.min_confidence,
      "log_prob": self.log_prob,
      "lines": [
        {"text": l.text, "confidence": l.confidence, "min_confidence": l.min_confidence}
        for l in self.lines
      ],
    }
    if char_probs:
      out["char_probs"] = self.char_probs
    return out


def _mean_min(probs) -> tuple[float, float]:
  return (float(np.mean(probs)), float(np.min(probs))) if len(probs) else (1.0, 1.0)


def transcription(tokenizer, tokens, token_log_probs) -> Transcription:
  """A Transcription from one decoded sequence (int [L], float [L], host arrays)."""
  tokens = np.asarray(tokens).tolist()
  probs = np.exp(np.asarray(token_log_probs, np.float64))
  # Without <EOS> within max_len, every position after <SOS> is a character.
  end = tokens.index(EOS_ID, 1) + 1 if EOS_ID in tokens[1:] else len(tokens)
  text = tokenizer.decode(tokens[1:])
  positions = [p for p in range(1, end) if tokens[p] >= NUM_SPECIAL]  # one per character
  char_probs = [float(probs[p]) for p in positions]
  spans, line_start = [], 1
  for char, position in zip(text, positions):
    if char == "\n":
      spans.append((line_start, position + 1))
      line_start = position + 1
  spans.append((line_start, max(end, line_start)))
  lines = []
  for line_text, (start, stop) in zip(text.split("\n"), spans):
    mean, low = _mean_min(probs[start:stop])
    lines.append(LineConfidence(line_text, mean, low, (start, stop)))
  mean, low = _mean_min(probs[1:end])
  return Transcription(
    text=text,
    char_probs=char_probs,
    confidence=mean,
    min_confidence=low,
    log_prob=float(np.sum(np.asarray(token_log_probs)[1:end])),
    lines=lines,
  )


def transcriptions(tokenizer, output) -> list[Transcription]:
  """One Transcription per row of a host-fetched decoding.DecodeOutput."""
  tokens = np.asarray(output.tokens)
  token_log_probs = np.asarray(output.token_log_probs)
  return [transcription(tokenizer, t, lp) for t, lp in zip(tokens, token_log_probs)]
