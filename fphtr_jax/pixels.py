"""Grey levels <-> model inputs: the one definition of pixel normalisation.

Pages are grey levels in [0, 1] (paper = 1, ink = 0), normalised with IAM's
statistics before they reach the model. The input pipeline (TensorFlow), the
model's padding and the pictures (numpy) all use these, so this module
imports neither JAX nor TensorFlow: `normalize` works on numpy arrays and TF
tensors alike.
"""

import numpy as np

IMAGE_MEAN, IMAGE_STD = 0.8275, 0.2314
# The normalised value of blank paper: the background and padding of every image.
PAPER = (1.0 - IMAGE_MEAN) / IMAGE_STD


def normalize(grey):
  """Grey levels [H, W] in [0, 1] (numpy or TF) -> normalised float32 [H, W, 1]."""
  return ((grey - IMAGE_MEAN) / IMAGE_STD)[..., None]


def to_grey(image) -> np.ndarray:
  """Normalised float [H, W, 1] -> float32 [H, W] grey levels in [0, 1]."""
  grey = np.asarray(image, np.float32)[..., 0] * IMAGE_STD + IMAGE_MEAN
  return np.clip(grey, 0.0, 1.0)


def to_uint8(image) -> np.ndarray:
  """Normalised float [H, W, 1] -> uint8 [H, W] grey levels (rounded)."""
  return (to_grey(image) * 255.0 + 0.5).astype(np.uint8)
