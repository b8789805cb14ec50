"""The word-bank cache: one .npz per bank, named by a hash of everything that shapes it.

Both word banks use it: the font bank (`bank.load_word_bank`) and IAM's
(`input_pipeline.iam.word_bank`). A file is written once, atomically, and never
changed; another input gives another key, so another file.
"""

import hashlib
import json
import os
import pathlib
import tempfile

import numpy as np

DEFAULT_DIR = pathlib.Path.home() / ".cache" / "fphtr_jax" / "word_banks"


def file_digest(path) -> str:
  """sha256 of a file's bytes (hex): a cache key input that follows the file's content."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def key(inputs: dict) -> str:
  """20 hex digits of a hash of `inputs` (JSON-serialisable, key order does not matter)."""
  return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:20]


def bank_path(cache_dir, prefix: str, inputs: dict) -> pathlib.Path:
  """`cache_dir`/`prefix`_`key(inputs)`.npz; no cache_dir = DEFAULT_DIR."""
  return pathlib.Path(cache_dir or DEFAULT_DIR).expanduser() / f"{prefix}_{key(inputs)}.npz"


def save(bank, path: pathlib.Path):
  """Writes `bank` (a `bank.WordBank`) to `path` atomically (temp file + rename)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.NamedTemporaryFile(
    dir=path.parent, prefix=path.stem, suffix=".tmp", delete=False
  ) as f:
    try:
      np.savez_compressed(
        f,
        strip=bank.strip,
        offsets=bank.offsets,
        widths=bank.widths,
        texts=bank.texts.astype(str),
        writers=bank.writers,
        writer_names=np.array(bank.writer_names, str),
        font_names=np.array(bank.font_names, str),
      )
      f.flush()
      os.fsync(f.fileno())
      os.chmod(f.name, 0o644)  # temp files are private; banks are shareable
    except BaseException:
      os.unlink(f.name)
      raise
  os.replace(f.name, path)


def load(path: pathlib.Path) -> dict:
  """The fields of the bank saved at `path`, as `bank.WordBank(**fields)` takes them."""
  with np.load(path, allow_pickle=False) as data:
    texts = np.empty(len(data["texts"]), dtype=object)
    texts[:] = data["texts"].tolist()
    return dict(
      strip=data["strip"],
      offsets=data["offsets"],
      widths=data["widths"],
      texts=texts,
      writers=data["writers"],
      writer_names=tuple(data["writer_names"].tolist()),
      font_names=tuple(data["font_names"].tolist()),
    )
