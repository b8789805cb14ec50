r"""Trains the points of a config's sweep, each in its own workdir.

  python -m fphtr_jax.sweep --config=configs/tiny.py:sweep --workdir_root=DIR \
      [--config.section.field=value ...]
  python -m fphtr_jax.sweep --config=configs/cpu_fullpage.py:batch_sizes \
      --workdir_root=DIR --slurm=sweep.sbatch

A config file declares its sweeps with `get_sweep(arg)` (configs/variants.py):
a list of points, each a dict of config-argument items. Point `{"lr": 0.001,
"batch": 8}` trains `--config=FILE:lr=0.001,batch=8` in `DIR/lr=0.001,batch=8`,
a `--config.*` override of the command line applying to every point. Every
point's config is built and checked before the first one starts.

The points run one after another on this machine, each as the training
command does (`python -m fphtr_jax.main`, in a subprocess). A point whose
workdir holds a checkpoint of its last step is skipped, and one that was
stopped resumes from its checkpoint, so running the same command again
finishes the sweep. Ctrl-C (or SIGTERM) reaches the running point, which
saves and stops; the sweep stops with it.

`--slurm=FILE` writes a SLURM array script instead, one array task per point,
each running launch/slurm.sbatch with that point's config and workdir.

DIR also gets a TensorBoard experiment that declares the fields the points
differ in, so `tensorboard --logdir DIR` shows them first in its HParams tab;
`python -m fphtr_jax.report DIR` tabulates the finished runs.
"""

import dataclasses
import glob
import os
import re
import runpy
import shlex
import signal
import subprocess
import sys

from absl import app, flags, logging
import jax
from ml_collections import config_flags

from fphtr_jax import checkpointing, cli, hparams

flags.DEFINE_string(
  "config", None, "FILE:ARG: a config file and the sweep its get_sweep(ARG) returns."
)
flags.DEFINE_string("workdir_root", None, "Folder of the points' workdirs (made if missing).")
flags.DEFINE_string(
  "slurm", None, "Write a SLURM array script to this file instead of training here."
)
FLAGS = flags.FLAGS

# Characters a workdir name keeps; others become "_".
_SAFE = re.compile(r"[^A-Za-z0-9._,=+-]")
EMPTY_POINT_NAME = "base"


@dataclasses.dataclass
class Point:
  """One run of a sweep: its config argument, workdir and resolved config."""

  arg: str  # e.g. "lr=0.001,batch=8"
  workdir: str
  config: object  # ml_collections.ConfigDict

  @property
  def name(self) -> str:
    return os.path.basename(self.workdir)


def workdir_name(arg: str) -> str:
  """A point's workdir name: its config argument, filesystem-safe ("base" when empty)."""
  return _SAFE.sub("_", arg) or EMPTY_POINT_NAME


def load_sweep(argument: str) -> tuple[str, list[str], object]:
  """(config file, the points' config arguments, the file's Variants or None) of FILE:ARG.

  Raises:
    cli.CommandLineError: naming the file, when it is missing, fails to load,
      has no get_sweep(), or get_sweep(ARG) refuses ARG.
  """
  from configs import variants  # pylint: disable=g-import-not-at-top

  cli.check_config_path(argument)
  path, _, arg = argument.partition(":")
  try:
    module = runpy.run_path(path)
  except Exception as error:  # whatever the file raises
    raise cli.CommandLineError(
      f"--config={argument}: loading {path} raised {type(error).__name__}: {error}."
    ) from None
  get_sweep = module.get("get_sweep")
  if not callable(get_sweep):
    raise cli.CommandLineError(
      f"--config={argument}: {path} has no get_sweep() function; a config file declares "
      "its sweeps with get_sweep(arg), like configs/tiny.py."
    )
  try:
    points = get_sweep(arg or None)
  except variants.ConfigArgumentError as error:
    raise cli.CommandLineError(f"--config={argument}: {error}") from None
  declared = module.get("VARIANTS")
  if declared is not None:
    args = [declared.format_point(point) for point in points]
  else:  # a sweep of plain key=value points
    args = [",".join(f"{k}={variants.format_value(v)}" for k, v in p.items()) for p in points]
  if not args:
    raise cli.CommandLineError(f"--config={argument}: get_sweep() returned no points.")
  return path, args, declared


