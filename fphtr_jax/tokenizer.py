"""Characters <-> token ids.

<PAD>=0, <SOS>=1, <EOS>=2, then one id per character of the charset, in the
order the charset lists them (id = 3 + position). The input pipeline uses the
same rule, so a charset string is all either side needs. The tokenizer is saved
as JSON in the workdir and inside every checkpoint, so a checkpoint decodes on
its own.
"""

import json
import os

import numpy as np

PAD_ID = 0
SOS_ID = 1
EOS_ID = 2
NUM_SPECIAL = 3
VOCAB_FILENAME = "vocab.json"


class Tokenizer:
  """Maps text to int32 token ids and back."""

  def __init__(self, charset: str):
    if not charset:
      raise ValueError("data.charset is empty; it must list every character of the labels.")
    duplicates = sorted({c for c in charset if charset.count(c) > 1})
    if duplicates:
      raise ValueError(f"data.charset lists characters more than once: {duplicates!r}.")
    self.charset = charset
    self._ids = {c: NUM_SPECIAL + i for i, c in enumerate(charset)}

  @property
  def vocab_size(self) -> int:
    return NUM_SPECIAL + len(self.charset)

  def encode(self, text: str, max_len: int | None = None) -> np.ndarray:
    """Returns int32 [max_len] (or [len(text) + 2]): <SOS> ids <EOS> <PAD>...."""
    unknown = sorted({c for c in text if c not in self._ids})
    if unknown:
      raise ValueError(
        f"Characters {unknown!r} of {text!r} are not in data.charset; "
        "add them to the charset or clean the labels."
      )
    ids = [SOS_ID] + [self._ids[c] for c in text] + [EOS_ID]
    if max_len is not None:
      if len(ids) > max_len:
        raise ValueError(f"{text!r} needs {len(ids)} tokens, more than data.max_len={max_len}.")
      ids += [PAD_ID] * (max_len - len(ids))
    return np.asarray(ids, np.int32)

  def decode(self, ids) -> str:
    """Text of one sequence of ids; stops at the first <EOS>, skips <SOS>/<PAD>."""
    chars = []
    for i in np.asarray(ids).tolist():
      if i == EOS_ID:
        break
      if i >= NUM_SPECIAL:
        chars.append(self.charset[i - NUM_SPECIAL])
    return "".join(chars)

  def decode_batch(self, ids) -> list[str]:
    """Texts of int [B, T] ids."""
    return [self.decode(row) for row in np.asarray(ids)]

  def to_json(self) -> dict:
    return {"charset": self.charset, "pad_id": PAD_ID, "sos_id": SOS_ID, "eos_id": EOS_ID}

  @classmethod
  def from_json(cls, data: dict) -> "Tokenizer":
    return cls(data["charset"])

  def save(self, directory: str) -> str:
    path = os.path.join(directory, VOCAB_FILENAME)
    with open(path, "w", encoding="utf-8") as f:
      json.dump(self.to_json(), f, ensure_ascii=False, indent=1)
    return path

  @classmethod
  def load(cls, directory: str) -> "Tokenizer":
    with open(os.path.join(directory, VOCAB_FILENAME), encoding="utf-8") as f:
      return cls.from_json(json.load(f))

  def __eq__(self, other):
    return isinstance(other, Tokenizer) and other.charset == self.charset
