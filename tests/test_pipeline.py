import itertools
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from fphtr_jax import pixels
from fphtr_jax import tokenizer as tokenizer_lib
from input_pipeline import common, datasets
from input_pipeline import composer as composer_lib
from input_pipeline.sources import synthetic
from input_pipeline.wordbank import bank as bank_lib


def take(dataset, num_batches):
  return list(itertools.islice(dataset.as_numpy_iterator(), num_batches))


def assert_same_batches(first, second):
  assert len(first) == len(second)
  for a, b in zip(first, second):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_batches_have_the_documented_format(tiny_config):
  train_ds, _ = datasets.create_datasets(tiny_config)
  batch = next(train_ds.as_numpy_iterator())
  data = tiny_config.data
  b, h, w, t = 8, data.image_height, data.image_width, data.max_len
  assert batch["image"].shape == (b, h, w, 1) and batch["image"].dtype == np.float32
  assert batch["tokens"].shape == (b, t) and batch["tokens"].dtype == np.int32
  assert batch["mask"].shape == (b,) and (batch["mask"] == 1.0).all()
  # White paper is the background value; no example is blank.
  assert np.isclose(batch["image"].max(), pixels.PAPER)
  assert (batch["image"].reshape(b, -1).min(axis=1) < 0.0).all()

  tok = tokenizer_lib.Tokenizer(tiny_config.data.charset)
  for tokens in batch["tokens"]:
    assert tokens[0] == tokenizer_lib.SOS_ID
    eos = int(np.flatnonzero(tokens == tokenizer_lib.EOS_ID)[0])
    assert eos >= 2 and (tokens[1:eos] >= tokenizer_lib.NUM_SPECIAL).all()
    assert (tokens[eos + 1 :] == tokenizer_lib.PAD_ID).all()
    # The same rule as the model's tokenizer, both ways.
    np.testing.assert_array_equal(tok.encode(tok.decode(tokens), max_len=t), tokens)
  assert "glyph_centres" not in batch


def test_guided_attention_batches_say_where_each_token_is(tiny_config):
  tiny_config.train.attention_loss_weight = 1.0
  batch = next(datasets.create_datasets(tiny_config)[0].as_numpy_iterator())
  data = tiny_config.data
  centres = batch["glyph_centres"]
  assert centres.shape == (8, data.max_len - 1, 2) and centres.dtype == np.float32
  targets = batch["tokens"][:, 1:]
  is_token = targets != tokenizer_lib.PAD_ID
  assert (centres[~is_token] == 0).all()
  # Every character and <EOS> lies on the page, on ink or beside it.
  ys, xs = centres[is_token].T
  assert (ys >= 0).all() and (ys < data.image_height).all()
  assert (xs >= 0).all() and (xs < data.image_width).all()
  ink = batch["image"][..., 0] < pixels.PAPER - 0.5
  separators = [tokenizer_lib.NUM_SPECIAL + data.charset.index(c) for c in " \n"]
  letters = (targets >= tokenizer_lib.NUM_SPECIAL) & ~np.isin(targets, separators)
  for b, t in zip(*np.nonzero(letters)):
    y, x = np.round(centres[b, t]).astype(int)
    near = ink[b, max(y - 8, 0) : y + 9, max(x - 8, 0) : x + 9]
    assert near.any(), f"no ink near character {t} of example {b}"


def test_tokens_are_the_composed_text(tiny_config, bank_cache_dir):
  bank = bank_lib.load_word_bank(tiny_config.data, "train", cache_dir=bank_cache_dir)
  composer = composer_lib.SyntheticComposer(bank, tiny_config.data)
  example = synthetic.make_synthetic_example(composer, tiny_config.data, (1, 0), augment=True)
  tok = tokenizer_lib.Tokenizer(tiny_config.data.charset)
  for index in range(4):
    features = example(tf.constant(index, tf.int64))
    text = features["text"].numpy().decode()
    assert text and tok.decode(features["tokens"].numpy()) == text


def test_same_seed_same_batches_whatever_the_parallelism(tiny_config):
  tiny_config.data.augment = True
  first = take(datasets.create_datasets(tiny_config)[0], 2)
  tiny_config.data.num_parallel_calls = 1
  again = take(datasets.create_datasets(tiny_config)[0], 2)
  assert_same_batches(first, again)
  tiny_config.train.seed += 1
  other = take(datasets.create_datasets(tiny_config)[0], 1)
  assert not np.array_equal(first[0]["tokens"], other[0]["tokens"])


def test_start_step_skips_exactly(tiny_config):
  from_start = take(datasets.create_datasets(tiny_config)[0], 3)
  resumed = take(datasets.create_datasets(tiny_config, start_step=2)[0], 1)
  assert_same_batches(from_start[2:3], resumed)


