"""Every config file in configs/ loads, passes validation and builds its model."""

import glob
import importlib
import os
import re
import sys

from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import pytest

from fphtr_jax import cli, config_validation, sharding, train
from fphtr_jax import tokenizer as tokenizer_lib
from fphtr_jax.models import resnet
from input_pipeline import composer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(
  name[:-3]
  for name in os.listdir(os.path.join(ROOT, "configs"))
  # variants.py is the config argument's grammar, shared by the config files.
  if name.endswith(".py") and name not in ("__init__.py", "variants.py")
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


@pytest.mark.parametrize(
  "name, arg, lines", [("cpu_fullpage", "lines12", 12), ("fullpage", None, 25)]
)
def test_tall_page_configs_hold_their_lines_and_their_text(name, arg, lines):
  """Pages of `lines` lines of 9 words fit the canvas at the tightest line gap,
  and the token budget holds 54 characters of each."""
  config = importlib.import_module(f"configs.{name}").get_config(arg)
  layout = composer.resolve_layout(config.data, int(config.data.word_height))
  assert layout.max_lines >= lines
  assert layout.num_words[1] >= 9 * lines
  assert layout.max_chars >= 54 * lines


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


# --- Config arguments: --config=FILE:ARG (configs/variants.py) ------------------------------

DOC_FILES = sorted(
  [os.path.join(ROOT, "README.md")]
  + glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True)
  + glob.glob(os.path.join(ROOT, "configs", "*.py"))
)
# configs/NAME.py:ARG as the docs write it.
DOC_ARGUMENT = re.compile(r"(configs/(\w+)\.py):([^\s\"'`\\)]+)")


def _documented(kind: str) -> list[tuple[str, str, str]]:
  """(doc file, config file, argument) of every config argument the docs write, of `kind`.

  kind: "config" (a variant to train), "sweep" (an argument naming a sweep of
  its file) or "error" (on the line of an error message: the line instead).
  """
  found = set()
  for path in DOC_FILES:
    with open(path, encoding="utf-8") as f:
      for line in f:
        for match in DOC_ARGUMENT.finditer(line):
          config_file, name, arg = match.groups()
          sweeps = importlib.import_module(f"configs.{name}").VARIANTS.sweeps
          if line.lstrip().startswith("error:"):
            kind_of, value = "error", line.strip()
          else:
            kind_of = "sweep" if set(arg.split(",")) & set(sweeps) else "config"
            value = arg
          found.add((kind_of, os.path.relpath(path, ROOT), config_file, value))
  return sorted(item[1:] for item in found if item[0] == kind)


def _config_from_command_line(*args: str):
  """The config that training builds from these --config flags (ml_collections' config flag)."""
  argv = ["prog", *args]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file(
    "config", None, "", flag_values=flag_values, lock_config=True, sys_argv=argv
  )
  flag_values(argv)
  return flag_values.config


def _check_builds(config):
  if config.data.source == "iam" and not config.data.iam_dir:
    config.data.iam_dir = "~/data/iam"  # given by users on the command line
  config_validation.validate_config(config)
  train.create_model(config, tokenizer_lib.Tokenizer(config.data.charset))


def test_the_docs_name_variants_and_sweeps():
  # So that a broken pattern cannot make the tests below vacuous.
  assert len(_documented("config")) >= 10
  assert {arg.split(",")[0] for _, _, arg in _documented("sweep")} >= {"sweep", "batch_sizes"}
  assert _documented("error")


@pytest.mark.parametrize("doc,config_file,arg", _documented("config"))
def test_every_documented_variant_builds_and_validates(doc, config_file, arg, monkeypatch):
  monkeypatch.chdir(ROOT)
  _check_builds(_config_from_command_line(f"--config={config_file}:{arg}"))


@pytest.mark.parametrize("doc,config_file,arg", _documented("sweep"))
def test_every_documented_sweep_builds_its_points(doc, config_file, arg, monkeypatch):
  monkeypatch.chdir(ROOT)
  from fphtr_jax import sweep

  _, points = sweep.make_points(f"{config_file}:{arg}", "workdirs/sweep", [])
  assert len(points) >= 2 and len({p.workdir for p in points}) == len(points)
  for point in points:
    _check_builds(point.config)


@pytest.mark.parametrize("doc,config_file,line", _documented("error"))
def test_documented_config_argument_errors_are_what_the_code_says(
  doc, config_file, line, monkeypatch
):
  monkeypatch.chdir(ROOT)
  argument = re.match(r"error: --config=(\S+?): ", line).group(1)
  with pytest.raises(cli.CommandLineError) as raised:
    cli.load_config_file(argument)
  assert "error: " + str(raised.value) == line


def test_config_argument_values_take_their_fields_types():
  from configs import cpu_fullpage, iam_line, tiny, variants

  config = tiny.get_config("steps=20,lr=3e-3,batch=4,seed=7")
  assert (config.train.num_steps, config.train.batch_size, config.train.seed) == (20, 4, 7)
  assert config.train.learning_rate == 0.003
  assert tiny.get_config("lr=1").train.learning_rate == 1.0  # an int where a float goes
  config = cpu_fullpage.get_config("fonts=sans,single_lines=0.2,dtype=bfloat16")
  assert config.data.extra_fonts == ",".join(cpu_fullpage.SANS_FONTS)
  assert (config.data.single_line_pages, config.model.dtype) == (0.2, "bfloat16")
  assert cpu_fullpage.get_config("fonts=none").data.extra_fonts == ""
  assert iam_line.get_config("iam_dir=~/data/iam").data.iam_dir == "~/data/iam"
  switch = variants.Variants({"augment": variants.Key("data.augment", "augmentation")})
  for text, value in [("false", False), ("True", True), ("0", False), ("yes", True)]:
    assert switch.apply(tiny.get_config(), f"augment={text}").data.augment is value
  # No argument, or an empty one: the config as the file writes it.
  assert tiny.get_config("").to_dict() == tiny.get_config().to_dict()


