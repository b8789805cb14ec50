"""Every config file in configs/ loads, passes validation and builds its model."""

import importlib
import os
import sys

import jax
import jax.numpy as jnp
import pytest
import flax.linen as nn
from absl import flags
from ml_collections import config_flags

from fphtr_jax import tokenizer as tokenizer_lib
from fphtr_jax import train
from fphtr_jax.models import resnet
from input_pipeline import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(name[:-3] for name in os.listdir(os.path.join(ROOT, "configs"))
                 if name.endswith(".py") and name != "__init__.py")


@pytest.mark.parametrize("name", CONFIGS)
def test_config_validates_and_builds_its_model(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  if config.data.source == "iam":
    config.data.iam_dir = "~/data/iam"  # set on the command line by users
  train.validate_config(config)
  model = train.create_model(config, tokenizer_lib.Tokenizer(config.data.charset))
  d = config.data
  images = jnp.zeros((1, d.image_height, d.image_width, 1))
  tokens = jnp.zeros((1, d.max_len - 1), jnp.int32)
  logits, variables = jax.eval_shape(
      lambda: model.init_with_output(jax.random.key(0), images, tokens, train=False))
  assert logits.shape[:2] == (1, d.max_len - 1)
  assert nn.unbox(variables["params"])  # shapes only: nothing is computed


@pytest.mark.parametrize("name", ["cpu_fullpage", "fullpage"])
def test_full_page_recipes_hold_out_fonts_and_fill_pages(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  assert config.data.heldout_fonts and config.data.curriculum_steps > 0
  layout = synthetic.resolve_layout(config.data, int(config.data.word_height))
  # Full pages: several lines fit, and the finer last stage gives more columns.
  assert layout.max_lines >= 4
  stride_h, stride_w = resnet.encoder_stride(config.model.encoder_last_stride)
  assert stride_w < stride_h


@pytest.mark.parametrize("name", ["cpu_fullpage", "fullpage"])
def test_full_page_schedule_scales_with_num_steps_from_the_command_line(name, monkeypatch):
  """One flag rescales the recipe's schedule; a field set alone keeps its value."""
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, lock_config=True)
  path = os.path.join(ROOT, "configs", f"{name}.py")
  default = importlib.import_module(f"configs.{name}").get_config()
  argv = ["prog", f"--config={path}", f"--config.train.num_steps={default.train.num_steps * 2}",
          "--config.eval.every_steps=7"]
  monkeypatch.setattr(sys, "argv", argv)  # where the config flag reads its overrides
  flag_values(argv)
  config = flag_values.config
  assert config.train.warmup_steps == 2 * default.train.warmup_steps
  assert config.data.curriculum_steps == 2 * default.data.curriculum_steps
  assert config.checkpoint.every_steps == 2 * default.checkpoint.every_steps
  assert config.eval.every_steps == 7
  saved = config.to_dict()  # what the workdir's config.json holds: plain numbers
  assert saved["train"]["warmup_steps"] == config.train.warmup_steps
  train.validate_config(config)
