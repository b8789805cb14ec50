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

from fphtr_jax import checkpointing, config_validation, losses, optimizer, sharding, train
from fphtr_jax import tokenizer as tokenizer_lib
from fphtr_jax.models import resnet
from input_pipeline import datasets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _setup(config):
  tokenizer = tokenizer_lib.Tokenizer(config.data.charset)
  mesh = sharding.create_mesh(config.mesh)
  model = train.create_model(config, tokenizer)
  state, shardings = train.create_train_state(
    config, model, mesh, jax.random.key(0, impl=config.train.rng_impl)
  )
  return tokenizer, mesh, model, state, shardings


def _leaves_equal(a, b):
  return all(
    np.array_equal(np.asarray(x), np.asarray(y))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  )


@pytest.mark.slow
def test_loss_decreases_on_a_repeated_batch(tiny_config):
  tokenizer, mesh, model, state, shardings = _setup(tiny_config)
  train_ds, _ = datasets.create_datasets(tiny_config)
  batch = next(train_ds.as_numpy_iterator())
  _, schedule = optimizer.create_optimizer(tiny_config.train)
  step = jax.jit(
    functools.partial(train.train_step, label_smoothing=0.1, schedule=schedule), donate_argnums=0
  )
  losses = []
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.logical_rules(tiny_config.mesh)):
    global_batch = sharding.put_batch(batch, mesh)
    for _ in range(25):
      state, metrics = step(state, global_batch, jax.random.key(1, impl=tiny_config.train.rng_impl))
      losses.append(float(metrics.compute()["loss"]))
  assert np.isfinite(losses).all()
  assert losses[-1] < 0.7 * losses[0], losses
  assert int(state.step) == 25


def test_checkpoint_restores_bit_identically(tiny_config, tmp_path):
  tokenizer, mesh, model, state, shardings = _setup(tiny_config)
  # Take a step so the optimizer state is not all zeros.
  train_ds, _ = datasets.create_datasets(tiny_config)
  _, schedule = optimizer.create_optimizer(tiny_config.train)
  step = jax.jit(functools.partial(train.train_step, label_smoothing=0.0, schedule=schedule))
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.logical_rules(tiny_config.mesh)):
    state, _ = step(
      state,
      sharding.put_batch(next(train_ds.as_numpy_iterator()), mesh),
      jax.random.key(1, impl=tiny_config.train.rng_impl),
    )

  checkpointer = checkpointing.Checkpointer(str(tmp_path), tiny_config.checkpoint)
  checkpointer.save(1, state, tokenizer, tiny_config)
  checkpointer.wait()
  assert os.path.isdir(tmp_path / "checkpoints" / "1")

  # A fresh process would start from a different random init; restore over it.
  _, _, _, other, other_shardings = _setup(tiny_config)
  assert not _leaves_equal(other.params, state.params)
  restored, restored_tokenizer = checkpointing.Checkpointer(
    str(tmp_path), tiny_config.checkpoint
  ).restore(checkpointing.abstract_like(other, other_shardings))
  assert int(restored.step) == 1
  assert restored_tokenizer == tokenizer
  assert _leaves_equal(restored.params, state.params)
  assert _leaves_equal(restored.batch_stats, state.batch_stats)
  assert _leaves_equal(restored.opt_state, state.opt_state)
  checkpointer.close()


@pytest.mark.slow
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


@pytest.mark.slow
def test_workdir_with_another_vocabulary_is_refused(tiny_config, tmp_path):
  tiny_config.train.num_steps = 2
  tiny_config.checkpoint.every_steps = 2
  tiny_config.eval.every_steps = 2
  train.train_and_evaluate(tiny_config, str(tmp_path))
  tiny_config.data.charset = tiny_config.data.charset.replace("z", "")
  with pytest.raises(ValueError, match="data.charset"):
    train.train_and_evaluate(tiny_config, str(tmp_path))


