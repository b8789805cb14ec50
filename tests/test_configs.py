"""Every config file in configs/ loads, passes validation and builds its model."""

import importlib
import os

import jax
import jax.numpy as jnp
import pytest
import flax.linen as nn

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
