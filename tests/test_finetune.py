"""Fine-tuning (train.init_from, train.freeze) from a real tiny run's Orbax checkpoint.

The source run trains configs/tiny.py for a few steps without the letter
NEW_CHAR in its charset; the fine-tuning runs read a text file of words that
all have it, so their vocabulary grows by one token.
"""

import glob
import json
import os
import subprocess

from flax import traverse_util
import jax
import numpy as np
import optax
import pytest

from configs import tiny
from fphtr_jax import (
  checkpointing,
  config_validation,
  export,
  finetune,
  inference,
  optimizer,
  sharding,
  train,
)
from fphtr_jax import tokenizer as tokenizer_lib
from tests.conftest import ROOT, train_command

NEW_CHAR = "z"  # a letter every font of the tiny config draws
WORDS = "zebra zone lazy pizza zero buzz maze quiz size prize zoo jazz dozen razor frozen cozy"
SOURCE_STEPS = 2
FINETUNE_STEPS = 8
EMBED = ("text_decoder", "embed", "embedding")
HEAD_KERNEL, HEAD_BIAS = ("text_decoder", "head", "kernel"), ("text_decoder", "head", "bias")


def _config(cache_dir: str, num_steps: int):
  config = tiny.get_config()
  config.data.cache_dir = cache_dir
  config.data.bank_size = 64
  config.train.num_steps = num_steps
  config.checkpoint.every_steps = num_steps
  config.eval.every_steps = num_steps
  config.eval.num_images = 0
  config.decode.max_len = 8
  return config


def _finetune_config(cache_dir: str, folder, source_dir: str, num_steps: int):
  """The tiny config on words with NEW_CHAR (the full tiny charset), from `source_dir`."""
  config = _config(cache_dir, num_steps)
  text_file = folder / "words.txt"
  text_file.write_text(WORDS + "\n", encoding="utf-8")
  config.data.text_file = str(text_file)
  config.train.init_from = source_dir
  return config


def _numpy(tree):
  return jax.tree.map(np.asarray, tree)


def _flat(tree) -> dict:
  """{path tuple: numpy array}."""
  return {path: np.asarray(x) for path, x in traverse_util.flatten_dict(tree).items()}


def _at(params, path):
  return _flat(params)[path]