@pytest.mark.parametrize(
  "field, value",
  [
    ("train.batch_size", 0),
    ("train.optimizer", "sgd"),
    ("eval.every_steps", -1),
    ("data.image_height", 16),
    ("data.single_line_pages", 1.5),
    ("data.single_word_pages", 1.5),
    ("data.scan_look", -0.1),
    ("data.scale_range", (1.1, 0.9)),
  ],
)
def test_bad_config_value_names_its_field(tiny_config, field, value):
  section, name = field.split(".")
  tiny_config[section][name] = value
  with pytest.raises(ValueError, match=field.replace(".", r"\.")):
    config_validation.validate_config(tiny_config)


@pytest.mark.slow
def test_command_line_error_names_the_field(tmp_path):
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "fphtr_jax.main",
      "--config=configs/tiny.py",
      f"--workdir={tmp_path}",
      "--config.model.encoder=resnet99",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode != 0
  assert "model.encoder='resnet99'" in result.stderr


def test_attention_loss_is_lowest_when_attending_to_the_glyph():
  image_shape, stride = (64, 128), (32, 16)  # a 2 x 8 grid of cells
  glyph = np.array([[[40.0, 70.0]]], np.float32)  # in cell (1, 4)
  weights = np.ones((1, 1), np.float32)

  def loss(cell):
    attention = np.full((1, 1, 16), 0.0 if cell is not None else 1 / 16, np.float32)
    if cell is not None:
      attention[0, 0, cell] = 1.0
    return float(losses.attention_loss(attention, glyph, weights, image_shape, stride, 1.0))

  on_glyph, beside, uniform, far = loss(1 * 8 + 4), loss(1 * 8 + 5), loss(None), loss(0)
  assert on_glyph < 0.05 and on_glyph < beside < uniform < far
  # Tokens with weight 0 (padding) do not count.
  attention = np.zeros((1, 2, 16), np.float32)
  attention[0, :, 12] = 1.0
  both = np.concatenate([glyph, np.zeros_like(glyph)], axis=1)
  masked = losses.attention_loss(
    attention, both, np.array([[1.0, 0.0]], np.float32), image_shape, stride, 1.0
  )
  np.testing.assert_allclose(float(masked), on_glyph, rtol=1e-6)


@pytest.mark.slow
def test_guided_attention_learns_where_to_look(tiny_config):
  tiny_config.train.attention_loss_weight = 1.0
  tokenizer, mesh, model, state, shardings = _setup(tiny_config)
  train_ds, _ = datasets.create_datasets(tiny_config)
  batch = next(train_ds.as_numpy_iterator())
  _, schedule = optimizer.create_optimizer(tiny_config.train)
  step = jax.jit(
    functools.partial(
      train.train_step,
      label_smoothing=0.0,
      schedule=schedule,
      attention_loss_weight=1.0,
      encoder_stride=resnet.encoder_stride(tiny_config.model.encoder_last_stride),
    )
  )
  unguided = jax.jit(functools.partial(train.train_step, label_smoothing=0.0, schedule=schedule))
  history = []
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.logical_rules(tiny_config.mesh)):
    global_batch = sharding.put_batch(batch, mesh)
    # The reported loss is the token loss alone, as without guidance. (The
    # batch without glyph centres compiles to the step other tests compiled.)
    plain_batch = {k: v for k, v in global_batch.items() if k != "glyph_centres"}
    _, plain = unguided(state, plain_batch, jax.random.key(1, impl=tiny_config.train.rng_impl))
    for _ in range(20):
      state, metrics = step(state, global_batch, jax.random.key(1, impl=tiny_config.train.rng_impl))
      history.append(metrics.compute())
  np.testing.assert_allclose(history[0]["loss"], plain.compute()["loss"], rtol=1e-5)
  assert float(plain.compute()["attention_loss"]) == 0.0
  first, last = history[0]["attention_loss"], history[-1]["attention_loss"]
  assert 0 < last < 0.7 * first, (first, last)