def point_config(path: str, arg: str, overrides: list[str]):
  """The config of `--config=path:arg` with the `--config.*` overrides, as training builds it."""
  argument = f"{path}:{arg}" if arg else path
  argv = ["sweep", f"--config={argument}", *overrides]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file(
    "config", None, "", flag_values=values, lock_config=True, sys_argv=argv
  )
  try:
    values(argv)
  except Exception as error:  # the file, its argument or an override
    config = cli.load_config_file(argument)  # raises, naming what is wrong in the file
    raise cli.CommandLineError(
      f"sweep point {arg!r}: {cli.explain_parse_error(error, argv, config)}"
    ) from None
  return values.config


def make_points(argument: str, workdir_root: str, overrides: list[str]) -> tuple[str, list[Point]]:
  """The config file and the sweep's points, each config checked (cli.check_config)."""
  path, args, _ = load_sweep(argument)
  points = []
  for arg in args:
    config = point_config(path, arg, overrides)
    try:
      cli.check_config(config)
    except cli.CommandLineError as error:
      raise cli.CommandLineError(f"sweep point {arg!r}: {error}") from None
    points.append(Point(arg, os.path.join(workdir_root, workdir_name(arg)), config))
  names = [p.name for p in points]
  twice = sorted({n for n in names if names.count(n) > 1})
  if twice:
    raise cli.CommandLineError(
      f"--config={argument}: several points share the workdir name {twice[0]}; make the "
      "points differ."
    )
  return path, points


def finished_step(workdir: str) -> int | None:
  """The newest checkpointed step in `workdir`, or None (a digit folder is a finished save)."""
  folder = os.path.join(workdir, checkpointing.CHECKPOINT_DIR)
  if not os.path.isdir(folder):
    return None
  steps = [int(name) for name in os.listdir(folder) if name.isdigit()]
  return max(steps, default=None)


def is_finished(point: Point) -> bool:
  step = finished_step(point.workdir)
  return step is not None and step >= point.config.train.num_steps


def train_command(path: str, point: Point, overrides: list[str]) -> list[str]:
  config = f"--config={path}:{point.arg}" if point.arg else f"--config={path}"
  return [sys.executable, "-m", "fphtr_jax.main", config, f"--workdir={point.workdir}", *overrides]


def declare_experiment(workdir_root: str, points: list[Point]):
  """The experiment of `workdir_root` for TensorBoard (hparams.write_experiment), replaced."""
  os.makedirs(workdir_root, exist_ok=True)
  for old in glob.glob(os.path.join(workdir_root, f"events.out.tfevents.*{hparams.EVENTS_SUFFIX}")):
    os.remove(old)
  hparams.write_experiment(workdir_root, [hparams.flat_hparams(p.config) for p in points])


def run_points(path: str, points: list[Point], overrides: list[str]) -> int:
  """Trains the unfinished points one after another; returns an exit status.

  Stops at the first point that fails or is stopped by a signal (forwarded to it).
  """
  received = []

  def forward(signum, _):
    received.append(signum)
    if running is not None and running.poll() is None:
      running.send_signal(signum)  # a second Ctrl-C stops the run at once, as in training

  running = None
  previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    for index, point in enumerate(points, 1):
      where = f"[{index}/{len(points)}] {point.name}"
      if is_finished(point):
        print(f"{where}: finished (step {finished_step(point.workdir)}), skipped.", flush=True)
        continue
      step = finished_step(point.workdir)
      state = f"resuming from step {step}" if step is not None else "training"
      print(f"{where}: {state} to step {point.config.train.num_steps} in {point.workdir}")
      print("  " + shlex.join(train_command(path, point, overrides)), flush=True)
      # Its own session: a Ctrl-C reaches it once, through `forward`.
      running = subprocess.Popen(train_command(path, point, overrides), start_new_session=True)
      status = running.wait()
      running = None
      if received:
        print(f"{where}: stopped by a signal; run the same command to resume.", flush=True)
        return 128 + received[0]
      if status != 0:
        print(f"{where}: training failed with exit status {status}.", flush=True)
        return 1
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
  print(f"All {len(points)} points are trained.", flush=True)
  return 0


