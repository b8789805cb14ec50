r"""A Markdown table of training runs: what differs between them and what they reached.

  python -m fphtr_jax.report DIR... [--fields=F,...] [--tests=NAME,...] [--curves=PNG]
      [--markdown=FILE.md]

Each DIR is a run's workdir or a folder of workdirs (a sweep's). One row per
run: the config fields that differ between the runs (from their config.json),
the steps done, the wall time of training (from the TensorBoard events: each
session's first to last event, the pauses between sessions left out), the
hardware (the run.* hyperparameters training logs), the best validation CER
and its step, the last one, and the test figures found under evaluations/
(each `summary.json` of the test split, and the last step of each
`test_history*/history.jsonl` that `evaluate --checkpoint=all` writes), and
the real scans scored by `evaluate_real --output_dir=W/evaluations/NAME`, one
column a level ("NAME pages", "NAME lines"). `--fields` names the config
fields to show instead of all that differ (empty: none), and `--tests` the
evaluation columns, in that order, instead of all found (e.g.
`--tests="real_scans lines,test_pages"`), for a table narrow enough to read.
`--curves=PNG` draws the runs' validation CER against steps and minutes.
"""

import dataclasses
import json
import os
import re
import sys

from absl import app, flags
from matplotlib.figure import Figure
import numpy as np

from fphtr_jax import cli, curves, evaluate, evaluate_real, hparams, inference

flags.DEFINE_list(
  "fields", None, "Config fields to show (e.g. train.num_steps), instead of all that differ."
)
flags.DEFINE_list(
  "tests",
  None,
  'Evaluation columns to show, in order (e.g. "real_scans lines,test_pages"), instead of all.',
)
flags.DEFINE_string("curves", None, "Also draw the runs' validation CER curves into this PNG.")
flags.DEFINE_string("markdown", None, "Also write the table to this Markdown file.")
FLAGS = flags.FLAGS

MISSING = "—"


@dataclasses.dataclass
class Run:
  """What the report reads of one workdir."""

  workdir: str
  name: str
  fields: dict  # config field path -> value (hparams.flat_hparams of config.json)
  events: curves.RunEvents | None
  tests: dict  # evaluation name -> (cer, wer, step)


def find_runs(paths: list[str]) -> list[str]:
  """The workdirs of `paths`: each a workdir (it has config.json) or a folder of them.

  Files are passed over: a shell glob over a sweep's folder (`report DIR/*`)
  also matches the files beside its runs, such as the sweep's TensorBoard
  experiment.

  Raises:
    cli.CommandLineError: a path that is missing, or holds no run; only files.
  """
  workdirs = []
  for path in paths:
    if os.path.isfile(path):
      continue
    if not os.path.isdir(path):
      raise cli.CommandLineError(f"{path}: no such folder; give workdirs or folders of them.")
    if os.path.isfile(os.path.join(path, inference.CONFIG_FILENAME)):
      workdirs.append(path)
      continue
    inside = sorted(
      (
        os.path.join(path, name)
        for name in os.listdir(path)
        if os.path.isfile(os.path.join(path, name, inference.CONFIG_FILENAME))
      ),
      key=natural_order,
    )
    if not inside:
      raise cli.CommandLineError(
        f"{path} is not a training run's workdir (no {inference.CONFIG_FILENAME}) and holds none."
      )
    workdirs += inside
  if not workdirs:
    raise cli.CommandLineError(f"{' '.join(paths)}: files, not workdirs or folders of them.")
  return workdirs


