"""Pictures: pages with their true and predicted text, and attention pictures."""

import colorsys
import functools
import os

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fphtr_jax import pixels

# A plain sans TTF that every installation has: matplotlib ships DejaVu Sans.
TEXT_FONT = os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf")
TRUE_COLOUR, PRED_COLOUR, MISSING_COLOUR = (0, 0, 0), (0, 0, 190), (150, 150, 150)


@functools.cache
def text_font(size: int) -> ImageFont.FreeTypeFont:
  return ImageFont.truetype(TEXT_FONT, size)


def text_size(width: int) -> int:
  """Font pixels for text under a picture `width` pixels wide.

  TensorBoard's image cards show pages about 340 px wide, so the size grows
  with the width: 17 px on a 512 px page reads as 11 px in the card; at
  least 10 px, legible at full size.
  """
  return max(10, round(width / 30))


def wrap_text(text: str, font, width: float) -> list[str]:
  """`text` broken at spaces into rows at most `width` pixels wide (a long word alone)."""
  rows, row = [], ""
  for word in text.split(" "):
    candidate = f"{row} {word}" if row else word
    if row and font.getlength(candidate) > width:
      rows.append(row)
      candidate = word
    row = candidate
  return rows + [row]


def page_with_text(image, reference: str, hypothesis: str) -> np.ndarray:
  """The page above its text, line by line: each true line (black), then its prediction (blue).

  A line that one side lacks shows as "(no line)". Rows wrap at the page's
  width.

  image: float32 [H, W, 1], normalised. Returns uint8 [H', W, 3].
  """
  page = Image.fromarray(pixels.to_uint8(image)).convert("RGB")
  font = text_font(text_size(page.width))
  row_height = round(font.size * 1.25)
  margin = max(2, font.size // 4)
  label_width = max(font.getlength(label) for label in ("true ", "pred ")) + margin
  text_width = page.width - label_width - 2 * margin
  true_lines, pred_lines = reference.split("\n"), hypothesis.split("\n")
  rows = []  # (label or "", text, colour), and None between pairs of lines
  for index in range(max(len(true_lines), len(pred_lines))):
    for label, lines, colour in (
      ("true", true_lines, TRUE_COLOUR),
      ("pred", pred_lines, PRED_COLOUR),
    ):
      text, colour = (lines[index], colour) if index < len(lines) else ("(no line)", MISSING_COLOUR)
      for k, row in enumerate(wrap_text(text, font, text_width)):
        rows.append(("" if k else label, row, colour))
    rows.append(None)
  height = page.height + margin + sum(row_height if row else row_height // 3 for row in rows)
  canvas = Image.new("RGB", (page.width, height), "white")
  canvas.paste(page, (0, 0))
  draw = ImageDraw.Draw(canvas)
  y = page.height + margin
  for row in rows:
    if row is None:
      y += row_height // 3
      continue
    label, text, colour = row
    draw.text((margin, y), label, fill=MISSING_COLOUR if label else colour, font=font)
    draw.text((margin + label_width, y), text, fill=colour, font=font)
    y += row_height
  return np.asarray(canvas)


def stack_images(images: list[np.ndarray]) -> np.ndarray:
  """uint8 [N, H, W, 3] from images of different heights/widths (white padding)."""
  height = max(i.shape[0] for i in images)
  width = max(i.shape[1] for i in images)
  out = np.full((len(images), height, width, 3), 255, np.uint8)
  for k, image in enumerate(images):
    out[k, : image.shape[0], : image.shape[1]] = image
  return out


def markdown_pairs(pairs) -> str:
  """(reference, hypothesis) pairs as a Markdown list for TensorBoard's text tab."""
  rows = []
  for ref, hyp in pairs:
    rows.append(
      "* true: `" + ref.replace("\n", " / ") + "`\n  pred: `" + hyp.replace("\n", " / ") + "`"
    )
  return "\n".join(rows)


def line_colour(index: int) -> tuple[int, int, int]:
  r, g, b = colorsys.hsv_to_rgb((index * 0.618034) % 1.0, 0.9, 0.9)
  return int(255 * r), int(255 * g), int(255 * b)


def attention_picture(
  image, transcription, attention: np.ndarray, stride: tuple[int, int] = (32, 32), placed=None
) -> np.ndarray:
  """The page with each line's cross-attention in its colour, the lines written below.

  Args:
    image: float32 [H, W, 1], the normalised canvas the model read.
    transcription: its confidence.Transcription (decoded text and line spans).
    attention: float32 [L - 1, S], `transcribe.cross_attention` of its tokens.
    stride: (height, width) image pixels per feature cell (resnet.encoder_stride).
    placed: (height, width) of the page on the canvas (its top-left part);
      None = the whole canvas.

  Returns:
    uint8 [h', w, 3], w the width of the page on the canvas.
  """
  canvas_h, canvas_w = image.shape[:2]
  placed_h, placed_w = placed or (canvas_h, canvas_w)
  stride_h, stride_w = stride
  grid_h, grid_w = -(-canvas_h // stride_h), -(-canvas_w // stride_w)
  grey = pixels.to_grey(image)
  picture = np.repeat(grey[..., None], 3, axis=-1) * 0.6 + 0.4  # a paler page
  for index, line in enumerate(transcription.lines):
    start, stop = line.token_span
    # Row t of the attention predicted token t + 1.
    weights = attention[max(start - 1, 0) : max(stop - 1, 0)]
    if not len(weights):
      continue
    heat = weights.mean(axis=0).reshape(grid_h, grid_w)
    heat = heat / max(float(heat.max()), 1e-9)
    heat = np.asarray(
      Image.fromarray(heat.astype(np.float32)).resize(
        (grid_w * stride_w, grid_h * stride_h), Image.Resampling.BILINEAR
      )
    )
    alpha = (0.7 * heat[:canvas_h, :canvas_w])[..., None]
    picture = picture * (1 - alpha) + alpha * (np.array(line_colour(index)) / 255.0)
  picture = (np.clip(picture, 0, 1) * 255).astype(np.uint8)[:placed_h, :placed_w]
  # The lines below the page, each in its colour, with its confidence.
  font = ImageFont.load_default()
  lines = transcription.lines
  out = Image.new("RGB", (max(placed_w, 320), placed_h + 14 * len(lines) + 4), "white")
  out.paste(Image.fromarray(picture), (0, 0))
  draw = ImageDraw.Draw(out)
  for index, line in enumerate(lines):
    draw.text(
      (2, placed_h + 2 + 14 * index),
      f"{line.confidence:.2f}  {line.text}",
      fill=line_colour(index),
      font=font,
    )
  return np.asarray(out)