def slurm_script(
  argument: str, path: str, points: list[Point], overrides: list[str], script: str
) -> str:
  """A SLURM array script: task i runs launch/slurm.sbatch with point i's config and workdir."""
  project = os.getcwd()
  cases = []
  for index, point in enumerate(points):
    config = f"{path}:{point.arg}" if point.arg else path
    command = shlex.join(["bash", "launch/slurm.sbatch", config, point.workdir, *overrides])
    cases.append(f"  {index}) exec {command} ;;")
  workdir_root = os.path.dirname(os.path.abspath(points[0].workdir))
  output = os.path.join(workdir_root, "slurm-%A_%a.out")
  return "\n".join(
    [
      "#!/usr/bin/env bash",
      f"# The sweep {argument}: one array task per point, each training its",
      "# workdir with launch/slurm.sbatch (resubmitting resumes the unfinished ones;",
      "# finished ones restore and stop). sbatch options win over the #SBATCH lines:",
      f"#   sbatch --gpus-per-node=8 {script}",
      "#SBATCH --job-name=fphtr-sweep",
      f"#SBATCH --array=0-{len(points) - 1}",
      "#SBATCH --nodes=1",
      "#SBATCH --ntasks-per-node=1",
      "#SBATCH --gpus-per-node=1",
      "#SBATCH --cpus-per-task=16",
      "#SBATCH --time=24:00:00",
      f"#SBATCH --output={output}",
      "#SBATCH --signal=TERM@120",
      "set -euo pipefail",
      f"cd {shlex.quote(project)}",
      'case "${SLURM_ARRAY_TASK_ID:?submit this script with sbatch}" in',
      *cases,
      '  *) echo "no sweep point $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;',
      "esac",
      "",
    ]
  )


def parse_flags(argv: list[str]) -> list[str]:
  """absl flags parser: the `--config.*` overrides are kept apart, for every point."""
  cli.quiet_libraries()
  overrides = [a for a in argv[1:] if re.match(r"^--?config\.", a)]
  rest = [a for a in argv if a not in overrides]
  try:
    rest = FLAGS(rest)
  except flags.Error as error:
    cli.fail(cli.explain_parse_error(error, rest, None))
  return [*rest, *overrides]


def main(argv):
  # The points' training processes take the accelerators; this one computes nothing.
  jax.config.update("jax_platforms", "cpu")
  overrides = [a for a in argv[1:] if a.startswith(("--config.", "-config."))]
  unexpected = [a for a in argv[1:] if a not in overrides]
  if unexpected:
    cli.fail(f"unexpected arguments {unexpected}: sweep takes only flags.")
  if not FLAGS.config:
    cli.fail("--config is required: FILE:SWEEP, e.g. --config=configs/tiny.py:sweep.")
  if not FLAGS.workdir_root:
    cli.fail("--workdir_root is required: the folder of the points' workdirs.")
  try:
    cli.check_writable_dir(FLAGS.workdir_root, "workdir_root")
    if FLAGS.slurm:
      cli.check_writable_dir(os.path.dirname(os.path.abspath(FLAGS.slurm)), "slurm")
    path, points = make_points(FLAGS.config, FLAGS.workdir_root, overrides)
  except cli.CommandLineError as error:
    cli.fail(str(error), error.status)
  declare_experiment(FLAGS.workdir_root, points)
  if FLAGS.slurm:
    with open(FLAGS.slurm, "w", encoding="utf-8") as f:
      f.write(slurm_script(FLAGS.config, path, points, overrides, FLAGS.slurm))
    os.chmod(FLAGS.slurm, 0o755)
    print(f"Wrote {FLAGS.slurm}: {len(points)} array tasks; submit it with sbatch {FLAGS.slurm}.")
    return
  logging.info("Sweep of %d points in %s.", len(points), FLAGS.workdir_root)
  sys.exit(run_points(path, points, overrides))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
