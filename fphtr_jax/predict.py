r"""Transcribes page images with a trained checkpoint.

  python -m fphtr_jax.predict --workdir=W page.png scans/ [--format=text|json|pagexml|alto] \
      [--output_dir=DIR] [--checkpoint=latest|best|STEP] [--attention_dir=DIR] \
      [--scale=auto|0.5] [--noprepare] [--config.decode.beam_size=4]

Arguments are image files or folders (their PNG, JPEG and TIFF files, sorted).
Any size and colour: an image is converted to grey and prepared like the
training pages (`input_pipeline.scan`): its paper flattened to white (uneven
lighting and paper tone divided out, the darkest ink made black) and the image
cropped to its text, with a margin of half a word. It is then scaled, shrunk
to fit the model's canvas (data.image_height x data.image_width) if still
larger, and placed at its top-left corner on blank paper, where the training
pages put their text. Training pages are rendered at a word height of
data.word_height pixels: --scale=auto (the default) measures the height of the
writing and scales it to that size; a number forces the scale instead (IAM
scans at 300 dpi want about 0.5 for the IAM configs). --noprepare reads the
image as it is, only scaled and fitted (auto then still measures its writing).

--format=text prints each image's path, its confidence and its text;
--format=json prints one JSON object per image: path, text, confidence,
min_confidence, log_prob, its lines, each with its confidences and its box in
the image's pixels, the scale the image was placed at, the height of its
writing in its pixels as measured (text_height, null without ink) and the crop
read ([left, top, right, bottom] in its pixels). Confidences are token
probabilities under the model: the mean and the minimum over a page or line.
--format=pagexml or alto writes <image stem>.xml per image into --output_dir
(PAGE-XML 2019 or ALTO v4: the lines in order with their text, confidence,
outline, baseline and words, located from the decoder's cross-attention; see
line_location) and prints the path of each file written.
--attention_dir writes <image name>.attention.png per image: the page with the
decoder's cross-attention while it wrote each line, one colour per line.

An image that cannot be read is reported (stderr, or an "error" field in
JSON) and the others go on; the exit status is then 1.
"""

import dataclasses
import json
import math
import os
import sys

from absl import app, flags, logging
import jax
import numpy as np
from PIL import Image, ImageOps

from fphtr_jax import (
  cli,
  confidence,
  inference,
  line_location,
  page_export,
  pixels,
  sharding,
  transcribe,
  visualize,
)
from fphtr_jax.models import resnet
from input_pipeline import common, image_io, scan

FLAGS = flags.FLAGS
flags.DEFINE_enum(
  "format",
  "text",
  ["text", "json", *page_export.FORMATS],
  "text or json on stdout; pagexml or alto: one file per image in --output_dir.",
)
# evaluate.py has a flag of this name too; tools that import both share one.
flags.DEFINE_string(
  "output_dir",
  None,
  "Folder for the PAGE-XML or ALTO files (--format=pagexml|alto), made if missing.",
  allow_override=True,
)
flags.DEFINE_string("attention_dir", None, "Folder for cross-attention pictures, one per image.")
flags.DEFINE_string(
  "scale",
  "auto",
  "Scale applied to every image before it is fitted to the canvas: auto (its writing at "
  "data.word_height) or a number.",
)
flags.register_validator(
  "scale",
  lambda scale: parse_scale(scale) is not None,
  message="expected auto or a number above 0 (1 keeps an image's size, 0.5 halves it)",
)
flags.DEFINE_bool(
  "prepare",
  True,
  "Flatten the paper and crop to the text before scaling (--noprepare: the image as it is).",
)
flags.register_validator(
  "attention_dir", lambda path: path is None or bool(path), message="expected a folder"
)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


# An input file that is not an image we can use; the message names the file.
UnreadableImage = image_io.BadImageError