def _losses(workdir: str) -> list[float]:
  """train/loss of every logged step, in step order, from the run's TensorBoard events."""
  import tensorflow as tf

  by_step = {}
  for path in glob.glob(os.path.join(workdir, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == "train/loss":
          by_step[event.step] = float(tf.make_ndarray(value.tensor))
  return [by_step[step] for step in sorted(by_step)]


@pytest.fixture(scope="module")
def source(tmp_path_factory, bank_cache_dir):
  """(workdir, charset, {"params", "batch_stats"} as numpy) of a tiny run without NEW_CHAR."""
  config = _config(bank_cache_dir, SOURCE_STEPS)
  config.data.charset = config.data.charset.replace(NEW_CHAR, "")
  workdir = str(tmp_path_factory.mktemp("source") / "run")
  state = train.train_and_evaluate(config, workdir)
  return (
    workdir,
    config.data.charset,
    _numpy({"params": state.params, "batch_stats": state.batch_stats}),
  )


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, bank_cache_dir, source):
  """(folder, workdir, final state as numpy) of FINETUNE_STEPS steps from `source`, encoder frozen.

  The folder holds the run's text file."""
  folder = tmp_path_factory.mktemp("finetuned")
  config = _finetune_config(bank_cache_dir, folder, source[0], FINETUNE_STEPS)
  config.train.freeze = ("encoder",)
  config.train.log_every_steps = 1
  workdir = str(folder / "run")
  state = train.train_and_evaluate(config, workdir)
  return folder, workdir, _numpy({"params": state.params, "batch_stats": state.batch_stats})


# --- Pieces ----------------------------------------------------------------------------------


def test_merged_charset_keeps_the_source_order_and_appends_the_rest():
  assert finetune.merge_charsets("abc", "dcbae d") == "abcde "
  assert finetune.merge_charsets("abc", "ba") == "abc"
  old, merged = tokenizer_lib.Tokenizer("abc"), tokenizer_lib.Tokenizer("abcx")
  # Old characters keep their ids, so their embedding and output rows can be copied.
  np.testing.assert_array_equal(old.encode("cab"), merged.encode("cab"))


@pytest.mark.parametrize(
  "value, expected",
  [
    ("runs/a", ("runs/a", "latest", None)),
    ("runs/a/", ("runs/a", "latest", None)),
    ("runs/a:best", ("runs/a", "best", None)),
    ("runs/a:latest", ("runs/a", "latest", None)),
    ("runs/a:1200", ("runs/a", "1200", None)),
    ("runs/a/checkpoints/1200", ("runs/a", "1200", None)),
    ("runs/a/best/1200", ("runs/a", "best", 1200)),
    ("runs/a/best", ("runs/a", "best", None)),
    ("gs://bucket/run", ("gs://bucket/run", "latest", None)),
    ("gs://bucket/run:best", ("gs://bucket/run", "best", None)),
  ],
)
def test_init_from_names_a_workdir_a_selection_or_a_checkpoint_folder(value, expected):
  assert tuple(finetune.parse_init_from(value)) == expected


@pytest.mark.parametrize("freeze", [("encoders",), ("encoder", "decoder"), ("resnet",)])
def test_unknown_or_total_freeze_names_the_groups(tiny_config, freeze):
  tiny_config.train.freeze = freeze
  with pytest.raises(ValueError, match=r"train\.freeze=.* 'encoder' or 'decoder' \(not all"):
    config_validation.validate_config(tiny_config)


def test_resuming_with_another_freeze_is_refused(tiny_config):
  saved = json.loads(tiny_config.to_json())  # tuples become lists, as in config.json
  del saved["train"]["freeze"]  # a run from before train.freeze trained everything
  config_validation.check_against_checkpoint(tiny_config, saved, "run")
  saved["train"]["freeze"] = ["encoder"]
  tiny_config.train.freeze = ("encoder",)
  config_validation.check_against_checkpoint(tiny_config, saved, "run")
  tiny_config.train.freeze = ()
  with pytest.raises(ValueError, match=r"train\.freeze=\(\) \(checkpoint: \['encoder'\]\)"):
    config_validation.check_against_checkpoint(tiny_config, saved, "run")


def test_frozen_parameters_get_no_update_not_even_weight_decay(tiny_config):
  t = tiny_config.train
  t.optimizer, t.weight_decay, t.grad_clip_norm, t.freeze = "adamw", 0.5, 1.0, ("encoder",)
  tx, _ = optimizer.create_optimizer(t)
  params = {
    "image_encoder": {"kernel": np.ones((3, 2), np.float32)},
    "text_decoder": {"kernel": np.ones((2, 4), np.float32), "bias": np.ones(4, np.float32)},
  }
  opt_state = tx.init(params)
  grads = jax.tree.map(lambda x: np.full_like(x, 100.0), params)
  for _ in range(3):
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
  np.testing.assert_array_equal(params["image_encoder"]["kernel"], np.ones((3, 2)))
  assert (np.asarray(params["text_decoder"]["kernel"]) < 1).all()
  # Adam's two moments of the trainable group only.
  moments = [x for x in jax.tree.leaves(opt_state) if np.issubdtype(x.dtype, np.floating)]
  assert sum(x.size for x in moments) == 2 * (8 + 4)


# --- From a real source run ------------------------------------------------------------------


@pytest.mark.slow
def test_step_zero_copies_the_source_rows_and_adds_fresh_ones(source, tmp_path, bank_cache_dir):
  source_dir, source_charset, theirs = source
  config = _finetune_config(bank_cache_dir, tmp_path, source_dir, FINETUNE_STEPS)
  restored = finetune.restore_source(config)
  assert (restored.which, restored.step) == ("latest", SOURCE_STEPS)
  assert restored.tokenizer.charset == source_charset
  tokenizer = tokenizer_lib.Tokenizer(finetune.merge_charsets(source_charset, config.data.charset))
  assert tokenizer.charset == source_charset + NEW_CHAR
  mesh = sharding.create_mesh(config.mesh)
  fresh, shardings = train.create_train_state(
    config, train.create_model(config, tokenizer), mesh, jax.random.key(0, impl="unsafe_rbg")
  )
  fresh_params = _numpy(fresh.params)
  state = finetune.start_from_source(fresh, shardings, restored, config)

  old = len(source_charset) + tokenizer_lib.NUM_SPECIAL
  assert _at(state.params, EMBED).shape[0] == old + 1 == tokenizer.vocab_size
  for path, rows in ((EMBED, np.s_[:old]), (HEAD_KERNEL, np.s_[:, :old]), (HEAD_BIAS, np.s_[:old])):
    new_row = np.s_[old:] if path != HEAD_KERNEL else np.s_[:, old:]
    np.testing.assert_array_equal(_at(state.params, path)[rows], _at(theirs["params"], path))
    np.testing.assert_array_equal(
      _at(state.params, path)[new_row], _at(fresh_params, path)[new_row]
    )
  # Every other parameter and every BatchNorm statistic is the source's.
  ours = _flat(state.params)
  for path, value in _flat(theirs["params"]).items():
    if path not in finetune.VOCAB_AXES:
      np.testing.assert_array_equal(ours[path], value, err_msg=str(path))
  for path, value in _flat(theirs["batch_stats"]).items():
    np.testing.assert_array_equal(_flat(state.batch_stats)[path], value, err_msg=str(path))
  assert int(state.step) == 0
  assert all(not np.any(x) for x in jax.tree.leaves(_numpy(state.opt_state)))
  # Laid out as a fresh init is.
  for array, wanted in zip(jax.tree.leaves(state), jax.tree.leaves(shardings), strict=True):
    assert array.sharding.is_equivalent_to(wanted, array.ndim)


@pytest.mark.slow
def test_an_exported_model_folder_is_a_source(source, tmp_path, bank_cache_dir):
  source_dir, source_charset, theirs = source
  config = _finetune_config(bank_cache_dir, tmp_path, source_dir, FINETUNE_STEPS)
  run = inference.restore_run(source_dir, inference.load_config(source_dir), "latest")
  model_dir = str(tmp_path / "model")
  export.export(run, model_dir, dtype="float16")
  config.train.init_from = model_dir
  restored = finetune.restore_source(config)
  assert (restored.which, restored.step) == ("model", SOURCE_STEPS)
  assert restored.tokenizer.charset == source_charset
  # The float16 weights, made float32 again.
  for path, value in _flat(theirs["params"]).items():
    ours = _flat(_numpy(restored.params))[path]
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, value.astype(np.float16).astype(np.float32))
  for path, value in _flat(theirs["batch_stats"]).items():
    np.testing.assert_array_equal(_flat(_numpy(restored.batch_stats))[path], value)
  config.train.init_from = f"{model_dir}:best"
  with pytest.raises(ValueError, match="a model folder holds one model"):
    finetune.restore_source(config)


