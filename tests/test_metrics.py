import pytest

from fphtr_jax import metrics


def test_cer_on_known_pairs():
  # kitten -> sitting: 3 edits over 6 reference characters.
  assert metrics.character_error_rate(["kitten"], ["sitting"]) == pytest.approx(3 / 6)
  # Corpus level: (1 + 0) edits over (3 + 2) characters, not a mean of rates.
  assert metrics.character_error_rate(["abc", "de"], ["abd", "de"]) == pytest.approx(1 / 5)
  assert metrics.character_error_rate(["same"], ["same"]) == 0.0
  assert metrics.character_error_rate(["ab"], [""]) == 1.0


def test_cer_counts_line_breaks_as_characters():
  assert metrics.character_error_rate(["a b\nc"], ["a b c"]) == pytest.approx(1 / 5)


def test_wer_on_known_pairs():
  assert metrics.word_error_rate(["the cat sat"], ["the hat sat"]) == pytest.approx(1 / 3)
  # A line break separates words like a space.
  assert metrics.word_error_rate(["the cat\nsat down"], ["the cat sat down"]) == 0.0
  assert metrics.word_error_rate(["a b", "c d e f"], ["a", "c d e f g"]) == pytest.approx(2 / 6)


def test_mismatched_lengths_rejected():
  with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
    metrics.character_error_rate(["a", "b"], ["a"])
