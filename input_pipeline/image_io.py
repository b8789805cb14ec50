"""Opening image files with errors that name the file and what is wrong.

Every path that reads a user's image (IAM, `predict`) goes through
`open_image`, so a missing, empty, truncated, pixel-less or enormous file is
refused the same way everywhere, before it reaches tf.data or the model.
"""

import os

from PIL import Image

# IAM's pages are about 2479x3542 = 8.8M pixels at 300 dpi.
DEFAULT_MAX_PIXELS = 50_000_000


class BadImageError(ValueError):
  """An image file that cannot be used; the message names the file."""


def open_image(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
  """The decoded image at `path` (any mode), fully loaded.

  Raises:
    BadImageError: the file is missing, empty (0 bytes), not an image,
      truncated, has no pixels, or has more than `max_pixels` pixels
      (`data.max_image_pixels`), checked from its header before decoding.
  """
  if not os.path.isfile(path):
    raise BadImageError(f"{path}: no such image file.")
  if os.path.getsize(path) == 0:
    raise BadImageError(f"{path} is empty (0 bytes).")
  try:
    with Image.open(path) as opened:
      width, height = opened.size
      if width < 1 or height < 1:
        raise BadImageError(f"{path} is an image with no pixels ({width}x{height}).")
      if width * height > max_pixels:
        raise BadImageError(
          f"{path} is {width}x{height} = {width * height:,} pixels, more than "
          f"data.max_image_pixels={max_pixels:,}; shrink it, or raise that limit."
        )
      opened.load()  # Decodes now: a truncated file fails here, not later.
      return opened.copy()
  except BadImageError:
    raise
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise BadImageError(f"{path} cannot be read as an image ({e}).") from None
