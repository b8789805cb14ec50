"""Learning curves of a run, from its TensorBoard logs, as a PNG (and a CSV).

  python -m fphtr_jax.curves --workdir=workdirs/cpu_fullpage --output=curves.png

Draws the training loss and the eval CER/WER against the step, with the
minutes of training on a second axis, in plain PIL (no plotting library).
Writes the same numbers to a CSV beside the picture.
"""

import csv
import glob
import os

from absl import app, flags
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fphtr_jax import cli

flags.DEFINE_string("workdir", None, "Workdir of a training run.")
flags.DEFINE_string("output", None, "PNG to write; default <workdir>/curves.png.")
FLAGS = flags.FLAGS

# Panel: tags drawn together, y range.
PANELS = (
  ("training loss", ("train/loss",), None),
  ("eval error rate", ("eval/cer", "eval/wer"), (0.0, 1.0)),
)
COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44))
SIZE, MARGIN = (560, 300), (56, 30, 16, 40)  # left, top, right, bottom


def read_scalars(workdir: str) -> dict[str, list[tuple[int, float, float]]]:
  """tag -> [(step, wall time, value)] from the run's event files, by step.

  A resumed run logs some steps twice; the last record of a step wins.
  """
  import tensorflow as tf  # only this reader needs it

  paths = sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*")))
  if not paths:
    raise FileNotFoundError(
      f"No TensorBoard event files in {workdir}: the training run logs them there."
    )
  records = {}
  for path in paths:
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.HasField("tensor"):
          array = tf.make_ndarray(value.tensor)
          if array.size != 1 or not np.issubdtype(array.dtype, np.number):
            continue  # images, text, hyperparameters
          number = float(array.reshape(-1)[0])
        elif value.HasField("simple_value"):
          number = value.simple_value
        else:
          continue
        records.setdefault(value.tag, {})[event.step] = (event.wall_time, number)
  return {tag: [(step, *steps[step]) for step in sorted(steps)] for tag, steps in records.items()}


def _smooth(values: np.ndarray, weight: float = 0.6) -> np.ndarray:
  """TensorBoard's exponential moving average."""
  out, last = [], values[0]
  for v in values:
    last = weight * last + (1 - weight) * v
    out.append(last)
  return np.asarray(out)


def _panel(title, series, y_range, max_step, minutes_at) -> Image.Image:
  """One chart: series = [(label, steps, values drawn, last value)]."""
  image = Image.new("RGB", SIZE, "white")
  draw = ImageDraw.Draw(image)
  font = ImageFont.load_default()
  left, top, right, bottom = MARGIN
  x0, y0, x1, y1 = left, top, SIZE[0] - right, SIZE[1] - bottom
  values = np.concatenate([v for _, _, v, _ in series]) if series else np.zeros(1)
  lo, hi = y_range or (float(values.min()), float(values.max()))
  hi = hi if hi > lo else lo + 1.0

  def xy(step, value):
    return (
      x0 + (x1 - x0) * step / max(max_step, 1),
      y1 - (y1 - y0) * (min(max(value, lo), hi) - lo) / (hi - lo),
    )

  draw.rectangle((x0, y0, x1, y1), outline=(0, 0, 0))
  for k in range(5):  # grid and labels
    value = lo + (hi - lo) * k / 4
    _, y = xy(0, value)
    draw.line((x0, y, x1, y), fill=(225, 225, 225))
    draw.text((4, y - 6), f"{value:.2f}", fill=(0, 0, 0), font=font)
    step = int(max_step * k / 4)
    x, _ = xy(step, lo)
    draw.text((x - 12, y1 + 4), str(step), fill=(0, 0, 0), font=font)
    draw.text((x - 12, y1 + 16), f"{minutes_at(step):.0f} min", fill=(100, 100, 100), font=font)
  draw.text((x0, 8), title, fill=(0, 0, 0), font=font)
  for index, (label, steps, vals, last) in enumerate(series):
    colour = COLOURS[index % len(COLOURS)]
    points = [xy(s, v) for s, v in zip(steps, vals)]
    if len(points) > 1:
      draw.line(points, fill=colour, width=2)
    for x, y in points if len(points) < 40 else ():
      draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
    draw.text((x1 - 150, y0 + 6 + 12 * index), f"{label} {last:.3f}", fill=colour, font=font)
  return image


def draw_curves(scalars) -> Image.Image:
  """The panels of PANELS one above the other, for the tags the run logged."""
  steps = [s for records in scalars.values() for s, _, _ in records]
  max_step = max(steps) if steps else 1
  # Minutes since the first record, interpolated at any step.
  timeline = sorted({(s, t) for records in scalars.values() for s, t, _ in records})
  start = timeline[0][1] if timeline else 0.0

  def minutes_at(step):
    if not timeline:
      return 0.0
    return (np.interp(step, [s for s, _ in timeline], [t for _, t in timeline]) - start) / 60

  panels = []
  for title, tags, y_range in PANELS:
    series = []
    for tag in tags:
      if tag in scalars:
        s, _, v = zip(*scalars[tag])
        v = np.asarray(v)
        series.append((tag, s, _smooth(v) if tag.startswith("train/") else v, v[-1]))
    panels.append(_panel(title, series, y_range, max_step, minutes_at))
  out = Image.new("RGB", (SIZE[0], SIZE[1] * len(panels)), "white")
  for index, panel in enumerate(panels):
    out.paste(panel, (0, SIZE[1] * index))
  return out


def write_csv(scalars, path: str):
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["tag", "step", "wall_time", "value"])
    for tag in sorted(scalars):
      for step, wall_time, value in scalars[tag]:
        writer.writerow([tag, step, f"{wall_time:.1f}", f"{value:.6g}"])


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}: curves takes only flags.")
  workdir = FLAGS.workdir
  if not workdir:
    cli.fail("--workdir is required: the workdir of a training run.")
  if not os.path.exists(workdir):
    cli.fail(f"--workdir={workdir}: no such folder; give the workdir of a training run.")
  if not os.path.isdir(workdir):
    cli.fail(f"--workdir={workdir} is a file, not a folder; give the workdir of a training run.")
  output = FLAGS.output or os.path.join(workdir, "curves.png")
  if os.path.isdir(output):
    cli.fail(f"--output={output} is a folder; give a file name, e.g. curves.png.")
  folder = os.path.dirname(output)
  try:
    if folder:
      cli.check_writable_dir(folder, hint=f", so --output={output} cannot be written")
    scalars = read_scalars(workdir)
  except cli.CommandLineError as error:
    cli.fail(str(error))
  except FileNotFoundError as error:
    cli.fail(str(error), status=1)
  if folder:
    os.makedirs(folder, exist_ok=True)
  draw_curves(scalars).save(output, format="PNG")
  write_csv(scalars, os.path.splitext(output)[0] + ".csv")
  print(f"Wrote {output} and {os.path.splitext(output)[0] + '.csv'}.")


if __name__ == "__main__":
  app.run(main)
