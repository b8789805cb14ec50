"""The reference augmentations as stateless TF ops.

One projective warp does random scale (+-10%), rotation, for pages a
perspective warp (corners moved by 3-5% of the text's size) and random
placement on the canvas; then brightness/contrast and, on half of the images,
Gaussian noise. `scan_look` (data.scan_look) makes a clean page look like a
scan of real writing first: ink from pencil grey to black, stroke width that
varies along the strokes, ruled paper, bleed-through from the other side,
grey or yellowed paper with texture and uneven lighting, blur and JPEG
artefacts. The warp is built around the box that holds the text and
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
  content_box,
  canvas_shape,
  seed,
  *,
  max_rotation: float,
  perspective: bool,
  random_placement: bool,
  scale_range: tuple[float, float] = SCALE_RANGE,
  source_shape=None,
) -> tf.Tensor:
  """float64 [3, 3] projective map from input to output pixel coordinates (x, y).

  Args:
    content_box: int32 [4] (top, left, bottom, right), bottom/right exclusive:
      the region that holds all the text. It maps inside the canvas.
    canvas_shape: (H, W).
    seed: int [2], stateless seed.
    max_rotation: largest rotation, degrees.
    scale_range: (lo, hi) of the random scale of the text.
    perspective: whether to move the corners of the text (pages).
    random_placement: move the text anywhere on the canvas; else keep it where
      it is as far as the canvas allows, in proportion to `source_shape`.
    source_shape: (h, w) of the image the content box is in; None = the canvas's.
  """
  height, width = canvas_shape
  seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=5)
  top, left, bottom, right = tf.unstack(tf.cast(content_box, tf.float64))
  # Pixel i spans [i - 0.5, i + 0.5] in the coordinates the transform samples at.
  centre_x, centre_y = (left + right - 1.0) / 2.0, (top + bottom - 1.0) / 2.0
  half_w, half_h = (right - left) / 2.0, (bottom - top) / 2.0

  scale = _uniform(seeds[0], *scale_range)
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
    ratio = (
      [1.0, 1.0] if source_shape is None else [width / source_shape[1], height / source_shape[0]]
    )
    centre = tf.stack([centre_x, centre_y]) * tf.constant(ratio, tf.float64)
    offset = tf.clip_by_value(centre, low, high)
  return _translation(offset[0], offset[1]) @ forward


def warp(ink, content_box, seed, canvas_shape=None, **kwargs) -> tf.Tensor:
  """Geometric augmentation of an ink image (see `warp_matrix` for the arguments).

  ink: uint8 or float32 [h, w], 0 = paper. Returns float32 [H, W] ink, 0 =
  paper: `canvas_shape` (H, W), the ink's own shape if None.
  """
  height, width = canvas_shape or ink.shape
  forward = warp_matrix(content_box, (height, width), seed, source_shape=ink.shape, **kwargs)
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
  """Where `warp` with the same arguments moves float32 points [N, 2] (y, x).

  Give `source_shape`, the shape of the ink `warp` was given, where it is not
  the canvas's.
  """
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


# --- The look of a scan ------------------------------------------------------------

INK_LEVEL_RANGE = (0.45, 1.0)  # darkest ink: pencil grey (or blue pen in grey) to black
PAPER_RANGE = (0.72, 1.0)  # grey level of the paper: grey or yellowed to white
LIGHTING_RANGE = (0.0, 0.25)  # fall of the light across the page
TEXTURE_STD_RANGE = (0.0, 0.03)  # blotchy paper, grey levels
BLUR_SIGMA_RANGE = (0.0, 1.2)  # pixels
RULED_PROBABILITY = 0.25
RULED_PITCH_RANGE = (36.0, 64.0)  # pixels between ruled lines
RULED_LEVEL_RANGE = (0.08, 0.3)
BLEED_PROBABILITY = 0.2
BLEED_LEVEL_RANGE = (0.04, 0.15)
STROKE_PROBABILITY = 0.5  # of strokes that thicken and thin along the way
JPEG_PROBABILITY = 0.3
JPEG_QUALITY_RANGE = (30, 90)


def _smooth_noise(seed, shape, cells: tuple[int, int]) -> tf.Tensor:
  """float32 `shape` of standard normal values on a coarse grid, bilinearly interpolated."""
  grid = tf.random.stateless_normal([1, cells[0], cells[1], 1], seed, alg="philox")
  return tf.image.resize(grid, shape, method="bilinear")[0, :, :, 0]


def _blur(grey, sigma) -> tf.Tensor:
  """Gaussian blur of float32 [H, W] with a (tensor) sigma in pixels; 0 = unchanged.

  The page is mirrored at its edges, so the border blurs into itself, not into ink.
  """
  taps = tf.range(-3.0, 4.0)
  kernel = tf.exp(-0.5 * tf.square(taps / tf.maximum(sigma, 1e-3)))
  kernel = kernel / tf.reduce_sum(kernel)
  image = tf.pad(grey[None, :, :, None], [[0, 0], [3, 3], [3, 3], [0, 0]], mode="SYMMETRIC")
  image = tf.nn.conv2d(image, tf.reshape(kernel, [7, 1, 1, 1]), 1, "VALID")
  image = tf.nn.conv2d(image, tf.reshape(kernel, [1, 7, 1, 1]), 1, "VALID")
  return image[0, :, :, 0]


def _maybe(seed, probability: float, then, otherwise):
  return tf.cond(_uniform(seed, 0.0, 1.0) < probability, then, otherwise)


def scan_look(grey, seed) -> tf.Tensor:
  """float32 grey [H, W] in [0, 1] (paper = 1) made to look like a scan of real writing.

  In order: the ink's darkness, a stroke width that varies along the strokes,
  ruled lines and bleed-through from the page's back, the paper's grey level,
  texture and lighting, blur, and JPEG artefacts, each at random strength.
  """
  height, width = grey.shape
  seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=16)
  ink = 1.0 - grey

  # Thicker here, thinner there: a smooth field picks dilated or eroded ink.
  def vary_stroke():
    thick = tf.nn.max_pool2d(ink[None, :, :, None], 3, 1, "SAME")[0, :, :, 0]
    thin = -tf.nn.max_pool2d(-ink[None, :, :, None], 3, 1, "SAME")[0, :, :, 0]
    field = tf.clip_by_value(_smooth_noise(seeds[1], [height, width], (6, 12)), -1.0, 1.0)
    # Thinning only half way: a thin stroke fades but does not vanish.
    return tf.where(field > 0, ink + field * (thick - ink), ink - 0.5 * field * (thin - ink))

  ink = _maybe(seeds[0], STROKE_PROBABILITY, vary_stroke, lambda: ink)
  ink = ink * _uniform(seeds[2], *INK_LEVEL_RANGE, dtype=tf.float32)

  def ruled():
    pitch = _uniform(seeds[4], *RULED_PITCH_RANGE, dtype=tf.float32)
    phase = _uniform(seeds[5], 0.0, 1.0, dtype=tf.float32) * pitch
    rows = tf.range(height, dtype=tf.float32)
    distance = tf.abs(tf.math.floormod(rows - phase + pitch / 2, pitch) - pitch / 2)
    line = tf.maximum(0.0, 1.0 - distance)[:, None] * tf.ones([1, width])
    return line * _uniform(seeds[6], *RULED_LEVEL_RANGE, dtype=tf.float32)

  def bleed():
    back = _blur(tf.reverse(ink, axis=[1]), 2.0)
    return back * _uniform(seeds[8], *BLEED_LEVEL_RANGE, dtype=tf.float32)

  zeros = lambda: tf.zeros_like(ink)  # noqa: E731
  marks = _maybe(seeds[3], RULED_PROBABILITY, ruled, zeros)
  marks += _maybe(seeds[7], BLEED_PROBABILITY, bleed, zeros)
  ink = 1.0 - (1.0 - ink) * (1.0 - tf.clip_by_value(marks, 0.0, 1.0))

  # The paper: its grey level, a blotchy texture and light falling off one way.
  paper = _uniform(seeds[9], *PAPER_RANGE, dtype=tf.float32)
  texture = _smooth_noise(seeds[10], [height, width], (16, 32)) * _uniform(
    seeds[11], *TEXTURE_STD_RANGE, dtype=tf.float32
  )
  angle = _uniform(seeds[12], 0.0, 2.0 * math.pi, dtype=tf.float32)
  ys = tf.linspace(-0.5, 0.5, height)[:, None]
  xs = tf.linspace(-0.5, 0.5, width)[None, :]
  lighting = 1.0 - _uniform(seeds[13], *LIGHTING_RANGE, dtype=tf.float32) * (
    0.5 + tf.cos(angle) * xs + tf.sin(angle) * ys
  )
  grey = (paper + texture) * lighting * (1.0 - ink)
  grey = _blur(grey, _uniform(seeds[14], *BLUR_SIGMA_RANGE, dtype=tf.float32))
  grey = tf.clip_by_value(grey, 0.0, 1.0)

  def jpeg():
    quality_seed = tf.cast(seeds[15] % (2**31 - 1), tf.int32)
    return tf.image.stateless_random_jpeg_quality(
      grey[:, :, None], JPEG_QUALITY_RANGE[0], JPEG_QUALITY_RANGE[1], quality_seed
    )[:, :, 0]

  grey = _maybe(seeds[15][::-1], JPEG_PROBABILITY, jpeg, lambda: grey)
  return tf.ensure_shape(tf.clip_by_value(grey, 0.0, 1.0), [height, width])