@pytest.mark.slow
def test_a_source_that_cannot_be_read_is_named(source, tmp_path, bank_cache_dir):
  source_dir = source[0]
  config = _finetune_config(bank_cache_dir, tmp_path, source_dir, FINETUNE_STEPS)
  for value, message in (
    (str(tmp_path / "nowhere"), r"is no folder; expected a trained run's workdir"),
    (f"{source_dir}:7", rf"No checkpoint of step 7 .*steps \[{SOURCE_STEPS}\]"),
    (os.path.join(source_dir, "best", "7"), rf"best checkpoint .* is step {SOURCE_STEPS}, not 7"),
  ):
    config.train.init_from = value
    with pytest.raises(ValueError, match=rf"^train\.init_from={value!r}: .*{message}"):
      finetune.restore_source(config)


@pytest.mark.slow
def test_finetuning_learns_the_new_character_with_the_encoder_frozen(source, finetuned):
  _, source_charset, theirs = source
  _, workdir, ours = finetuned
  merged = source_charset + NEW_CHAR
  # The merged vocabulary is what the run saved, for predict, evaluate and resuming.
  assert tokenizer_lib.Tokenizer.load(workdir).charset == merged
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    assert json.load(f)["data"]["charset"] == merged
  checkpointer = checkpointing.Checkpointer(workdir, read_only=True)
  assert checkpointer.restore_vocab().charset == merged
  checkpointer.close()
  assert _at(ours["params"], EMBED).shape[0] == len(merged) + tokenizer_lib.NUM_SPECIAL

  # The frozen encoder, its BatchNorm statistics included, is the source's; the decoder learned.
  encoder = _flat(ours["params"]["image_encoder"])
  for path, value in _flat(theirs["params"]["image_encoder"]).items():
    np.testing.assert_array_equal(encoder[path], value, err_msg=str(path))
  for path, value in _flat(theirs["batch_stats"]).items():
    np.testing.assert_array_equal(_flat(ours["batch_stats"])[path], value, err_msg=str(path))
  old = len(source_charset) + tokenizer_lib.NUM_SPECIAL
  for path in (
    ("layers_0", "mlp_in", "kernel"),
    ("layers_0", "cross_attention", "query", "kernel"),
  ):
    assert not np.array_equal(
      _at(ours["params"]["text_decoder"], path), _at(theirs["params"]["text_decoder"], path)
    )
  assert not np.array_equal(_at(ours["params"], EMBED)[:old], _at(theirs["params"], EMBED))

  losses = _losses(workdir)
  assert len(losses) == FINETUNE_STEPS and np.isfinite(losses).all()
  assert np.mean(losses[-2:]) < 0.92 * np.mean(losses[:2]), losses


