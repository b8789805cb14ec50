"""Real train steps, real Orbax checkpoints, real resume, on configs/tiny.py."""

import functools
import glob
import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from fphtr_jax import checkpointing, sharding, train
from fphtr_jax import tokenizer as tokenizer_lib
from input_pipeline import pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _setup(config):
  tokenizer = tokenizer_lib.Tokenizer(config.data.charset)
  mesh = sharding.create_mesh(config.mesh)
  model = train.create_model(config, tokenizer)
  state, shardings = train.create_train_state(
      config, model, mesh, jax.random.key(0, impl=config.train.rng_impl))
  return tokenizer, mesh, model, state, shardings


def _leaves_equal(a, b):
  return all(np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_loss_decreases_on_a_repeated_batch(tiny_config):
  tokenizer, mesh, model, state, shardings = _setup(tiny_config)
  train_ds, _ = pipeline.create_datasets(tiny_config)
  batch = next(train_ds.as_numpy_iterator())
  _, schedule = train.create_optimizer(tiny_config.train)
  step = jax.jit(functools.partial(train.train_step, label_smoothing=0.1, schedule=schedule),
                 donate_argnums=0)
  losses = []
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.logical_rules(tiny_config.mesh)):
    global_batch = sharding.put_batch(batch, mesh)
    for _ in range(25):
      state, metrics = step(state, global_batch, jax.random.key(1))
      losses.append(float(metrics.compute()["loss"]))
  assert np.isfinite(losses).all()
  assert losses[-1] < 0.7 * losses[0], losses
  assert int(state.step) == 25


def test_checkpoint_restores_bit_identically(tiny_config, tmp_path):
  tokenizer, mesh, model, state, shardings = _setup(tiny_config)
  # Take a step so the optimizer state is not all zeros.
  train_ds, _ = pipeline.create_datasets(tiny_config)
  _, schedule = train.create_optimizer(tiny_config.train)
  step = jax.jit(functools.partial(train.train_step, label_smoothing=0.0, schedule=schedule))
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.logical_rules(tiny_config.mesh)):
    state, _ = step(state, sharding.put_batch(next(train_ds.as_numpy_iterator()), mesh),
                    jax.random.key(1))

  checkpointer = checkpointing.Checkpointer(str(tmp_path), tiny_config.checkpoint)
  checkpointer.save(1, state, tokenizer, tiny_config)
  checkpointer.wait()
  assert os.path.isdir(tmp_path / "checkpoints" / "1")

  # A fresh process would start from a different random init; restore over it.
  _, _, _, other, other_shardings = _setup(tiny_config)
  assert not _leaves_equal(other.params, state.params)
  restored, restored_tokenizer = checkpointing.Checkpointer(
      str(tmp_path), tiny_config.checkpoint).restore(
          checkpointing.abstract_like(other, other_shardings))
  assert int(restored.step) == 1
  assert restored_tokenizer == tokenizer
  assert _leaves_equal(restored.params, state.params)
  assert _leaves_equal(restored.batch_stats, state.batch_stats)
  assert _leaves_equal(restored.opt_state, state.opt_state)
  checkpointer.close()


def test_train_and_evaluate_writes_and_resumes(tiny_config, tmp_path):
  tiny_config.train.num_steps = 4
  tiny_config.checkpoint.every_steps = 2
  tiny_config.eval.every_steps = 4
  resumed_dir = str(tmp_path / "resumed")
  train.train_and_evaluate(tiny_config, resumed_dir)

  assert sorted(os.listdir(os.path.join(resumed_dir, "checkpoints"))) == ["2", "4"]
  assert os.listdir(os.path.join(resumed_dir, "best")) == ["4"]
  assert os.path.isfile(os.path.join(resumed_dir, "config.json"))
  assert tokenizer_lib.Tokenizer.load(resumed_dir).charset == tiny_config.data.charset
  assert glob.glob(os.path.join(resumed_dir, "events.out.tfevents.*"))

  # Run again with more steps: it must continue at step 4, and end exactly
  # where an uninterrupted run of 6 steps ends.
  tiny_config.train.num_steps = 6
  resumed = train.train_and_evaluate(tiny_config, resumed_dir)
  assert int(resumed.step) == 6
  assert sorted(os.listdir(os.path.join(resumed_dir, "checkpoints"))) == ["4", "6"]

  straight = train.train_and_evaluate(tiny_config, str(tmp_path / "straight"))
  assert _leaves_equal(resumed.params, straight.params)


def test_workdir_with_another_vocabulary_is_refused(tiny_config, tmp_path):
  tiny_config.train.num_steps = 2
  tiny_config.checkpoint.every_steps = 2
  tiny_config.eval.every_steps = 2
  train.train_and_evaluate(tiny_config, str(tmp_path))
  tiny_config.data.charset = tiny_config.data.charset.replace("z", "")
  with pytest.raises(ValueError, match="data.charset"):
    train.train_and_evaluate(tiny_config, str(tmp_path))


@pytest.mark.parametrize("field, value", [
    ("train.batch_size", 0),
    ("train.optimizer", "sgd"),
    ("eval.every_steps", -1),
    ("data.image_height", 16),
])
def test_bad_config_value_names_its_field(tiny_config, field, value):
  section, name = field.split(".")
  tiny_config[section][name] = value
  with pytest.raises(ValueError, match=field.replace(".", r"\.")):
    train.validate_config(tiny_config)


def test_command_line_error_names_the_field(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "fphtr_jax.main", "--config=configs/tiny.py",
       f"--workdir={tmp_path}", "--config.model.encoder=resnet99"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert "model.encoder='resnet99'" in result.stderr

