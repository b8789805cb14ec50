"""The reference augmentations as stateless TF ops.

One projective warp does random scale (+-10%), rotation, for pages a
perspective warp (corners moved by 3-5% of the text's size) and random
placement on the canvas; then brightness/contrast and, on half of the images,
Gaussian noise. The warp is built around the box that holds the text and
always keeps that box on the canvas (shrinking it if it must, like
albumentations' SafeRotate), so no word of the target is ever cut off;
rotation is also limited by the room around the text so that a long line is
not shrunk to fit a tilt. Paper fills everything the warp uncovers.
"""

import math

import tensorflow as tf

SCALE_RANGE = (0.9, 1.1)
PERSPECTIVE_RANGE = (0.03, 0.05)  # corner shift, as a fraction of the text's size
CONTRAST_RANGE = (0.8, 1.2)
BRIGHTNESS_RANGE = (-0.2, 0.2)
NOISE_STD_RANGE = (0.01, 0.03)  # grey levels in [0, 1]
NOISE_PROBABILITY = 0.5


def _uniform(seed, lo, hi, shape=(), dtype=tf.float64):
  return tf.random.stateless_uniform(shape, seed, minval=lo, maxval=hi, dtype=dtype, alg="philox")


def _translation(tx, ty):
  zero, one = tf.zeros_like(tx), tf.ones_like(tx)
  return tf.stack(
    [tf.stack([one, zero, tx]), tf.stack([zero, one, ty]), tf.stack([zero, zero, one])]
  )


def _homography(source, target):
  """float64 [3, 3] mapping the 4 points `source` [4, 2] (x, y) onto `target` [4, 2]."""
  x, y = source[:, 0], source[:, 1]
  u, v = target[:, 0], target[:, 1]
  zero, one = tf.zeros_like(x), tf.ones_like(x)
  rows_u = tf.stack([x, y, one, zero, zero, zero, -u * x, -u * y], axis=1)
  rows_v = tf.stack([zero, zero, zero, x, y, one, -v * x, -v * y], axis=1)
  a = tf.concat([rows_u, rows_v], axis=0)
  b = tf.concat([u, v], axis=0)[:, None]
  h = tf.linalg.solve(a, b)[:, 0]
  return tf.reshape(tf.concat([h, [1.0]], axis=0), [3, 3])


def _apply(matrix, points):
  """Projects float64 points [N, 2] (x, y) through a 3x3 matrix."""
  homogeneous = tf.concat([points, tf.ones_like(points[:, :1])], axis=1) @ tf.transpose(matrix)
  return homogeneous[:, :2] / homogeneous[:, 2:]