def test_config_argument_items_apply_left_to_right_and_the_schedule_follows():
  from configs import cpu_fullpage

  config = cpu_fullpage.get_config("b8,steps=7000")
  assert (config.train.batch_size, config.train.num_steps) == (8, 7000)
  # b8 sets warmup, curriculum and the periods; the rest of the schedule follows steps.
  assert (config.train.warmup_steps, config.data.curriculum_steps) == (500, 2400)
  config = cpu_fullpage.get_config("steps=6000")
  assert (config.train.warmup_steps, config.data.curriculum_steps) == (6000 // 11, 2400)
  assert config.eval.every_steps == config.checkpoint.every_steps == 600
  assert cpu_fullpage.get_config("steps=100,steps=200").train.num_steps == 200


def test_named_variants_are_the_flags_they_replace(monkeypatch):
  monkeypatch.chdir(ROOT)
  # The batch-8 schedule and the one H200 run, as docs/experiments/ gave them before.
  b8 = [
    "--config.train.batch_size=8",
    "--config.train.num_steps=6000",
    "--config.train.warmup_steps=500",
    "--config.data.curriculum_steps=2400",
    "--config.eval.every_steps=600",
    "--config.checkpoint.every_steps=400",
  ]
  assert (
    _config_from_command_line("--config=configs/cpu_fullpage.py:b8").to_dict()
    == _config_from_command_line("--config=configs/cpu_fullpage.py", *b8).to_dict()
  )
  h200 = [
    "--config.data.image_height=1024",
    "--config.data.word_height=40",
    "--config.data.words_per_form=(40,70)",
    "--config.data.max_len=700",
    "--config.model.dtype=bfloat16",
    "--config.data.extra_fonts=",
    "--config.train.num_steps=2000",
    "--config.train.warmup_steps=200",
    "--config.data.curriculum_steps=800",
    "--config.eval.every_steps=1000",
    "--config.eval.num_examples=64",
    "--config.checkpoint.every_steps=100000",
    "--config.data.shape_distortion=0.1",
    "--config.data.bank_size=40000",
    "--config.data.words_per_writer=(100,200)",
    "--config.data.single_line_pages=0.1",
  ]
  assert (
    _config_from_command_line(
      "--config=configs/fullpage.py:iam_forms,short,bf16,wide_hands"
    ).to_dict()
    == _config_from_command_line("--config=configs/fullpage.py", *h200).to_dict()
  )


@pytest.mark.parametrize(
  "arg,expected",
  [
    # An unknown key: named, with the keys the file takes.
    (
      "batchh=8",
      r"unknown key 'batchh'; the keys are steps \(train.num_steps\), "
      r"batch \(train.batch_size\), .*fonts \(data.extra_fonts: print \| sans \| none\)",
    ),
    ("b9", r"unknown variant 'b9'; the keys are .*; the named variants are clean, b8, wide_hands"),
    ("batch", r"unknown variant 'batch' \(batch is a key: give it as batch=VALUE\)"),
    ("b8=1", r"unknown key 'b8' \(b8 is a named variant: give it without a value\)"),
    # A bad value: the key, its field, the value and what it takes.
    (
      "batch=eight",
      r"batch sets train.batch_size, which takes an integer, "
      r"not 'eight'",
    ),
    ("lr=fast", r"lr sets train.learning_rate, which takes a number, not 'fast'"),
    ("fonts=serif", r"fonts is one of print, sans, none \(data.extra_fonts\), not 'serif'"),
    ("b8,,steps=1", r"'b8,,steps=1' has an empty item"),
  ],
)
def test_config_argument_mistakes_name_the_item_and_what_is_allowed(arg, expected, monkeypatch):
  monkeypatch.chdir(ROOT)
  with pytest.raises(
    cli.CommandLineError, match=f"^--config=configs/cpu_fullpage.py:{re.escape(arg)}: {expected}"
  ):
    cli.load_config_file(f"configs/cpu_fullpage.py:{arg}")


def test_the_help_argument_says_what_every_key_and_variant_does(monkeypatch):
  monkeypatch.chdir(ROOT)
  with pytest.raises(cli.CommandLineError) as raised:
    cli.load_config_file("configs/cpu_fullpage.py:help")
  text = str(raised.value)
  assert "steps (train.num_steps): training steps;" in text
  assert "fonts (data.extra_fonts: print | sans | none): print fonts added" in text
  assert "wide_hands: more varied training hands" in text
  assert "data.words_per_writer=(100, 200)" in text and text.endswith(
    "sweep): batch_sizes, few_shot."
  )


def test_real_pages_variant_is_the_recipe_of_its_long_command():
  """The variant sets what `tall,long_lines,single_lines=0.3` and three fields set."""
  from configs import cpu_fullpage

  config = cpu_fullpage.get_config("real_pages")
  spelled = cpu_fullpage.get_config("tall,long_lines,single_lines=0.3")
  spelled.data.layout_height_min = 256
  spelled.data.line_width = (384, 960)
  spelled.data.words_per_form = (8, 60)
  assert config.to_dict() == spelled.to_dict()
  layout = composer.resolve_layout(config.data, int(config.data.word_height))
  assert layout.min_page_height == 256 and layout.canvas_width == 1024