@dataclasses.dataclass
class Page:
  """An image placed on the model's canvas.

  Attributes:
    path: the file it came from.
    image: float32 [H, W, 1], normalised like the training pages.
    height, width: the size of the image on the canvas (its top-left part).
    original: (height, width) of the image file; None = (height, width).
    crop: (top, left, bottom, right) of the part of the file on the canvas,
      bottom and right exclusive; None = all of it.
    scale: the scale it was placed at (canvas pixels per pixel of the file).
    text_height: its writing's height in the file's pixels (`scan.text_height`),
      None when not measured or without ink.
  """

  path: str
  image: np.ndarray
  height: int
  width: int
  original: tuple[int, int] | None = None
  crop: tuple[int, int, int, int] | None = None
  scale: float = 1.0
  text_height: float | None = None

  @property
  def original_size(self) -> tuple[int, int]:
    return self.original or (self.height, self.width)

  @property
  def crop_box(self) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the part of the file on the canvas."""
    return self.crop or (0, 0, *self.original_size)


def list_images(paths: list[str]) -> list[str]:
  """Files as given, folders as their image files (by extension, sorted)."""
  files = []
  for path in paths:
    if os.path.isdir(path):
      names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTENSIONS))
      files += [os.path.join(path, n) for n in names if os.path.isfile(os.path.join(path, n))]
    else:
      files.append(path)
  return files


def read_grey(path: str, max_pixels: int = image_io.DEFAULT_MAX_PIXELS) -> np.ndarray:
  """float32 [h, w] grey levels in [0, 1] (paper = 1) of any PNG/JPEG/TIFF.

  Raises:
    UnreadableImage: missing, empty, truncated, not an image, or larger than
      `max_pixels`.
  """
  image = ImageOps.exif_transpose(image_io.open_image(path, max_pixels))
  if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16/32-bit grey (TIFF)
    grey = np.asarray(image, np.float32)
    top = 65535.0 if image.mode.startswith("I;16") or grey.max() > 255 else 255.0
    grey = grey / (1.0 if image.mode == "F" and grey.max() <= 1.0 else top)
  else:
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
      rgba = image.convert("RGBA")
      image = Image.new("RGBA", rgba.size, "white")
      image.alpha_composite(rgba)
    grey = np.asarray(image.convert("L"), np.float32) / 255.0
  if grey.size == 0:
    raise UnreadableImage(f"{path}: the image has no pixels ({grey.shape}).")
  return np.clip(grey, 0.0, 1.0)


def place_on_canvas(
  grey: np.ndarray, height: int, width: int, scale: float = 1.0
) -> tuple[np.ndarray, int, int]:
  """Grey [h, w] in [0, 1] -> (normalised float32 [height, width, 1], placed h, placed w).

  The training pipeline's canvas fitting (`input_pipeline.common.fit_to_canvas`):
  scaled by `scale`, shrunk (aspect ratio kept) to fit if still larger than
  the canvas, and pasted at the top-left of blank paper.
  """
  canvas, placed_h, placed_w = common.fit_to_canvas(grey, height, width, scale)
  return np.asarray(pixels.normalize(canvas), np.float32), int(placed_h), int(placed_w)


def parse_scale(scale: float | str) -> float | str | None:
  """The scale "auto", or one above 0 (a number or its text) as a float; None if neither."""
  if scale == "auto":
    return scale
  try:
    value = float(scale)
  except (TypeError, ValueError):
    return None
  return value if 0 < value and math.isfinite(value) else None


def load_page(
  path: str,
  height: int,
  width: int,
  scale: float | str = 1.0,
  max_pixels: int = image_io.DEFAULT_MAX_PIXELS,
  *,
  word_height: float | None = None,
  prepare: bool = True,
) -> Page:
  """Reads an image file and places it on a `height` x `width` canvas.

  Args:
    path: the image file.
    height, width: the model's canvas.
    scale: "auto" (its writing scaled to `word_height`, `scan.auto_scale`) or
      a scale above 0; a number or its text, as --scale takes it.
    max_pixels: the largest image read.
    word_height: the model's data.word_height; needed for scale="auto".
    prepare: flatten its paper and crop it to its text first (`scan.prepare`);
      False places the image as it is.

  Raises:
    UnreadableImage: see `read_grey`.
    ValueError: a scale that is neither "auto" nor above 0, or "auto" without
      a word height.
  """
  chosen = parse_scale(scale)
  if chosen is None:
    raise ValueError(f"scale={scale!r}: expected auto or a number above 0.")
  if chosen == "auto" and word_height is None:
    raise ValueError("scale='auto' needs the model's word height (data.word_height).")
  grey = read_grey(path, max_pixels)
  original = grey.shape[:2]
  crop, writing = (0, 0, *original), None
  if prepare:
    prepared = scan.prepare(grey, word_height, (height, width), chosen)
    grey, crop, chosen, writing = prepared.grey, prepared.box, prepared.scale, prepared.text_height
  elif chosen == "auto":
    writing = scan.text_height(scan.flatten_paper(grey))
    chosen = scan.auto_scale(writing, word_height)
  image, placed_h, placed_w = place_on_canvas(grey, height, width, chosen)
  return Page(
    path=path,
    image=image,
    height=placed_h,
    width=placed_w,
    original=original,
    crop=crop,
    scale=min(chosen, height / grey.shape[0], width / grey.shape[1]),
    text_height=writing,
  )


def load_config_page(path: str, config, scale: float | str, prepare: bool) -> Page:
  """`load_page` onto the canvas of `config` (its data.image_height/width and word_height)."""
  d = config.data
  return load_page(
    path,
    int(d.image_height),
    int(d.image_width),
    scale,
    d.max_image_pixels,
    word_height=float(d.word_height),
    prepare=prepare,
  )


# --- Recognition -----------------------------------------------------------------------


def recognise(run: inference.Run, pages: list[Page], *, with_attention: bool = False):
  """Transcribes pages in batches of eval.batch_size (the last one padded).

  Returns:
    (one Transcription per page, one float32 [L - 1, S] cross-attention per
    page or None each when not `with_attention`).
  """
  batch_size = int(run.config.eval.batch_size)
  p_decode = jax.jit(transcribe.decode_fn(run.model, run.config))
  p_attention = jax.jit(
    lambda variables, images, tokens: transcribe.cross_attention(
      run.model, variables, images, tokens
    )
  )
  blank = np.full_like(pages[0].image, pixels.PAPER)
  texts, attentions = [], []
  with run.mesh_context():
    for start in range(0, len(pages), batch_size):
      chunk = pages[start : start + batch_size]
      images = np.stack([p.image for p in chunk] + [blank] * (batch_size - len(chunk)))
      global_images = sharding.put_batch({"image": images}, run.mesh)["image"]
      output = p_decode(run.variables, global_images)
      texts += confidence.transcriptions(run.tokenizer, sharding.to_host(output))[: len(chunk)]
      if with_attention:
        attention = sharding.to_host(p_attention(run.variables, global_images, output.tokens))
        attentions += list(attention[: len(chunk)])
      else:
        attentions += [None] * len(chunk)
  return texts, attentions


def locate(run: inference.Run, page: Page, text: confidence.Transcription, attention):
  """Its lines' `line_location.LineLocation`s, in the image file's pixels."""
  top, left, bottom, right = page.crop_box
  locations = line_location.locate_lines(
    attention,
    text,
    resnet.encoder_stride(run.config.model.encoder_last_stride),
    page.image,
    (page.height, page.width),
    (bottom - top, right - left),
  )
  return [location.shifted(dx=left, dy=top) for location in locations]


def output_name(path: str) -> str:
  """The PAGE-XML / ALTO file of an image: <image stem>.xml."""
  return os.path.splitext(os.path.basename(path))[0] + ".xml"


def check_output_flags(output_format: str, output_dir: str | None):
  """Raises CommandLineError unless --output_dir is given exactly when --format writes files."""
  if output_format in page_export.FORMATS and not output_dir:
    raise cli.CommandLineError(
      f"--format={output_format} writes one file per image: give the folder, --output_dir=DIR."
    )
  if output_dir and output_format not in page_export.FORMATS:
    raise cli.CommandLineError(
      f"--output_dir is for --format=pagexml or alto; --format={output_format} "
      "prints to stdout (leave --output_dir out, or pick one of those formats)."
    )


def check_output_names(paths: list[str]):
  """Raises CommandLineError if two images would write the same <stem>.xml."""
  seen = {}
  for path in paths:
    name = output_name(path)
    if name in seen:
      raise cli.CommandLineError(
        f"{seen[name]} and {path} would both be written to {name} in --output_dir; "
        "rename one of them or transcribe them in separate runs."
      )
    seen[name] = path


def write_document(output_format: str, output_dir: str, page: Page, text, locations) -> str:
  """Writes the page's PAGE-XML or ALTO file into `output_dir`; returns its path."""
  height, width = page.original_size
  tree = page_export.document(
    output_format, os.path.basename(page.path), width, height, text, locations
  )
  path = os.path.join(output_dir, output_name(page.path))
  page_export.write(tree, path)
  return path


