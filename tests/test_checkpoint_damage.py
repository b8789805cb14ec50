"""Damaged checkpoints, broken config files and full disks, on real Orbax checkpoints.

A damaged newest checkpoint (a truncated data file, a deleted manifest or
state folder, an empty vocabulary) is skipped with one warning, and the
newest intact one is restored, for resuming as for evaluate and predict; a
damaged step asked for by number is an error. The fast tests share one
workdir of two checkpoints written by the trainer's Checkpointer; the slow
ones train configs/tiny.py in the test's process, or run the predict CLI.
"""

import logging
import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from fphtr_jax import checkpointing, config_validation, inference, sharding, train
from fphtr_jax import tokenizer as tokenizer_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = (2, 4)  # the checkpoints of every workdir here; 4 is the one damaged


def _config(cache_dir):
  config = tiny.get_config()
  config.data.cache_dir = cache_dir
  config.train.num_steps = STEPS[-1]
  config.checkpoint.every_steps = STEPS[0]
  config.eval.every_steps = 100_000  # evaluates once, at the last step
  return config


def _numpy(tree):
  return jax.tree.map(np.asarray, tree)


def _assert_trees_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def config(bank_cache_dir):
  return _config(bank_cache_dir)


@pytest.fixture(scope="module")
def abstract_state(config):
  """Shapes and shardings of the tiny train state, to restore into."""
  tokenizer = tokenizer_lib.Tokenizer(config.data.charset)
  mesh = sharding.create_mesh(config.mesh)
  state, shardings = train.create_train_state(
    config,
    train.create_model(config, tokenizer),
    mesh,
    jax.random.key(0, impl=config.train.rng_impl),
  )
  return state, checkpointing.abstract_like(state, shardings)


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory, config, abstract_state):
  """A workdir as training leaves it: config.json, vocab.json, checkpoints 2 and 4, best 4.

  Written by the trainer's Checkpointer; the states of steps 2 and 4 differ
  in every parameter. Returns (workdir, {step: state as numpy leaves}).
  """
  workdir = str(tmp_path_factory.mktemp("saved") / "run")
  os.makedirs(workdir)
  state, _ = abstract_state
  tokenizer = tokenizer_lib.Tokenizer(config.data.charset)
  checkpointer = checkpointing.Checkpointer(workdir, config.checkpoint)
  states = {}
  for step in STEPS:
    state = state.replace(
      step=jnp.asarray(step, state.step.dtype),
      params=jax.tree.map(lambda x, s=step: x + s, state.params),
    )
    checkpointer.save(step, state, tokenizer, config)
    states[step] = _numpy(state)
  checkpointer.save_if_best(STEPS[-1], state, tokenizer, {"step": STEPS[-1], "cer": 0.5})
  checkpointer.wait()
  checkpointer.close()
  with open(os.path.join(workdir, inference.CONFIG_FILENAME), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  tokenizer.save(workdir)
  return workdir, states


def _state_dir(workdir, step):
  return os.path.join(workdir, checkpointing.CHECKPOINT_DIR, str(step), "state")


def _truncate_a_data_file(workdir, step):
  files = [
    os.path.join(folder, name)
    for folder, _, names in os.walk(_state_dir(workdir, step))
    if os.path.basename(folder) == "d"
    for name in names
  ]
  largest = max(files, key=os.path.getsize)
  os.truncate(largest, os.path.getsize(largest) // 3)


def _delete_the_manifest(workdir, step):
  os.remove(os.path.join(_state_dir(workdir, step), "manifest.ocdbt"))


def _delete_the_state(workdir, step):
  shutil.rmtree(_state_dir(workdir, step))


def _empty_the_vocabulary(workdir, step):
  vocab = os.path.join(workdir, checkpointing.CHECKPOINT_DIR, str(step), "vocab")
  for name in os.listdir(vocab):
    if name != "commit_success.txt":
      open(os.path.join(vocab, name), "w").close()


DAMAGES = {
  "truncated-data-file": (_truncate_a_data_file, r"is truncated: \d+ bytes, \d+ expected"),
  "no-manifest": (_delete_the_manifest, r"manifest\.ocdbt is missing"),
  "no-state": (_delete_the_state, r"4/state is missing"),
  "empty-vocabulary": (_empty_the_vocabulary, r"4/vocab cannot be read: JSONDecodeError"),
}


def _damaged_copy(saved, tmp_path, damage, steps=(STEPS[-1],)):
  workdir = str(tmp_path / "run")
  shutil.copytree(saved, workdir)
  for step in steps:
    DAMAGES[damage][0](workdir, step)
  return workdir


def _damage_warnings(caplog):
  return [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]


# --- Restoring -------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", DAMAGES)
def test_restore_falls_back_past_a_damaged_newest_checkpoint(
  saved_run, tmp_path, config, abstract_state, damage, caplog
):
  saved, states = saved_run
  workdir = _damaged_copy(saved, tmp_path, damage)
  checkpointer = checkpointing.Checkpointer(workdir, config.checkpoint)
  with caplog.at_level(logging.WARNING, logger="absl"):
    # What training reads, in its order: the vocabulary and config to check
    # the workdir, then the state; all from step 2.
    assert checkpointer.restore_vocab() == tokenizer_lib.Tokenizer(config.data.charset)
    assert checkpointer.restore_config()["model"]["d_model"] == config.model.d_model
    state, tokenizer = checkpointer.restore(abstract_state[1])
  checkpointer.close()
  assert int(state.step) == checkpointer.restored_step == STEPS[0]
  _assert_trees_equal(_numpy(state), states[STEPS[0]])
  assert tokenizer == tokenizer_lib.Tokenizer(config.data.charset)
  # One line, naming the step and why; the damaged checkpoint is left in place.
  (warning,) = _damage_warnings(caplog)
  assert re.search(
    rf"Checkpoint 4 in \S+checkpoints is damaged \(.*{DAMAGES[damage][1]}.*\); "
    r"falling back to step 2\.",
    warning,
  ), warning
  assert os.path.isdir(os.path.join(workdir, checkpointing.CHECKPOINT_DIR, "4"))


@pytest.mark.parametrize("damage", DAMAGES)
def test_restore_run_falls_back_to_the_previous_step(saved_run, tmp_path, damage, caplog):
  saved, states = saved_run
  workdir = _damaged_copy(saved, tmp_path, damage)
  with caplog.at_level(logging.WARNING, logger="absl"):
    run = inference.restore_run(workdir, inference.load_config(workdir), "latest")
  assert (run.step, run.which) == (STEPS[0], "latest")
  _assert_trees_equal(_numpy(run.state.params), states[STEPS[0]].params)
  _assert_trees_equal(_numpy(run.state.batch_stats), states[STEPS[0]].batch_stats)
  assert len(_damage_warnings(caplog)) == 1
  # The best checkpoint is another folder: still there.
  best = inference.restore_run(workdir, inference.load_config(workdir), "best")
  assert best.step == STEPS[-1]
  _assert_trees_equal(_numpy(best.state.params), states[STEPS[-1]].params)


def test_a_damaged_step_asked_for_is_an_error(saved_run, tmp_path, config, abstract_state):
  saved, _ = saved_run
  workdir = _damaged_copy(saved, tmp_path, "truncated-data-file")
  damaged = r"Checkpoint 4 in \S+checkpoints is damaged \(OSError: \S+ is truncated"
  with pytest.raises(checkpointing.DamagedCheckpointError, match=damaged + r".*--checkpoint="):
    inference.restore_run(workdir, inference.load_config(workdir), "4")
  checkpointer = checkpointing.Checkpointer(workdir, config.checkpoint)
  with pytest.raises(checkpointing.DamagedCheckpointError, match=damaged):
    checkpointer.restore(abstract_state[1], 4)
  checkpointer.close()
  # The step before is fine.
  assert inference.restore_run(workdir, inference.load_config(workdir), "2").step == 2


def test_without_an_intact_checkpoint_the_error_names_the_steps_tried(
  saved_run, tmp_path, config, abstract_state
):
  saved, _ = saved_run
  workdir = _damaged_copy(saved, tmp_path, "no-manifest", steps=STEPS)
  message = r"No intact checkpoint in \S+checkpoints: steps \[4, 2\] are all damaged \(step 2: "
  with pytest.raises(checkpointing.DamagedCheckpointError, match=message):
    inference.restore_run(workdir, inference.load_config(workdir), "latest")
  checkpointer = checkpointing.Checkpointer(workdir, config.checkpoint)
  with pytest.raises(checkpointing.DamagedCheckpointError, match=message):
    checkpointer.restore_vocab()
  with pytest.raises(checkpointing.DamagedCheckpointError, match=message):
    checkpointer.restore(abstract_state[1])
  checkpointer.close()
  assert sorted(os.listdir(os.path.join(workdir, checkpointing.CHECKPOINT_DIR))) == ["2", "4"]


@pytest.mark.parametrize("checkpoint", ["latest", "best", "2"])
def test_a_shape_changing_override_is_refused_before_restoring(saved_run, checkpoint):
  workdir, _ = saved_run
  config = inference.load_config(workdir)
  config.model.d_model = 48
  with pytest.raises(ValueError, match=r"another model: model\.d_model=48 \(checkpoint: 32\)"):
    inference.restore_run(workdir, config, checkpoint)


def test_a_longer_max_len_reads_the_same_parameters_but_cannot_resume(saved_run):
  # max_len sizes only the decoding cache: a model can be scored on longer texts.
  workdir, states = saved_run
  config = inference.load_config(workdir)
  config.data.max_len *= 4
  run = inference.restore_run(workdir, config, "latest")
  assert run.step == STEPS[-1] and run.model.max_len == config.data.max_len
  _assert_trees_equal(_numpy(run.state.params), states[STEPS[-1]].params)
  # Resuming training keeps every field of the train state.
  saved = inference.read_config_file(os.path.join(workdir, inference.CONFIG_FILENAME))
  with pytest.raises(ValueError, match=r"another model: data\.max_len=\d+ \(checkpoint: \d+\)"):
    config_validation.check_against_checkpoint(config, saved, workdir)


# --- Broken config files ---------------------------------------------------------------------


@pytest.mark.parametrize(
  "content, message",
  [
    ('{"model": {"d_model": 32}, "data": ', r"is not valid JSON \(Expecting value at line 1"),
    ("", r"is not valid JSON"),
    ("[1, 2]", r"holds a JSON list, not a run's config"),
    ('{"model": {}, "train": 3}', r"is not a run's config: it has no data, train sections"),
  ],
)
def test_a_broken_config_json_is_one_sentence_naming_it(tmp_path, content, message):
  path = tmp_path / inference.CONFIG_FILENAME
  path.write_text(content)
  with pytest.raises(inference.ConfigFileError) as error:
    inference.load_config(str(tmp_path))
  text = str(error.value)
  assert re.match(re.escape(str(path)) + " " + message, text), text
  assert "\n" not in text
  assert text.endswith(": delete it to read the config saved in the newest checkpoint instead.")


def test_without_config_json_the_newest_intact_checkpoint_gives_the_config(saved_run, tmp_path):
  saved, _ = saved_run
  workdir = _damaged_copy(saved, tmp_path, "empty-vocabulary")
  os.remove(os.path.join(workdir, inference.CONFIG_FILENAME))
  config = inference.load_config(workdir)
  assert config.model.d_model == 32 and config.train.num_steps == STEPS[-1]


# --- A failed save -------------------------------------------------------------------------


def test_a_failed_save_names_every_complete_checkpoint(saved_run, tmp_path, config, abstract_state):
  saved, _ = saved_run
  workdir = str(tmp_path / "run")
  shutil.copytree(saved, workdir)
  checkpointer = checkpointing.Checkpointer(workdir, config.checkpoint)

  def full_disk(*args, **kwargs):
    raise OSError(27, "File too large")

  checkpointer.latest.save = full_disk
  tokenizer = tokenizer_lib.Tokenizer(config.data.charset)
  with pytest.raises(OSError) as error:
    checkpointer.save(6, abstract_state[0], tokenizer, config)
  checkpointer.close()
  assert re.fullmatch(
    r"Saving checkpoint 6 \(or finishing the one before\) failed: OSError: \[Errno 27\] File too "
    r"large\. The complete checkpoints in \S+/checkpoints \(steps \[2, 4\]\) are untouched, and "
    r"so is the best one in \S+/best \(steps \[4\]\); free space and run again to resume\.",
    str(error.value),
  ), str(error.value)
  # Orbax's traceback is not chained to it: the message is the end of the report.
  assert error.value.__cause__ is None and error.value.__context__ is None


# --- Resuming, for real (slow: trains in this process) ------------------------------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, config):
  """configs/tiny.py trained for 4 steps, checkpoints at 2 and 4: (workdir, final state)."""
  workdir = str(tmp_path_factory.mktemp("trained") / "run")
  return workdir, _numpy(train.train_and_evaluate(config, workdir))


@pytest.mark.slow
def test_resume_past_a_damaged_newest_equals_an_uninterrupted_run(
  trained_run, tmp_path, config, abstract_state, caplog
):
  straight, straight_state = trained_run
  workdir = _damaged_copy(straight, tmp_path, "truncated-data-file")
  with caplog.at_level(logging.INFO, logger="absl"):
    resumed = _numpy(train.train_and_evaluate(config, workdir))
  assert any(f"Resumed from step {STEPS[0]}" in r.getMessage() for r in caplog.records)
  assert len(_damage_warnings(caplog)) == 1
  # Steps 3 and 4 again, bit for bit: parameters, optimizer and BatchNorm state.
  assert int(resumed.step) == STEPS[-1]
  _assert_trees_equal(resumed, straight_state)
  # Step 4 was saved afresh; the damaged one was set aside, not deleted.
  checkpoints = os.path.join(workdir, checkpointing.CHECKPOINT_DIR)
  assert sorted(os.listdir(checkpoints)) == ["2", "4", "4" + checkpointing.DAMAGED_SUFFIX]
  checkpointer = checkpointing.Checkpointer(workdir, config.checkpoint)
  state, _ = checkpointer.restore(abstract_state[1])
  checkpointer.close()
  _assert_trees_equal(_numpy(state), straight_state)


# --- The command line (slow: a subprocess) -------------------------------------------------------


def _predict(workdir, image, *flags):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  return subprocess.run(
    [sys.executable, "-m", "fphtr_jax.predict", f"--workdir={workdir}", *flags, image],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )


@pytest.mark.slow
def test_predict_on_a_damaged_checkpoint_says_so_in_a_few_lines(saved_run, tmp_path):
  from PIL import Image

  saved, _ = saved_run
  image = str(tmp_path / "page.png")
  Image.new("L", (60, 20), 200).save(image)
  # The only checkpoint is damaged; Orbax alone printed hundreds of lines.
  for damage in ("truncated-data-file", "no-manifest"):
    workdir = _damaged_copy(saved, tmp_path / damage, damage)
    shutil.rmtree(os.path.join(workdir, checkpointing.CHECKPOINT_DIR, "2"))
    result = _predict(workdir, image)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) < 30, result.stderr[-5000:]
    assert re.search(
      r"No intact checkpoint in \S+checkpoints: its only checkpoint, step 4, is damaged \(.*"
      + DAMAGES[damage][1],
      lines[-1],
    ), result.stderr[-5000:]
    assert "Traceback" not in result.stderr and "Event loop is closed" not in result.stderr
  # An override that changes the model's shape: the same clean refusal as training's.
  result = _predict(saved, image, "--config.model.d_model=48")
  lines = result.stderr.strip().splitlines()
  assert result.returncode != 0 and len(lines) < 30, result.stderr[-5000:]
  assert re.search(r"model\.d_model=48 \(checkpoint: 32\)", lines[-1]), result.stderr[-5000:]
  assert "Traceback" not in result.stderr
