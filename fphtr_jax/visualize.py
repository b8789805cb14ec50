"""Pictures for TensorBoard: pages with their true and predicted text."""

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# The input pipeline's normalisation of [0, 1] grey levels.
IMAGE_MEAN, IMAGE_STD = 0.8275, 0.2314
LINE_HEIGHT = 12


def to_uint8(image) -> np.ndarray:
  """Normalised float [H, W, 1] -> uint8 [H, W] grey levels."""
  grey = np.asarray(image, np.float32)[..., 0] * IMAGE_STD + IMAGE_MEAN
  return (np.clip(grey, 0.0, 1.0) * 255).astype(np.uint8)


def page_with_text(image, reference: str, hypothesis: str) -> np.ndarray:
  """The page above its true text (black) and predicted text (blue).

  image: float32 [H, W, 1], normalised. Returns uint8 [H', W, 3].
  """
  page = Image.fromarray(to_uint8(image)).convert("RGB")
  ref_lines = ["true: " + l for l in reference.split("\n")]
  hyp_lines = ["pred: " + l for l in hypothesis.split("\n")]
  height = page.height + LINE_HEIGHT * (len(ref_lines) + len(hyp_lines) + 1)
  canvas = Image.new("RGB", (page.width, height), "white")
  canvas.paste(page, (0, 0))
  draw = ImageDraw.Draw(canvas)
  font = ImageFont.load_default()
  y = page.height + 2
  for lines, colour in ((ref_lines, (0, 0, 0)), (hyp_lines, (0, 0, 200))):
    for line in lines:
      draw.text((2, y), line, fill=colour, font=font)
      y += LINE_HEIGHT
    y += LINE_HEIGHT // 2
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
    rows.append("* true: `" + ref.replace("\n", " / ") + "`\n  pred: `"
                + hyp.replace("\n", " / ") + "`")
  return "\n".join(rows)
