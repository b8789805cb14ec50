"""Every config file in configs/ loads, passes validation and builds its model."""

import importlib
import os
import sys

from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import pytest

from fphtr_jax import config_validation, sharding, train
from fphtr_jax import tokenizer as tokenizer_lib
from fphtr_jax.models import resnet
from input_pipeline import composer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(
  name[:-3]
  for name in os.listdir(os.path.join(ROOT, "configs"))
  if name.endswith(".py") and name != "__init__.py"
)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_validates_and_builds_its_model(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  if config.data.source == "iam":
    config.data.iam_dir = "~/data/iam"  # set on the command line by users
  config_validation.validate_config(config)
  model = train.create_model(config, tokenizer_lib.Tokenizer(config.data.charset))
  d = config.data
  images = jnp.zeros((1, d.image_height, d.image_width, 1))
  tokens = jnp.zeros((1, d.max_len - 1), jnp.int32)
  logits, variables = jax.eval_shape(
    lambda: model.init_with_output(jax.random.key(0), images, tokens, train=False)
  )
  assert logits.shape[:2] == (1, d.max_len - 1)
  assert nn.unbox(variables["params"])  # shapes only: nothing is computed


@pytest.mark.parametrize("name", ["cpu_fullpage", "fullpage"])
def test_full_page_recipes_hold_out_fonts_and_fill_pages(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  assert config.data.heldout_fonts and config.data.curriculum_steps > 0
  layout = composer.resolve_layout(config.data, int(config.data.word_height))
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
  argv = [
    "prog",
    f"--config={path}",
    f"--config.train.num_steps={default.train.num_steps * 2}",
    "--config.eval.every_steps=7",
  ]
  monkeypatch.setattr(sys, "argv", argv)  # where the config flag reads its overrides
  flag_values(argv)
  config = flag_values.config
  assert config.train.warmup_steps == 2 * default.train.warmup_steps
  assert config.data.curriculum_steps == 2 * default.data.curriculum_steps
  assert config.checkpoint.every_steps == 2 * default.checkpoint.every_steps
  assert config.eval.every_steps == 7
  saved = config.to_dict()  # what the workdir's config.json holds: plain numbers
  assert saved["train"]["warmup_steps"] == config.train.warmup_steps
  config_validation.validate_config(config)


@pytest.mark.parametrize("name", ["default", "cpu_fullpage", "fullpage", "tiny"])
def test_mesh_presets_apply_to_any_recipe(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  assert sharding.mesh_sizes(config.mesh) == {"data": -1, "fsdp": 1, "tensor": 1}
  assert dict(sharding.logical_rules(config.mesh))["embed"] is None
  config.mesh.preset = "fsdp"
  config_validation.validate_config(config)
  assert sharding.mesh_sizes(config.mesh) == {"data": 1, "fsdp": -1, "tensor": 1}
  rules = dict(sharding.logical_rules(config.mesh))
  assert (rules["embed"], rules["mlp"], rules["conv_out"], rules["heads"]) == (
    "fsdp",
    "fsdp",
    "fsdp",
    None,
  )
  assert rules["batch"] == ("data", "fsdp")
  # Sizes set by the user win over the preset's.
  config.mesh.update(dict(data=2, fsdp=4))
  assert sharding.mesh_sizes(config.mesh) == {"data": 2, "fsdp": 4, "tensor": 1}
  config.mesh.update(dict(data=-1, fsdp=1, preset="tensor_parallel"))
  assert sharding.mesh_sizes(config.mesh) == {"data": -1, "fsdp": 1, "tensor": 2}
  rules = dict(sharding.logical_rules(config.mesh))
  assert (rules["heads"], rules["mlp"], rules["embed"]) == ("tensor", "tensor", None)


def test_unknown_mesh_preset_names_the_field():
  from configs import tiny

  config = tiny.get_config()
  config.mesh.preset = "zero3"
  with pytest.raises(ValueError, match=r"mesh.preset='zero3'.*'fsdp'"):
    config_validation.validate_config(config)