def warp_matrix(
  content_box, canvas_shape, seed, *, max_rotation: float, perspective: bool, random_placement: bool
) -> tf.Tensor:
  """float64 [3, 3] projective map from input to output pixel coordinates (x, y).

  Args:
    content_box: int32 [4] (top, left, bottom, right), bottom/right exclusive:
      the region that holds all the text. It maps inside the canvas.
    canvas_shape: (H, W).
    seed: int [2], stateless seed.
    max_rotation: largest rotation, degrees.
    perspective: whether to move the corners of the text (pages).
    random_placement: move the text anywhere on the canvas; else keep it where
      it is as far as the canvas allows.
  """
  height, width = canvas_shape
  seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=5)
  top, left, bottom, right = tf.unstack(tf.cast(content_box, tf.float64))
  # Pixel i spans [i - 0.5, i + 0.5] in the coordinates the transform samples at.
  centre_x, centre_y = (left + right - 1.0) / 2.0, (top + bottom - 1.0) / 2.0
  half_w, half_h = (right - left) / 2.0, (bottom - top) / 2.0

  scale = _uniform(seeds[0], *SCALE_RANGE)
  room_y = height - 2.0 * half_h * scale
  room_x = width - 2.0 * half_w * scale
  limit = tf.minimum(
    tf.constant(math.radians(max_rotation), tf.float64),
    tf.minimum(
      tf.asin(tf.clip_by_value(room_y / (2.0 * half_w * scale), 0.0, 1.0)),
      tf.asin(tf.clip_by_value(room_x / (2.0 * half_h * scale), 0.0, 1.0)),
    ),
  )
  angle = _uniform(seeds[1], -1.0, 1.0) * limit
  cos, sin = scale * tf.cos(angle), scale * tf.sin(angle)
  zero = tf.zeros_like(cos)
  rotate = tf.stack(
    [
      tf.stack([cos, -sin, zero]),
      tf.stack([sin, cos, zero]),
      tf.stack([zero, zero, tf.ones_like(cos)]),
    ]
  )
  forward = rotate @ _translation(-centre_x, -centre_y)
  corners = tf.stack(
    [
      tf.stack([-half_w, -half_h]),
      tf.stack([half_w, -half_h]),
      tf.stack([half_w, half_h]),
      tf.stack([-half_w, half_h]),
    ]
  )
  corners = _apply(rotate, corners)

  if perspective:
    size = tf.stack([2.0 * half_w, 2.0 * half_h])
    shift = _uniform(seeds[2], *PERSPECTIVE_RANGE, shape=[4, 2]) * size
    sign = tf.where(_uniform(seeds[3], 0.0, 1.0, shape=[4, 2]) < 0.5, -1.0, 1.0)
    moved = corners + tf.cast(sign, tf.float64) * shift
    forward = _homography(corners, moved) @ forward
    corners = moved

  # Shrink to fit the canvas when the warped text is larger than it.
  canvas = tf.constant([width, height], tf.float64)
  extent = tf.reduce_max(corners, axis=0) - tf.reduce_min(corners, axis=0)
  fit = tf.minimum(tf.constant(1.0, tf.float64), tf.reduce_min(canvas / extent))
  forward = tf.linalg.diag(tf.stack([fit, fit, tf.ones_like(fit)])) @ forward
  corners = corners * fit

  low = -0.5 - tf.reduce_min(corners, axis=0)
  high = canvas - 0.5 - tf.reduce_max(corners, axis=0)
  if random_placement:
    offset = low + _uniform(seeds[4], 0.0, 1.0, shape=[2]) * (high - low)
  else:
    offset = tf.clip_by_value(tf.stack([centre_x, centre_y]), low, high)
  return _translation(offset[0], offset[1]) @ forward


def warp(ink, content_box, seed, **kwargs) -> tf.Tensor:
  """Geometric augmentation of an ink image (see `warp_matrix` for the arguments).

  ink: uint8 or float32 [H, W], 0 = paper. Returns float32 [H, W] ink, 0 = paper.
  """
  height, width = ink.shape
  forward = warp_matrix(content_box, (height, width), seed, **kwargs)
  # The op maps output pixels to input pixels: it wants the inverse, with [2, 2] = 1.
  inverse = tf.linalg.inv(forward)
  inverse = tf.reshape(inverse / inverse[2, 2], [9])[:8]
  warped = tf.raw_ops.ImageProjectiveTransformV3(
    images=tf.cast(ink, tf.float32)[None, :, :, None],
    transforms=tf.cast(inverse, tf.float32)[None],
    output_shape=tf.constant([height, width], tf.int32),
    fill_value=tf.constant(0.0),
    interpolation="BILINEAR",
    fill_mode="CONSTANT",
  )
  return warped[0, :, :, 0]


def warp_points(points_yx, content_box, canvas_shape, seed, **kwargs) -> tf.Tensor:
  """Where `warp` with the same arguments moves float32 points [N, 2] (y, x)."""
  forward = warp_matrix(content_box, canvas_shape, seed, **kwargs)
  xy = _apply(forward, tf.cast(points_yx[:, ::-1], tf.float64))
  return tf.cast(xy[:, ::-1], tf.float32)


def photometric(grey, seed) -> tf.Tensor:
  """Brightness/contrast and Gaussian noise on float32 grey levels [H, W] in [0, 1]."""
  seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=5)
  contrast = _uniform(seeds[0], *CONTRAST_RANGE, dtype=tf.float32)
  brightness = _uniform(seeds[1], *BRIGHTNESS_RANGE, dtype=tf.float32)
  grey = grey * contrast + brightness
  noise_std = _uniform(seeds[2], *NOISE_STD_RANGE, dtype=tf.float32)
  # Noise on half of the images, as in the reference (albumentations' default
  # p=0.5); it is the costliest op of the pipeline.
  grey = tf.cond(
    _uniform(seeds[4], 0.0, 1.0) < NOISE_PROBABILITY,
    lambda: grey + tf.random.stateless_normal(tf.shape(grey), seeds[3], alg="philox") * noise_std,
    lambda: grey,
  )
  return tf.clip_by_value(grey, 0.0, 1.0)