def natural_order(name: str) -> list:
  """A sort key that orders the numbers in names by value: "n=50" before "n=200"."""
  return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _test_figures(workdir: str) -> dict:
  """evaluation name -> (cer, wer, step) of the test split's evaluations in `workdir`."""
  folder = os.path.join(workdir, "evaluations")
  found = {}
  for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
    path = os.path.join(folder, name)
    history = evaluate.read_history(path)
    if history and name.startswith("test"):
      last = history[-1]
      found[name] = (last["cer"], last["wer"], last["step"])
      continue
    try:
      with open(os.path.join(path, "summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    except (OSError, ValueError):
      continue
    if "data" in summary and "all" in summary:  # evaluate_real's: one column a level
      for level in evaluate_real.LEVELS:
        if level in summary:
          figures = summary[level]
          found[f"{name} {level}s"] = (figures["cer"], figures["wer"], summary.get("step", 0))
      continue
    if summary.get("split") != "test":
      continue
    # test_best_step11000 and test_best_step12000: one column, the later step.
    key = re.sub(r"_step\d+", "", name)
    if key not in found or summary.get("step", 0) >= found[key][2]:
      found[key] = (summary["cer"], summary["wer"], summary.get("step", 0))
  return found


def read_run(workdir: str) -> Run:
  config = inference.read_config_file(os.path.join(workdir, inference.CONFIG_FILENAME))
  try:
    events = curves.read_events(workdir)
  except FileNotFoundError:
    events = None
  return Run(
    workdir=workdir,
    name=os.path.basename(os.path.normpath(workdir)),
    fields=hparams.flat_hparams(config),
    events=events,
    tests=_test_figures(workdir),
  )


def differing_fields(runs: list[Run]) -> list[str]:
  """The config fields whose values are not the same in every run, by name."""
  names = sorted({name for run in runs for name in run.fields})
  return [n for n in names if len({json.dumps(run.fields.get(n)) for run in runs}) > 1]


def _refuse_unknown(flag: str, asked: list[str], known, where: str, hint: str):
  """Raises cli.CommandLineError naming the names of --`flag` that are not `known`."""
  unknown = [name for name in asked if name not in known]
  if unknown:
    raise cli.CommandLineError(f"--{flag}: {', '.join(unknown)} is in no run's {where}; {hint}.")


def check_fields(runs: list[Run], fields: list[str]):
  """Raises cli.CommandLineError for a field that no run's config has, naming it."""
  known = {name for run in runs for name in run.fields}
  hint = f"the fields that differ are {', '.join(differing_fields(runs)) or 'none'}"
  _refuse_unknown("fields", fields, known, "config", hint)


def check_tests(runs: list[Run], tests: list[str]):
  """Raises cli.CommandLineError for an evaluation that no run has, naming it."""
  known = sorted({name for run in runs for name in run.tests})
  _refuse_unknown("tests", tests, known, "evaluations", f"they have {', '.join(known) or 'none'}")


def _cell(value) -> str:
  if value is None:
    return MISSING
  if isinstance(value, float):
    value = f"{value:g}"
  return str(value).replace("|", "\\|") or '""'


def _duration(seconds: float) -> str:
  minutes = round(seconds / 60)
  if seconds < 60:
    return f"{seconds:.0f} s"
  if minutes < 60:
    return f"{seconds // 60:.0f} min {seconds % 60:.0f} s"
  return f"{minutes // 60} h {minutes % 60} min"


def _hardware(events: curves.RunEvents | None) -> str:
  """'1 × cpu', or each change, in order: '1 × cpu, then 1 × NVIDIA H200'."""
  seen = []
  for session in events.sessions if events else []:
    if "run.device_kind" in session:
      count = int(session.get("run.device_count") or 0)
      text = f"{count} × {session['run.device_kind']}"
      if not seen or seen[-1] != text:
        seen.append(text)
  return ", then ".join(seen) or MISSING


def _rate(value: float) -> str:
  return f"{value:.1%}"


def table(runs: list[Run], fields: list[str] | None = None, tests: list[str] | None = None) -> str:
  """The Markdown table of `runs`, one row each.

  `fields` are its config columns; None: those that differ between the runs.
  `tests` its evaluation columns; None: every one found, by name.
  """
  if fields is None:
    fields = differing_fields(runs) if len(runs) > 1 else []
  if tests is None:
    tests = sorted({name for run in runs for name in run.tests})
  header = ["run", *fields, "steps", "wall time", "hardware", "best val. CER (step)"]
  header += ["last val. CER", *(f"{name} CER / WER" for name in tests)]
  rows = []
  for run in runs:
    scalars = run.events.scalars if run.events else {}
    steps = max((s for records in scalars.values() for s, _, _ in records), default=None)
    num_steps = run.fields.get("train.num_steps")
    cers = scalars.get("eval/cer", [])
    if cers:
      best = min(cers, key=lambda record: record[2])
      best_text, last_text = f"{_rate(best[2])} ({best[0]})", _rate(cers[-1][2])
    else:
      best_text = last_text = MISSING
    row = [run.name, *(_cell(run.fields.get(f)) for f in fields)]
    row += [
      f"{steps if steps is not None else MISSING} / {_cell(num_steps)}",
      _duration(run.events.seconds) if run.events else MISSING,
      _hardware(run.events),
      best_text,
      last_text,
    ]
    for name in tests:
      if name in run.tests:
        cer, wer, step = run.tests[name]
        row.append(f"{_rate(cer)} / {_rate(wer)} ({step})")
      else:
        row.append(MISSING)
    rows.append(row)
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return "\n".join(lines) + "\n"


def draw_cer_curves(runs: list[Run]):
  """The runs' validation CER against steps (left) and minutes of training (right): a Figure."""
  fig = Figure(figsize=(11, 4.5), layout="constrained")
  by_step, by_time = fig.subplots(1, 2, sharey=True)
  highest = 0.0
  for run in runs:
    records = run.events.scalars.get("eval/cer", []) if run.events else []
    if not records:
      continue
    steps, _, cers = (np.asarray(x, np.float64) for x in zip(*records))
    (line,) = curves.draw_series(by_step, steps, cers, run.name)
    curves.draw_series(
      by_time, run.events.minutes_at(steps), cers, run.name, color=line.get_color()
    )
    highest = max(highest, float(cers.max()))
  by_step.set_xlabel("step")
  by_time.set_xlabel("minutes of training")
  by_step.set_ylabel("validation CER")
  for ax in (by_step, by_time):
    ax.grid(True, alpha=0.3)
    curves.percent_axis(ax, highest)
  if highest > 0:
    by_step.legend(loc="best", fontsize="small")
  else:
    by_step.text(
      0.5, 0.5, "no evaluation yet", ha="center", va="center", transform=by_step.transAxes
    )
  return fig


def _listed(values: list[str] | None) -> list[str] | None:
  """A list flag's names, empty ones left out (`--fields=` is none); None if not given."""
  return None if values is None else [name for name in values if name]


def main(argv):
  paths = argv[1:]
  if not paths:
    cli.fail("give one or more workdirs, or folders of them: python -m fphtr_jax.report DIR...")
  try:
    workdirs = find_runs(paths)
    for flag in ("curves", "markdown"):
      target = FLAGS[flag].value
      if target:
        cli.check_writable_dir(os.path.dirname(os.path.abspath(target)), flag)
    runs = [read_run(workdir) for workdir in workdirs]
    fields, tests = _listed(FLAGS.fields), _listed(FLAGS.tests)
    check_fields(runs, fields or [])
    check_tests(runs, tests or [])
  except cli.CommandLineError as error:
    cli.fail(str(error))
  except inference.ConfigFileError as error:
    cli.fail(str(error), status=1)
  names = [run.name for run in runs]
  if len(set(names)) < len(names):  # the same folder name in several places: the paths
    for run in runs:
      run.name = run.workdir
  text = table(runs, fields, tests)
  sys.stdout.write(text)
  if FLAGS.markdown:
    with open(FLAGS.markdown, "w", encoding="utf-8") as f:
      f.write(text)
  if FLAGS.curves:
    curves.save_figure(draw_cer_curves(runs), FLAGS.curves)
    print(f"\nWrote {FLAGS.curves}.")


if __name__ == "__main__":
  app.run(main)