def test_curriculum_grows_the_pages(tiny_config):
  config = tiny_config
  config.data.level = "form"
  config.data.image_height, config.data.image_width = 96, 160
  config.data.words_per_line = (1, 3)
  config.data.words_per_form = (8, 16)
  config.data.max_len = 96
  config.data.curriculum_steps = 10
  # The most words allowed: words_per_line's low end at step 0, the top from step 10.
  caps = [int(synthetic.curriculum_max_words(step, 1, 16, 10)) for step in (0, 5, 10, 50)]
  assert caps == [1, 8, 16, 16]

  def words_per_page(start_step):
    train_ds, _ = datasets.create_datasets(config, start_step=start_step)
    (batch,) = take(train_ds, 1)
    tok = tokenizer_lib.Tokenizer(config.data.charset)
    return [len(tok.decode(tokens).split()) for tokens in batch["tokens"]]

  assert set(words_per_page(0)) == {1}
  late = words_per_page(20)
  assert min(late) >= 2 and max(late) > 3
  # Off, the pages are words_per_form's from the first step.
  config.data.curriculum_steps = 0
  assert min(words_per_page(0)) >= 2
  # Single-line pages: some pages are one line of words_per_line's words, in training only.
  config.data.single_line_pages = 0.5
  late = words_per_page(20)
  assert min(late) <= 3 and max(late) > 3
  _, eval_ds = datasets.create_datasets(config)
  tok = tokenizer_lib.Tokenizer(config.data.charset)
  eval_words = [len(tok.decode(t).split()) for t in next(eval_ds.as_numpy_iterator())["tokens"]]
  assert min(eval_words) >= 8
  # Single words: all of the rest of the pages hold one word.
  config.data.single_word_pages = 0.5
  assert set(words_per_page(20)) <= {1, 2, 3}
  config.data.single_line_pages, config.data.single_word_pages = 0.0, 1.0
  assert set(words_per_page(20)) == {1}


def test_processes_share_out_each_global_batch(tiny_config):
  whole = take(datasets.create_datasets(tiny_config)[0], 2)
  parts = [
    take(datasets.create_datasets(tiny_config, process_index=i, process_count=2)[0], 2)
    for i in range(2)
  ]
  assert parts[0][0]["image"].shape[0] == 4
  assert not np.array_equal(parts[0][0]["tokens"], parts[1][0]["tokens"])
  for step in range(2):
    for key in ("image", "tokens", "mask"):
      np.testing.assert_array_equal(
        np.concatenate([parts[0][step][key], parts[1][step][key]]), whole[step][key]
      )


def test_eval_set_is_fixed_and_padded_with_mask(tiny_config):
  tiny_config.eval.num_examples = 11
  tiny_config.eval.batch_size = 4
  _, eval_ds = datasets.create_datasets(tiny_config)
  first, again = list(eval_ds.as_numpy_iterator()), list(eval_ds.as_numpy_iterator())
  assert_same_batches(first, again)
  assert len(first) == 3
  np.testing.assert_array_equal(first[-1]["mask"], [1, 1, 1, 0])
  padding = first[-1]
  assert np.allclose(padding["image"][3], pixels.PAPER)
  assert padding["tokens"][3][:3].tolist() == [
    tokenizer_lib.SOS_ID,
    tokenizer_lib.EOS_ID,
    tokenizer_lib.PAD_ID,
  ]
  # Eval examples differ from training ones.
  train_batch = take(datasets.create_datasets(tiny_config)[0], 1)[0]
  assert not np.array_equal(train_batch["tokens"][:4], first[0]["tokens"])

  # Two processes: the same 11 examples, none twice, the same number of batches.
  parts = [
    list(
      datasets.create_datasets(tiny_config, process_index=i, process_count=2)[1].as_numpy_iterator()
    )
    for i in range(2)
  ]
  assert len(parts[0]) == len(parts[1]) == 3
  whole_tokens = np.concatenate([b["tokens"][b["mask"] > 0] for b in first])
  split_tokens = np.concatenate([b["tokens"][b["mask"] > 0] for p in parts for b in p])
  assert len(split_tokens) == 11
  assert sorted(map(bytes, split_tokens)) == sorted(map(bytes, whole_tokens))


def test_char_outside_charset_is_a_clear_error(tiny_config, bank_cache_dir):
  bank = bank_lib.load_word_bank(tiny_config.data, "train", cache_dir=bank_cache_dir)
  word = next(str(t) for t in bank.texts if "e" in str(t))
  tiny_config.data.charset = tiny_config.data.charset.replace("e", "")
  with pytest.raises(ValueError, match=f"'e'.*{word!r}.*data.charset"):
    common.check_texts(bank.texts, tiny_config.data, source="train word bank")


def test_forms_need_a_newline_in_the_charset(tiny_config):
  tiny_config.data.level = "form"
  tiny_config.data.charset = tiny_config.data.charset.replace("\n", "")
  with pytest.raises(ValueError, match="data.charset"):
    datasets.create_datasets(tiny_config)