def format_result(
  path: str,
  text: confidence.Transcription | None,
  error: str | None,
  output_format: str,
  locations=None,
  page: Page | None = None,
) -> tuple[str, str]:
  """(stdout, stderr) lines for one image: its transcription or its error.

  `locations`: its lines' `line_location.LineLocation`s, for the boxes of
  --format=json (left, top, right, bottom; right and bottom exclusive).
  `page`: the image as it was placed, for the scale, text_height and crop
  (left, top, right, bottom) of --format=json.
  """
  if error is not None:
    if output_format == "json":
      return json.dumps({"path": path, "error": error}, ensure_ascii=False), f"error: {error}"
    return "", f"error: {error}"
  if output_format == "json":
    result = {"path": path, **text.to_json()}
    for line, location in zip(result["lines"], locations or ()):
      line["box"] = list(location.box)
    if page is not None:
      top, left, bottom, right = page.crop_box
      result["scale"] = round(page.scale, 6)
      result["text_height"] = page.text_height
      result["crop"] = [left, top, right, bottom]
    return json.dumps(result, ensure_ascii=False), ""
  header = f"==> {path} (confidence {text.confidence:.3f}, min {text.min_confidence:.3f}) <=="
  return header + "\n" + text.text, ""


def main(argv):
  if len(argv) < 2:
    cli.fail("name at least one image file or folder to transcribe.")
  writes_files = FLAGS.format in page_export.FORMATS
  try:
    check_output_flags(FLAGS.format, FLAGS.output_dir)
    cli.check_config(FLAGS.config, word_bank=False)  # it reads images, renders no pages
    if not FLAGS.model:
      cli.check_checkpoint(FLAGS.workdir, FLAGS.checkpoint)
    if writes_files:
      check_output_names(list_images(argv[1:]))
    if jax.process_index() == 0:
      for flag in ("attention_dir", "output_dir"):
        if FLAGS[flag].value:
          cli.make_writable_dir(FLAGS[flag].value, flag)
  except cli.CommandLineError as error:
    cli.fail(str(error))
  pages, errors = [], {}
  for path in list_images(argv[1:]):
    try:
      pages.append(load_config_page(path, FLAGS.config, FLAGS.scale, FLAGS.prepare))
    except (UnreadableImage, OSError) as e:
      errors[path] = str(e) if isinstance(e, UnreadableImage) else f"{path}: {e}"
  if not pages and not errors:
    cli.fail(f"no image files in {argv[1:]} (looked for {', '.join(IMAGE_EXTENSIONS)}).")
  results, written = {}, {}
  if pages:
    try:
      run = inference.open_run(FLAGS.config)
    except (ValueError, OSError) as error:  # no such step, a damaged checkpoint, another shape
      cli.fail(str(error), status=1)
    with_locations = FLAGS.format != "text"
    texts, attentions = recognise(
      run, pages, with_attention=with_locations or bool(FLAGS.attention_dir)
    )
    for page, text, attention in zip(pages, texts, attentions):
      locations = locate(run, page, text, attention) if with_locations else None
      results[page.path] = text, locations, page
      if writes_files and jax.process_index() == 0:
        written[page.path] = write_document(FLAGS.format, FLAGS.output_dir, page, text, locations)
      if FLAGS.attention_dir:
        name = os.path.splitext(os.path.basename(page.path))[0] + ".attention.png"
        stride = resnet.encoder_stride(run.config.model.encoder_last_stride)
        picture = visualize.attention_picture(
          page.image, text, attention, stride, placed=(page.height, page.width)
        )
        Image.fromarray(picture).save(os.path.join(FLAGS.attention_dir, name))
  if jax.process_index() != 0:
    return 1 if errors else 0
  for path in list_images(argv[1:]):  # in the order given
    text, locations, page = results.get(path, (None, None, None))
    if writes_files:  # the files written, the errors on stderr
      out = written.get(path, "")
      err = f"error: {errors[path]}" if path in errors else ""
    else:
      out, err = format_result(path, text, errors.get(path), FLAGS.format, locations, page)
    if out:
      print(out)
    if err:
      sys.stderr.write(err + "\n")
  sys.stdout.flush()
  if errors:
    logging.error("%d of %d images could not be read.", len(errors), len(errors) + len(pages))
  return 1 if errors else 0


if __name__ == "__main__":
  jax.config.config_with_absl()
  app.run(main, flags_parser=cli.parse_flags_with_run_config)