@pytest.mark.slow
def test_resuming_a_finetuning_run_continues_from_its_own_checkpoint(finetuned, bank_cache_dir):
  folder, workdir, ours = finetuned
  # The same command with more steps; init_from is not read once the workdir has
  # checkpoints, so a source that is gone is no matter.
  config = _finetune_config(bank_cache_dir, folder, str(folder / "moved"), FINETUNE_STEPS + 2)
  config.train.freeze = ("encoder",)
  config.train.log_every_steps = 1
  state = train.train_and_evaluate(config, workdir)
  assert int(state.step) == FINETUNE_STEPS + 2
  steps = sorted(int(name) for name in os.listdir(os.path.join(workdir, "checkpoints")))
  assert steps == [FINETUNE_STEPS, FINETUNE_STEPS + 2]
  # It went on from step FINETUNE_STEPS: the encoder is still frozen, the decoder moves on.
  np.testing.assert_array_equal(
    _at(state.params, ("image_encoder", "projection", "kernel")),
    _at(ours["params"], ("image_encoder", "projection", "kernel")),
  )
  assert not np.array_equal(_at(state.params, EMBED), _at(ours["params"], EMBED))
  assert tokenizer_lib.Tokenizer.load(workdir).charset == config.data.charset
  assert config.data.charset.endswith(NEW_CHAR) and config.data.charset.count(NEW_CHAR) == 1
  losses = _losses(workdir)
  assert len(losses) == FINETUNE_STEPS + 2


@pytest.mark.slow
def test_trainer_refuses_a_source_of_another_shape_before_writing(source, tmp_path, bank_cache_dir):
  workdir = tmp_path / "run"
  result = subprocess.run(
    train_command(
      str(workdir),
      bank_cache_dir,
      f"--config.train.init_from={source[0]}",
      "--config.model.d_model=48",
    ),
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode != 0
  assert (
    "the source's model has another shape: params/image_encoder/projection/bias is (32,) "
    "there and (48,) here (model.d_model=48 here, 32 in the source)"
  ) in result.stderr, result.stderr[-3000:]
  assert not os.path.exists(workdir / "config.json")
  assert not os.path.exists(workdir / "vocab.json")
