"""Fixed sinusoidal position encodings (Vaswani et al. 2017), 1D and 2D.

Computed with numpy: shapes are static under jit, so the tables are constants.
"""

import numpy as np


def sinusoidal_1d(length: int, dim: int) -> np.ndarray:
  """Sinusoidal encoding of positions 0..length-1.

  Channel 2i holds sin(pos / 10000^(2i/dim)), channel 2i+1 the matching cos
  (the interleaved layout of the PyTorch transformer tutorial).

  Args:
    length: number of positions.
    dim: channels; must be even.

  Returns:
    float32 [length, dim].
  """
  if dim % 2:
    raise ValueError(f"sinusoidal_1d needs an even dim, got {dim}.")
  position = np.arange(length, dtype=np.float64)[:, None]
  inv_freq = np.exp(np.arange(0, dim, 2, dtype=np.float64) * (-np.log(10000.0) / dim))
  table = np.zeros((length, dim), np.float64)
  table[:, 0::2] = np.sin(position * inv_freq)
  table[:, 1::2] = np.cos(position * inv_freq)
  return table.astype(np.float32)


def sinusoidal_2d(height: int, width: int, dim: int) -> np.ndarray:
  """2D sinusoidal encoding of a height x width grid.

  The first dim/2 channels encode the row (y), the last dim/2 the column (x),
  each as a 1D encoding with dim/2 channels.

  Args:
    height: rows of the grid.
    width: columns of the grid.
    dim: channels; must be divisible by 4 (a sin/cos pair per axis).

  Returns:
    float32 [height, width, dim].
  """
  if dim % 4:
    raise ValueError(f"sinusoidal_2d needs dim divisible by 4, got {dim}.")
  half = dim // 2
  rows = np.broadcast_to(sinusoidal_1d(height, half)[:, None, :], (height, width, half))
  cols = np.broadcast_to(sinusoidal_1d(width, half)[None, :, :], (height, width, half))
  return np.concatenate([rows, cols], axis=-1)
