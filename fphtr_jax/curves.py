"""Learning curves of a run, from its TensorBoard logs, as a PNG (and a CSV).

  python -m fphtr_jax.curves --workdir=workdirs/cpu_fullpage --output=curves.png

Draws the training loss and the validation CER/WER against the step, with
the minutes of training on the top axis, with matplotlib. Writes the same
numbers to a CSV beside the picture. `read_events` is the one reader of a
run's event files (report.py uses it too).
"""

import csv
import dataclasses
import glob
import os

from absl import app, flags
from matplotlib import ticker
from matplotlib.figure import Figure  # no pyplot: no display, no global state
import numpy as np

from fphtr_jax import cli

# --workdir is the same flag as evaluate's and predict's, which report shares a process with.
if "workdir" not in flags.FLAGS:
  flags.DEFINE_string("workdir", None, "Workdir of a training run.")
flags.DEFINE_string("output", None, "PNG to write; default <workdir>/curves.png.")
FLAGS = flags.FLAGS

# Panel: title, tags drawn together, whether the values are error rates (percent axis).
PANELS = (
  ("training loss", ("train/loss",), False),
  ("validation error rate", ("eval/cer", "eval/wer"), True),
)
LABELS = {"train/loss": "loss", "eval/cer": "CER", "eval/wer": "WER"}
HPARAMS_PLUGIN = "hparams"
SESSION_START_TAG = "_hparams_/session_start_info"


@dataclasses.dataclass
class RunEvents:
  """What a run's event files hold.

  scalars: tag -> [(step, wall time, value)] by step; a resumed run logs some
    steps twice, and the last record of a step wins.
  timeline: [(step, seconds of training)] by step: the time from the first
    event of each session (event file) on, the gaps between sessions left out.
  sessions: the hyperparameters of each start of the run (TensorBoard's
    HParams sessions: config fields, run.* hardware), oldest first.
  """

  scalars: dict[str, list[tuple[int, float, float]]]
  timeline: list[tuple[int, float]]
  sessions: list[dict]

  def minutes_at(self, steps) -> np.ndarray:
    """Minutes of training at `steps` (interpolated), float64 like `steps`."""
    if not self.timeline:
      return np.zeros_like(np.asarray(steps, np.float64))
    s, t = zip(*self.timeline)
    return np.interp(steps, s, np.maximum.accumulate(t)) / 60

  @property
  def seconds(self) -> float:
    """Seconds of training in all, over every session."""
    return max((t for _, t in self.timeline), default=0.0)


def _value_of(proto_value):
  kind = proto_value.WhichOneof("kind")
  return {
    "number_value": proto_value.number_value,
    "string_value": proto_value.string_value,
    "bool_value": proto_value.bool_value,
  }.get(kind)


def read_events(logdir: str) -> RunEvents:
  """Reads the event files directly in `logdir` (not its subfolders).

  Raises:
    FileNotFoundError: there are none.
  """
  from tensorboard.plugins.hparams import metadata
  import tensorflow as tf  # only this reader needs it
  from tensorflow.core.util import event_pb2

  paths = sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*")))
  if not paths:
    raise FileNotFoundError(
      f"No TensorBoard event files in {logdir}: the training run logs them there."
    )
  records, elapsed, sessions, offset = {}, {}, [], 0.0
  for path in paths:
    first = last = None
    for record in tf.data.TFRecordDataset(path):
      event = event_pb2.Event.FromString(record.numpy())
      first = event.wall_time if first is None else first
      last = event.wall_time
      for value in event.summary.value:
        if value.tag == SESSION_START_TAG:
          info = metadata.parse_session_start_info_plugin_data(value.metadata.plugin_data.content)
          sessions.append((event.wall_time, {k: _value_of(v) for k, v in info.hparams.items()}))
          continue
        if value.tag.startswith("_hparams_/"):
          continue  # the experiment's declaration, not a number
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
        elapsed[event.step] = offset + event.wall_time - first
    if first is not None:
      offset += last - first
  return RunEvents(
    scalars={
      tag: [(step, *steps[step]) for step in sorted(steps)] for tag, steps in records.items()
    },
    timeline=sorted(elapsed.items()),
    sessions=[values for _, values in sorted(sessions, key=lambda s: s[0])],
  )


