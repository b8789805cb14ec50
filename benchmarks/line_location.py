r"""Line location: the lines found from the cross-attention against the pages' true lines.

  python -m benchmarks.line_location --workdir=W [--num_pages=64] [--split=validation] \
      [--checkpoint=latest|best|STEP] [--config.decode.beam_size=4]

The pages are the synthetic evaluation pages of the run's config (its eval
split: the held-out fonts and text; data.source="embedded"), with the true
box of every line (the union of its words' boxes). Each page is decoded as
predict decodes an image (`predict.recognise`: config.decode, then the
cross-attention of the decoded tokens) and its lines located
(`line_location.locate_lines`). Predicted line i is matched with true line
i; a true line without a predicted line counts as IoU 0. Prints one JSON
line: the mean box IoU over the true lines and the share of them with IoU
>= 0.5, against the true boxes (`mean_iou`: the word images' boxes, a word
height tall whatever the letters) and against the same boxes shrunk to the
ink inside them (`mean_iou_ink`: what a line's outline hugs on a real
page); the numbers of pages, true lines and predicted lines with no true
line (extra_lines), the pages' CER, and the checkpoint's step.
"""

import json

from absl import app, flags
import jax
import numpy as np

from fphtr_jax import cli, inference, line_location, predict
from fphtr_jax import metrics as text_metrics
from fphtr_jax import tokenizer as tokenizer_lib
from fphtr_jax.models import resnet

FLAGS = flags.FLAGS
_NUM_PAGES = flags.DEFINE_integer("num_pages", 64, "Evaluation pages to score.")
_SPLIT = flags.DEFINE_enum("split", "validation", ["validation", "test"], "Evaluation split.")


def box_iou(a, b) -> float:
  """IoU of two (left, top, right, bottom) boxes, right and bottom exclusive."""
  width = min(a[2], b[2]) - max(a[0], b[0])
  height = min(a[3], b[3]) - max(a[1], b[1])
  inter = max(width, 0) * max(height, 0)
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union if union > 0 else 0.0


def line_ious(predicted, true) -> list[float]:
  """One IoU per true line: with the predicted line of the same index, 0 if there is none."""
  return [box_iou(p, t) for p, t in zip(predicted, true)] + [0.0] * (len(true) - len(predicted))


def ink_box(ink: np.ndarray, box) -> tuple[int, int, int, int]:
  """`box` shrunk to the rows and columns holding ink (line_location's measure of ink)."""
  left, top, right, bottom = box
  inside = ink[top:bottom, left:right]
  rows = np.flatnonzero(inside.sum(axis=1) >= line_location.MIN_ROW_INK)
  cols = np.flatnonzero(inside.sum(axis=0) >= line_location.MIN_ROW_INK)
  if not len(rows):
    return box
  return left + cols[0], top + rows[0], left + cols[-1] + 1, top + rows[-1] + 1


def eval_pages(config, split: str):
  """(images float32 [N, H, W, 1], texts, true line boxes [(left, top, right, bottom)] per page)."""
  from input_pipeline.sources import synthetic  # TensorFlow only where pages are made.

  tokenizer = tokenizer_lib.Tokenizer(config.data.charset)
  dataset = synthetic.create_eval_dataset(
    config, split, process_index=0, process_count=1, line_boxes=True
  )
  images, texts, boxes = [], [], []
  for batch in dataset.as_numpy_iterator():
    keep = batch["mask"] > 0
    images += list(batch["image"][keep])
    texts += tokenizer.decode_batch(batch["tokens"][keep])
    for page_boxes in batch["line_boxes"][keep]:
      boxes.append([(l, t, r, b) for t, l, b, r in page_boxes.tolist() if b > t])
  return np.stack(images), texts, boxes


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}: the benchmark takes only flags.")
  config = FLAGS.config
  if config.data.source != "embedded":
    cli.fail(
      f"data.source={config.data.source!r}: the true line boxes come from synthetic pages; "
      "give the workdir of a run with data.source='embedded'."
    )
  if _NUM_PAGES.value < 1:
    cli.fail(f"--num_pages={_NUM_PAGES.value} is invalid: expected 1 or more.")
  config.eval.num_examples = _NUM_PAGES.value
  try:
    cli.check_config(config)
    cli.check_checkpoint(FLAGS.workdir, FLAGS.checkpoint)
    run = inference.restore_run(FLAGS.workdir, config, FLAGS.checkpoint)
  except cli.CommandLineError as error:
    cli.fail(str(error), error.status)
  except (ValueError, OSError) as error:
    cli.fail(str(error), status=1)
  images, references, true_boxes = eval_pages(run.config, _SPLIT.value)
  height, width = images.shape[1:3]
  pages = [predict.Page(str(i), image, height, width) for i, image in enumerate(images)]
  texts, attentions = predict.recognise(run, pages, with_attention=True)
  stride = resnet.encoder_stride(run.config.model.encoder_last_stride)
  ious, ink_ious, extra = [], [], 0
  for page, text, attention, true in zip(pages, texts, attentions, true_boxes):
    located = line_location.locate_lines(
      attention, text, stride, page.image, (height, width), (height, width)
    )
    boxes = [line.box for line in located]
    ink = line_location.ink_map(page.image, (height, width))
    ious += line_ious(boxes, true)
    ink_ious += line_ious(boxes, [ink_box(ink, box) for box in true])
    extra += max(len(located) - len(true), 0)
  ious, ink_ious = np.asarray(ious), np.asarray(ink_ious)
  print(
    json.dumps(
      {
        "case": "line_location",
        "split": _SPLIT.value,
        "checkpoint": run.which,
        "step": run.step,
        "beam_size": int(run.config.decode.beam_size),
        "mean_iou": round(float(ious.mean()), 4),
        "iou_at_least_0.5": round(float((ious >= 0.5).mean()), 4),
        "mean_iou_ink": round(float(ink_ious.mean()), 4),
        "ink_iou_at_least_0.5": round(float((ink_ious >= 0.5).mean()), 4),
        "pages": len(pages),
        "lines": len(ious),
        "extra_lines": extra,
        "cer": round(text_metrics.character_error_rate(references, [t.text for t in texts]), 4),
      }
    ),
    flush=True,
  )


if __name__ == "__main__":
  jax.config.config_with_absl()
  app.run(main, flags_parser=cli.parse_flags_with_run_config)