def test_batch_not_divisible_by_processes_is_a_clear_error(tiny_config):
  with pytest.raises(ValueError, match="train.batch_size"):
    datasets.create_datasets(tiny_config, process_index=0, process_count=3)
  tiny_config.eval.batch_size = 6
  with pytest.raises(ValueError, match="eval.batch_size"):
    datasets.create_datasets(tiny_config, process_index=0, process_count=4)


def test_unknown_source_is_a_clear_error(tiny_config):
  tiny_config.data.source = "scans"
  with pytest.raises(ValueError, match="data.source"):
    datasets.create_datasets(tiny_config)


def test_create_datasets_hides_the_gpus_before_building_anything(tiny_config, monkeypatch):
  calls = []
  monkeypatch.setattr(common, "hide_gpus_from_tensorflow", lambda: calls.append("hidden"))
  tiny_config.data.source = "scans"  # refused at the first check, before anything is built
  with pytest.raises(ValueError, match="data.source"):
    datasets.create_datasets(tiny_config)
  assert calls == ["hidden"]
  with pytest.raises(ValueError, match="data.source"):
    datasets.create_eval_dataset(tiny_config)
  assert calls == ["hidden", "hidden"]


@pytest.mark.slow
def test_importing_the_pipeline_imports_no_jax_and_leaves_the_gpus_alone():
  # TensorFlow imports jax itself when it is installed (its TFLite converter
  # does without): with jax blocked, only an import by the pipeline fails.
  code = textwrap.dedent("""
      import importlib.abc
      import sys

      class NoJax(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
          if name.split(".")[0] in ("jax", "jaxlib", "flax"):
            raise ImportError(f"{name} is blocked")
          return None

      sys.meta_path.insert(0, NoJax())
      import tensorflow as tf
      calls = []
      tf.config.set_visible_devices = lambda *args: calls.append(args)
      from input_pipeline import common, datasets, preview, write_pages
      from input_pipeline.iam import tfds_builder, word_bank
      from input_pipeline.pages import tfds_builder as pages_tfds_builder
      assert not {"jax", "jaxlib", "flax"} & set(sys.modules)
      assert calls == [], calls  # importing hides nothing
      common.hide_gpus_from_tensorflow()
      assert calls == [([], "GPU")], calls
      """)
  result = subprocess.run(
    [sys.executable, "-c", code],
    cwd=pathlib.Path(__file__).parents[1],
    capture_output=True,
    text=True,
  )
  assert result.returncode == 0, result.stderr[-3000:]


def test_fit_to_canvas_shrinks_what_does_not_fit_and_pads_with_paper():
  grey = np.random.default_rng(0).uniform(0.0, 0.5, (40, 100)).astype(np.float32)
  # Too wide: shrunk by 50 / 100, the aspect ratio kept; paper below.
  canvas, height, width = common.fit_to_canvas(grey, 30, 50)
  canvas = np.asarray(canvas)
  assert canvas.shape == (30, 50) and canvas.dtype == np.float32
  assert (int(height), int(width)) == (20, 50)
  shrunk = tf.image.resize(grey[:, :, None], (20, 50), antialias=True)[:, :, 0]
  np.testing.assert_allclose(canvas[:20], shrunk, atol=1e-6)
  assert (canvas[20:] == 1.0).all()
  # Fits: pasted as it is, at the top left.
  canvas, height, width = (np.asarray(x) for x in common.fit_to_canvas(grey, 64, 128))
  assert (height, width) == (40, 100) and height.dtype == width.dtype == np.int32
  np.testing.assert_array_equal(canvas[:40, :100], grey)
  assert (canvas[40:] == 1.0).all() and (canvas[:, 100:] == 1.0).all()
  # scale < 1 shrinks what fits too; the canvas still bounds it.
  _, height, width = common.fit_to_canvas(grey, 64, 128, scale=0.5)
  assert (int(height), int(width)) == (20, 50)
  _, height, width = common.fit_to_canvas(grey, 64, 40, scale=0.5)
  assert (int(height), int(width)) == (16, 40)
  # Never less than a pixel.
  _, height, width = common.fit_to_canvas(np.zeros((1, 1000), np.float32), 30, 50)
  assert (int(height), int(width)) == (1, 50)
  # In a graph, from an image of unknown size (as tf.data decodes IAM's).
  fit = tf.function(
    lambda g: common.fit_to_canvas(g, 30, 50),
    input_signature=[tf.TensorSpec([None, None], tf.float32)],
  )
  graph_canvas, height, width = fit(tf.constant(grey))
  assert (int(height), int(width)) == (20, 50)
  np.testing.assert_allclose(graph_canvas, common.fit_to_canvas(grey, 30, 50)[0], atol=1e-6)
