import numpy as np
import pytest

from configs import default
from fphtr_jax import tokenizer as tokenizer_lib


def test_round_trip_with_special_tokens():
  tok = tokenizer_lib.Tokenizer(default.get_config().data.charset)
  text = 'A MOVE to stop Mr. "Gaitskell"\nfrom nominating 42 more?'
  ids = tok.encode(text, max_len=80)
  assert ids.dtype == np.int32 and ids.shape == (80,)
  assert ids[0] == tokenizer_lib.SOS_ID
  assert ids[len(text) + 1] == tokenizer_lib.EOS_ID
  assert (ids[len(text) + 2 :] == tokenizer_lib.PAD_ID).all()
  assert tok.decode(ids) == text
  assert tok.decode_batch(np.stack([ids, tok.encode("x", max_len=80)])) == [text, "x"]


def test_ids_follow_charset_order():
  tok = tokenizer_lib.Tokenizer("ba")
  assert tok.vocab_size == 5
  assert tok.encode("ab").tolist() == [1, 4, 3, 2]


def test_unknown_character_is_a_clear_error():
  tok = tokenizer_lib.Tokenizer("abc")
  with pytest.raises(ValueError, match=r"'z'.*data.charset"):
    tok.encode("abz")


def test_too_long_text_names_max_len():
  tok = tokenizer_lib.Tokenizer("abc")
  with pytest.raises(ValueError, match="data.max_len=4"):
    tok.encode("abc", max_len=4)


def test_duplicate_charset_rejected():
  with pytest.raises(ValueError, match="more than once"):
    tokenizer_lib.Tokenizer("abca")


def test_save_and_load(tmp_path):
  tok = tokenizer_lib.Tokenizer("xy\n z")
  tok.save(str(tmp_path))
  assert tokenizer_lib.Tokenizer.load(str(tmp_path)) == tok
