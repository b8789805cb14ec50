r"""Writes examples of the configured data as PNGs, each with its target text.

  python -m input_pipeline.preview --config=configs/default.py --out=/tmp/preview \
      [--num=8] [--split=train] [--config.data.level=line]

Writes DIR/grid.png (the pages side by side, the text decoded from each
example's tokens printed below it) and DIR/page_NN.png / DIR/page_NN.txt.
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fphtr_jax import pixels
from fphtr_jax import tokenizer as tokenizer_lib
from input_pipeline import datasets

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_OUT = flags.DEFINE_string("out", None, "Folder to write the PNGs to.")
_NUM = flags.DEFINE_integer("num", 8, "Number of examples.")
_SPLIT = flags.DEFINE_enum("split", "train", ["train", "eval"], "Which dataset to draw from.")
_COLUMNS = flags.DEFINE_integer("columns", 4, "Examples per row of the grid.")

_FONT_SIZE = 12
_PADDING = 8


def _wrap(text: str, font, width: int) -> list[str]:
  """Splits each line of `text` at spaces so that it fits `width` pixels."""
  wrapped = []
  for line in text.split("\n"):
    current = ""
    for word in line.split(" "):
      candidate = f"{current} {word}" if current else word
      if current and font.getlength(candidate) > width:
        wrapped.append(current)
        current = "  " + word  # an indent marks a wrapped line
      else:
        current = candidate
    wrapped.append(current)
  return wrapped


def captioned(page: np.ndarray, text: str) -> Image.Image:
  """The page (uint8 [H, W]) with a frame and its text printed below it."""
  font = ImageFont.load_default(size=_FONT_SIZE)
  height, width = page.shape
  lines = _wrap(text, font, width)
  line_height = _FONT_SIZE + 3
  cell = Image.new("L", (width + 2, height + 2 + _PADDING + line_height * len(lines)), 255)
  cell.paste(Image.fromarray(page), (1, 1))
  draw = ImageDraw.Draw(cell)
  draw.rectangle((0, 0, width + 1, height + 1), outline=128)
  for i, line in enumerate(lines):
    draw.text((1, height + 2 + _PADDING // 2 + i * line_height), line, fill=0, font=font)
  return cell


def grid(cells: list[Image.Image], columns: int) -> Image.Image:
  """Cells in rows of `columns`, top-aligned, on white."""
  rows = [cells[i : i + columns] for i in range(0, len(cells), columns)]
  width = max(sum(c.width for c in row) + _PADDING * (len(row) + 1) for row in rows)
  heights = [max(c.height for c in row) + _PADDING for row in rows]
  canvas = Image.new("L", (width, sum(heights) + _PADDING), 255)
  y = _PADDING
  for row, row_height in zip(rows, heights):
    x = _PADDING
    for cell in row:
      canvas.paste(cell, (x, y))
      x += cell.width + _PADDING
    y += row_height
  return canvas


def take_examples(dataset, num: int):
  """(images, tokens) of the first `num` examples of a batched dataset (mask 1 only)."""
  images, tokens = [], []
  for batch in dataset.as_numpy_iterator():
    keep = batch["mask"] > 0
    images.extend(batch["image"][keep])
    tokens.extend(batch["tokens"][keep])
    if len(images) >= num:
      break
  return images[:num], tokens[:num]


def main(argv):
  del argv
  config = _CONFIG.value
  out = _OUT.value
  if not out:
    raise app.UsageError("--out=DIR is required.")
  os.makedirs(out, exist_ok=True)
  train_ds, eval_ds = datasets.create_datasets(config)
  images, tokens = take_examples(train_ds if _SPLIT.value == "train" else eval_ds, _NUM.value)
  tokenizer = tokenizer_lib.Tokenizer(config.data.charset)
  cells = []
  for i, (image, ids) in enumerate(zip(images, tokens)):
    page, text = pixels.to_uint8(image), tokenizer.decode(ids)
    Image.fromarray(page).save(os.path.join(out, f"page_{i:02d}.png"))
    with open(os.path.join(out, f"page_{i:02d}.txt"), "w", encoding="utf-8") as f:
      f.write(text + "\n")
    cells.append(captioned(page, text))
  path = os.path.join(out, "grid.png")
  grid(cells, _COLUMNS.value).save(path)
  logging.info("Wrote %d examples and %s.", len(cells), path)
  print(path)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "out"])
  app.run(main)
