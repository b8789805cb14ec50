"""Mistakes on the command lines: one line on stderr that names them, a non-zero exit status.

The tools run in subprocesses exactly as a user types them. Checks that fail
before a checkpoint is read use a workdir holding only a config.json (and an
empty checkpoints/ folder); the rest use the trained tiny run of conftest.py.
"""

import json
import os
import subprocess
import sys

from PIL import Image
import pytest

from fphtr_jax import cli
from input_pipeline.wordbank import text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_STDERR_LINES = 15


def _run(module: str, *args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  return subprocess.run(
    [sys.executable, "-m", module, *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )


def _assert_refused(result: subprocess.CompletedProcess, *names: str, status: int = 2):
  """Exit status `status`, a short stderr without a traceback, naming every one of `names`."""
  lines = result.stderr.strip().splitlines()
  assert result.returncode == status, result.stderr[-3000:]
  assert len(lines) < MAX_STDERR_LINES and "Traceback" not in result.stderr, result.stderr
  for name in names:
    assert name in result.stderr, (name, result.stderr)


def _listing(folder) -> list[str]:
  return sorted(
    os.path.relpath(os.path.join(parent, name), folder)
    for parent, dirs, files in os.walk(folder)
    for name in dirs + files
  )


@pytest.fixture
def run_workdir(tmp_path):
  """A workdir as training leaves it, as far as the checks before a restore can tell."""
  from configs import tiny

  workdir = tmp_path / "run"
  (workdir / "checkpoints").mkdir(parents=True)
  (workdir / "config.json").write_text(json.dumps(tiny.get_config().to_dict()))
  return workdir


@pytest.fixture
def page(tmp_path):
  path = tmp_path / "page.png"
  Image.new("L", (128, 32), 255).save(path)
  return str(path)


# --- Training ----------------------------------------------------------------------------------


def _bad_config_files(tmp_path):
  (tmp_path / "broken.py").write_text(
    "from configs import tiny\n\nraise RuntimeError('broken on purpose')\n"
  )


@pytest.mark.parametrize(
  "args, names",
  [
    (
      ["--config.train.num_stepz=3"],
      ["--config.train.num_stepz: no such field; did you mean train.num_steps?"],
    ),
    (["--config.train.num_steps=abc"], ["--config.train.num_steps=abc", "an integer"]),
    (["--config=configs/no_such_config.py"], ["configs/no_such_config.py", "no such file"]),
    (["--config={tmp}/broken.py"], ["broken.py", "RuntimeError: broken on purpose", "line 3"]),
    (["--config.data.text_file={tmp}"], ["data.text_file", "is a folder"]),
  ],
  ids=["unknown_field", "override_type", "missing_file", "file_raises", "text_file_folder"],
)
@pytest.mark.slow
def test_training_command_line_mistakes(tmp_path, args, names):
  _bad_config_files(tmp_path)
  args = [arg.format(tmp=tmp_path) for arg in args]
  defaults = {"--config": "configs/tiny.py", "--workdir": str(tmp_path / "workdir")}
  for arg in args:
    defaults.pop(arg.split("=")[0], None)
  result = _run("fphtr_jax.main", *[f"{k}={v}" for k, v in defaults.items()], *args)
  _assert_refused(result, *[name.format(tmp=tmp_path) for name in names])
  assert not (tmp_path / "workdir").exists()


# --- predict and evaluate, before any checkpoint is read ---------------------------------------


@pytest.mark.slow
def test_predict_refuses_a_scale_of_zero(run_workdir, page):
  result = _run("fphtr_jax.predict", f"--workdir={run_workdir}", "--scale=0", page)
  _assert_refused(result, "--scale=0", "above 0")
  assert result.stdout == ""


@pytest.mark.slow
def test_predict_names_a_missing_workdir_and_makes_none(tmp_path, page):
  workdir = tmp_path / "workdir"
  result = _run("fphtr_jax.predict", f"--workdir={workdir}", page)
  _assert_refused(result, f"--workdir={workdir}: no such folder")
  assert not workdir.exists()


@pytest.mark.slow
def test_predict_names_an_unknown_decode_field(run_workdir, page):
  result = _run(
    "fphtr_jax.predict", f"--workdir={run_workdir}", "--config.decode.beam_sise=2", page
  )
  _assert_refused(result, "--config.decode.beam_sise", "did you mean decode.beam_size?")


@pytest.mark.slow
def test_predict_checks_the_attention_folder_first(run_workdir, page, tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  result = _run(
    "fphtr_jax.predict", f"--workdir={run_workdir}", f"--attention_dir={blocker}/pictures", page
  )
  _assert_refused(result, "--attention_dir=", "is a file")


@pytest.mark.slow
def test_evaluate_checks_the_output_folder_before_evaluating(run_workdir, tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  before = _listing(run_workdir)
  result = _run("fphtr_jax.evaluate", f"--workdir={run_workdir}", f"--output_dir={blocker}/out")
  _assert_refused(result, f"--output_dir={blocker}/out", f"{blocker} is a file")
  assert _listing(run_workdir) == before


@pytest.mark.slow
def test_evaluate_checks_its_default_output_folder_without_making_it(run_workdir):
  (run_workdir / "evaluations").write_text("")  # where the default output folder would go
  before = _listing(run_workdir)
  result = _run("fphtr_jax.evaluate", f"--workdir={run_workdir}")
  _assert_refused(result, "evaluations is a file", "--output_dir")
  assert _listing(run_workdir) == before


# --- With a trained run ------------------------------------------------------------------------


@pytest.mark.slow
def test_predict_is_quiet_and_reads_only(trained_tiny_workdir, page):
  before = _listing(trained_tiny_workdir)
  result = _run("fphtr_jax.predict", f"--workdir={trained_tiny_workdir}", page)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.startswith(f"==> {page}")
  assert len(result.stderr.splitlines()) < MAX_STDERR_LINES, result.stderr
  assert "orbax" not in result.stderr.lower() and "checkpoint_manager" not in result.stderr
  missing = _run("fphtr_jax.predict", f"--workdir={trained_tiny_workdir}", "--checkpoint=7", page)
  _assert_refused(missing, "step 7", status=1)
  assert _listing(trained_tiny_workdir) == before


@pytest.mark.slow
def test_evaluate_is_quiet_and_writes_only_its_output(trained_tiny_workdir, tmp_path):
  before = _listing(trained_tiny_workdir)
  output_dir = tmp_path / "eval"
  result = _run(
    "fphtr_jax.evaluate",
    f"--workdir={trained_tiny_workdir}",
    f"--output_dir={output_dir}",
    "--config.eval.num_examples=2",
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.loads(result.stdout.splitlines()[-1])["num_examples"] == 2
  assert len(result.stderr.splitlines()) < MAX_STDERR_LINES, result.stderr
  assert "checkpoint_manager" not in result.stderr
  assert (output_dir / "summary.json").exists()
  assert _listing(trained_tiny_workdir) == before


# --- The helpers, in-process -------------------------------------------------------------------


def test_override_suggestions():
  from configs import tiny

  config = tiny.get_config()
  for path, expected in [
    ("train.num_stepz", "did you mean train.num_steps?"),
    ("trian.num_steps", "did you mean train.num_steps?"),
    ("train.beam_size", "did you mean decode.beam_size?"),  # the same name in another section
    ("train.xyzzy", "config.train has attention_loss_weight,"),
    ("train.num_steps.x", "config.train.num_steps is int"),
  ]:
    with pytest.raises(cli.CommandLineError, match=expected.replace("?", r"\?")):
      cli.check_overrides(config, [path])
  cli.check_overrides(config, ["train.num_steps", "decode.beam_size"])


def test_config_file_errors_name_the_file(tmp_path, monkeypatch):
  monkeypatch.chdir(ROOT)
  (tmp_path / "returns_none.py").write_text("def get_config():\n  pass\n")
  (tmp_path / "raises.py").write_text("def get_config():\n  return {}['model']\n")
  (tmp_path / "no_get_config.py").write_text("LEARNING_RATE = 1e-3\n")
  cases = [
    ("", "--config is empty"),
    (str(tmp_path), "is a folder"),
    ("configs/tiyn.py", "did you mean configs/tiny.py?"),
    (f"{tmp_path}/no_get_config.py", "no_get_config.py has no get_config\\(\\) function"),
    (f"{tmp_path}/returns_none.py", "returned NoneType"),
    (f"{tmp_path}/raises.py", "raised KeyError: 'model' .*raises.py, line 2"),
    ("configs/tiny.py:extra", "unknown variant 'extra'"),
  ]
  for argument, expected in cases:
    with pytest.raises(cli.CommandLineError, match=expected):
      cli.load_config_file(argument)
  assert cli.load_config_file("configs/tiny.py").model.d_model > 0


def test_workdir_and_checkpoint_checks(run_workdir, tmp_path):
  (tmp_path / "a_file").write_text("")
  (tmp_path / "empty").mkdir()
  for workdir, expected in [
    (tmp_path / "a_file", "is a file, not a folder"),
    (tmp_path / "empty", "not the workdir of a training run"),
    (tmp_path / "missing", "no such folder"),
  ]:
    with pytest.raises(cli.CommandLineError, match=expected):
      cli.check_run_workdir(str(workdir))
  cli.check_run_workdir(str(run_workdir))
  cli.check_checkpoint(str(run_workdir), "latest")
  with pytest.raises(cli.CommandLineError, match="--checkpoint=best: .* no best/ folder"):
    cli.check_checkpoint(str(run_workdir), "best")
  with pytest.raises(cli.CommandLineError, match="--checkpoint='newest' is invalid"):
    cli.check_checkpoint(str(run_workdir), "newest")
  assert not (tmp_path / "missing").exists() and not (run_workdir / "best").exists()


def test_a_damaged_saved_config_is_one_line(tmp_path):
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(cli.CommandLineError, match="config.json") as raised:
    cli.load_run_config(str(tmp_path))
  assert raised.value.status == 1 and "\n" not in str(raised.value)


def test_output_folder_checks(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  with pytest.raises(cli.CommandLineError, match="is a file"):
    cli.make_writable_dir(str(blocker), "output_dir")
  with pytest.raises(cli.CommandLineError, match=f"{blocker} is a file"):
    cli.make_writable_dir(str(blocker / "sub"), "output_dir")
  with pytest.raises(cli.CommandLineError, match=f"{blocker} is a file"):
    cli.check_writable_dir(str(blocker / "sub" / "deeper"), "output_dir")
  cli.check_writable_dir(str(tmp_path / "new" / "deeper"), "output_dir")
  assert not (tmp_path / "new").exists()  # checked, not made
  cli.make_writable_dir(str(tmp_path / "made"), "output_dir")
  assert os.listdir(tmp_path / "made") == []  # the test file is gone
  if os.geteuid() != 0:  # permissions do not stop root
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    with pytest.raises(cli.CommandLineError, match="cannot be written"):
      cli.make_writable_dir(str(locked / "out"), "output_dir")
    with pytest.raises(cli.CommandLineError, match="not writable"):
      cli.check_writable_dir(str(locked / "out"), "output_dir")


def test_text_file_checks(tmp_path):
  with pytest.raises(ValueError, match="is a folder"):
    text.read_text_words(str(tmp_path), "abc")
  with pytest.raises(ValueError, match="does not exist"):
    text.read_text_words(str(tmp_path / "missing.txt"), "abc")
  (tmp_path / "words.txt").write_text("ab ca\n")
  assert text.read_text_words(str(tmp_path / "words.txt"), "abc") == ["ab", "ca"]