def smooth(values: np.ndarray, weight: float = 0.6) -> np.ndarray:
  """TensorBoard's exponential moving average."""
  out, last = [], values[0]
  for v in values:
    last = weight * last + (1 - weight) * v
    out.append(last)
  return np.asarray(out)


def _interp(x, xp, fp):
  """np.interp, continued along the end segments instead of flat (axes run past the data)."""
  x = np.asarray(x, np.float64)
  y = np.interp(x, xp, fp)
  if len(xp) > 1:
    low, high = x < xp[0], x > xp[-1]
    y[low] = fp[0] + (x[low] - xp[0]) * (fp[1] - fp[0]) / (xp[1] - xp[0])
    y[high] = fp[-1] + (x[high] - xp[-1]) * (fp[-1] - fp[-2]) / (xp[-1] - xp[-2])
  return y


def add_minutes_axis(ax, events: RunEvents):
  """A top axis with the minutes of training at the steps below."""
  steps = np.asarray([s for s, _ in events.timeline], np.float64)
  if len(steps) < 2:
    return
  minutes = np.maximum.accumulate([t for _, t in events.timeline]) / 60
  # Both directions must increase for matplotlib: ties broken by a hair.
  minutes = minutes + np.arange(len(minutes)) * 1e-6
  top = ax.secondary_xaxis(
    "top", functions=(lambda s: _interp(s, steps, minutes), lambda m: _interp(m, minutes, steps))
  )
  top.set_xlabel("minutes of training")


def percent_axis(ax, highest: float):
  """Error rates as percentages, from 0 to above the highest value drawn (it can pass 100%)."""
  ax.yaxis.set_major_formatter(ticker.PercentFormatter(1.0, decimals=0))
  ax.set_ylim(0, max(highest, 0.01) * 1.08)


def draw_series(ax, steps, values, label: str, **style):
  """One curve, with markers where there are few points (one evaluation is a dot)."""
  marker = "o" if len(steps) < 40 else None
  return ax.plot(steps, values, label=label, marker=marker, markersize=4, **style)


def draw_curves(events: RunEvents):
  """The panels of PANELS one above the other: a matplotlib Figure."""
  fig = Figure(figsize=(7, 8), layout="constrained")
  axes = fig.subplots(len(PANELS), 1, sharex=True)
  scalars = events.scalars
  for ax, (title, tags, rates) in zip(axes, PANELS):
    drawn, highest = False, 0.0
    for tag in tags:
      if tag not in scalars:
        continue
      steps, _, values = (np.asarray(x) for x in zip(*scalars[tag]))
      last = f"{values[-1]:.1%}" if rates else f"{values[-1]:.3f}"
      label = f"{LABELS.get(tag, tag)} (last {last})"
      if tag.startswith("train/") and len(values) > 2:
        (line,) = ax.plot(steps, values, alpha=0.25, linewidth=1)
        draw_series(ax, steps, smooth(values), f"{label}, smoothed", color=line.get_color())
      else:
        draw_series(ax, steps, values, label)
      drawn, highest = True, max(highest, float(values.max()))
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if rates:
      percent_axis(ax, highest)
    if drawn:
      ax.legend(loc="best")
    else:
      ax.text(0.5, 0.5, "not logged yet", ha="center", va="center", transform=ax.transAxes)
  axes[-1].set_xlabel("step")
  add_minutes_axis(axes[0], events)
  return fig


def save_figure(fig, path: str):
  fig.savefig(path, format="png", dpi=110)


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
    events = read_events(workdir)
  except cli.CommandLineError as error:
    cli.fail(str(error))
  except FileNotFoundError as error:
    cli.fail(str(error), status=1)
  if folder:
    os.makedirs(folder, exist_ok=True)
  save_figure(draw_curves(events), output)
  write_csv(events.scalars, os.path.splitext(output)[0] + ".csv")
  print(f"Wrote {output} and {os.path.splitext(output)[0] + '.csv'}.")


if __name__ == "__main__":
  app.run(main)
