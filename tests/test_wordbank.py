"""Tests for input_pipeline/wordbank/: real fonts, real rendering."""

import dataclasses
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from configs import default
from input_pipeline.wordbank import bank as bank_lib
from input_pipeline.wordbank import fonts as fonts_lib
from input_pipeline.wordbank import rendering
from input_pipeline.wordbank import text as text_lib
from input_pipeline.wordbank import writers as writers_lib

WORD_HEIGHT = 24


def _font_path(stem: str) -> pathlib.Path:
  """An installed default font file, by file stem."""
  for font in fonts_lib.list_default_fonts():
    if font.name == stem:
      return pathlib.Path(font.path)
  raise AssertionError(f"font {stem} is not installed")


def _data_config(tmp_path, **overrides):
  config = default.get_config().data
  config.word_height = WORD_HEIGHT
  config.bank_size = 200
  config.words_per_writer = (40, 60)
  config.cache_dir = str(tmp_path / "cache")
  for name, value in overrides.items():
    setattr(config, name, value)
  return config


def _write_text(tmp_path, text, name="text.txt"):
  path = tmp_path / name
  path.write_text(text, encoding="utf-8")
  return path


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp("bank")
  return bank_lib.load_word_bank(_data_config(tmp_path), "train")


def test_bank_shapes_and_dtypes(bank):
  n = len(bank.texts)
  assert n == 200
  assert bank.strip.dtype == np.uint8 and bank.strip.ndim == 2
  assert bank.strip.shape[0] == WORD_HEIGHT
  for array in (bank.offsets, bank.widths, bank.writers):
    assert array.dtype == np.int32 and array.shape == (n,)
  assert bank.texts.shape == (n,)
  assert all(isinstance(t, str) for t in bank.texts)
  num_writers = bank.writers.max() + 1
  assert len(bank.writer_names) == len(bank.font_names) == num_writers


def test_words_tile_the_strip(bank):
  assert np.all(bank.widths >= 1)
  assert bank.offsets[0] == 0
  np.testing.assert_array_equal(bank.offsets[1:], bank.offsets[:-1] + bank.widths[:-1])
  assert bank.offsets[-1] + bank.widths[-1] == bank.strip.shape[1]


def test_texts_use_only_the_charset(bank):
  allowed = set(default.IAM_CHARSET) - {" "}
  for text in bank.texts:
    assert text and set(text) <= allowed, text
  # Made-up English has capitals, punctuation and (over 200 words) digits.
  joined = "".join(bank.texts)
  assert any(c.isupper() for c in joined)
  assert any(c in ",.;:!?" for c in joined)


def test_writers_are_contiguous_and_long_enough(bank):
  ids, starts, counts = np.unique(bank.writers, return_index=True, return_counts=True)
  np.testing.assert_array_equal(ids, np.arange(len(bank.writer_names)))
  # One contiguous run per writer, in id order.
  np.testing.assert_array_equal(starts, np.concatenate([[0], np.cumsum(counts)[:-1]]))
  assert counts.min() >= 40
  for writer, name in enumerate(bank.writer_names):
    assert name.startswith(bank.font_names[writer])
  assert len(set(bank.font_names)) == len(bank.font_names) > 1


def test_every_word_has_ink_sitting_on_the_baseline(bank):
  row = rendering.baseline_row(WORD_HEIGHT)
  on_baseline = 0
  for i in range(len(bank.texts)):
    image = bank.word_image(i)
    assert image.max() > 128, bank.texts[i]
    on_baseline += image[row].max() > 64
  assert on_baseline >= 0.9 * len(bank.texts)


def test_same_config_gives_identical_bytes(tmp_path):
  config = _data_config(tmp_path, bank_size=90, words_per_writer=(30, 45))
  # In-process and with worker processes: the same bytes.
  first = bank_lib.build_word_bank(config, "train", num_workers=1)
  second = bank_lib.build_word_bank(config, "train", num_workers=2)
  for field in ("strip", "offsets", "widths", "writers"):
    assert getattr(first, field).tobytes() == getattr(second, field).tobytes()
  assert first.texts.tolist() == second.texts.tolist()
  assert first.writer_names == second.writer_names
  assert first.font_names == second.font_names


def test_second_load_reads_the_cache_file(tmp_path):
  config = _data_config(tmp_path, bank_size=60, words_per_writer=(30, 30))
  bank = bank_lib.load_word_bank(config, "train")
  path = bank_lib.word_bank_path(config, "train")
  assert path.parent == tmp_path / "cache" and path.is_file()
  assert not [p for p in path.parent.iterdir() if p != path]  # no temp files
  # Mark the cached file; a second load must return the marked bank.
  with np.load(path) as data:
    arrays = dict(data)
  arrays["strip"] = np.full_like(arrays["strip"], 7)
  np.savez(path, **arrays)
  again = bank_lib.load_word_bank(config, "train")
  assert np.all(again.strip == 7)
  assert again.texts.tolist() == bank.texts.tolist()
  # Anything that changes the bank changes the file.
  config.bank_seed = 1
  assert bank_lib.word_bank_path(config, "train") != path


def test_user_font_folder_and_text_file(tmp_path):
  font_dir = tmp_path / "fonts"
  font_dir.mkdir()
  shutil.copy(_font_path("IndieFlower-Regular"), font_dir)
  words = (
    "It was the best of times, it was the worst of times, it was the "
    "age of wisdom, it was the age of foolishness..."
  ).split()
  text_file = _write_text(tmp_path, " ".join(words[:9]) + "\n" + " ".join(words[9:]) + "\n")
  config = _data_config(
    tmp_path,
    bank_size=50,
    words_per_writer=(20, 30),
    font_paths=str(font_dir),
    text_file=str(text_file),
  )
  bank = bank_lib.load_word_bank(config, "train")
  # The text in order, from the start, again when it runs out.
  assert bank.texts.tolist() == [words[i % len(words)] for i in range(50)]
  assert set(bank.font_names) == {"IndieFlower-Regular"}
  assert len(bank.writer_names) == 2


def test_heldout_fonts_make_the_eval_split(tmp_path):
  config = _data_config(tmp_path, heldout_fonts=("Zeyada", "hershey-scripts"))
  train = bank_lib.load_word_bank(config, "train")
  evaluation = bank_lib.load_word_bank(config, "eval")
  assert not {"Zeyada", "hershey-scripts"} & set(train.font_names)
  assert set(evaluation.font_names) == {"Zeyada", "hershey-scripts"}
  assert train.texts.tolist() != evaluation.texts.tolist()
  config.heldout_fonts = ("NoSuchFont",)
  with pytest.raises(ValueError, match="NoSuchFont"):
    bank_lib.load_word_bank(config, "train")


def training_banks(tmp_path, bank_size=120, **field):
  """(plain config, config with `field` set, their training banks); Zeyada held out."""
  heldout = ("Zeyada",)
  plain = _data_config(tmp_path, heldout_fonts=heldout, bank_size=bank_size)
  varied = _data_config(tmp_path, heldout_fonts=heldout, bank_size=bank_size, **field)
  return (
    plain,
    varied,
    bank_lib.build_word_bank(plain, "train"),
    bank_lib.build_word_bank(varied, "train"),
  )


def check_training_only(plain, varied, field: str, out_of_range: float):
  """`varied` (plain with `field` set) changes the training bank only: the eval
  split keeps the very same bank and cache file; a value out of range names
  the field."""
  eval_plain = bank_lib.build_word_bank(plain, "eval")
  assert bank_lib.build_word_bank(varied, "eval").strip.tobytes() == eval_plain.strip.tobytes()
  assert bank_lib.word_bank_path(varied, "eval") == bank_lib.word_bank_path(plain, "eval")
  assert bank_lib.word_bank_path(varied, "train") != bank_lib.word_bank_path(plain, "train")
  setattr(varied, field, out_of_range)
  with pytest.raises(ValueError, match=field):
    bank_lib.build_word_bank(varied, "train")


def test_shape_distortion_bends_training_words_only(tmp_path):
  plain, bent, train_plain, train_bent = training_banks(tmp_path, shape_distortion=0.15)
  # The same words by writers of the same fonts, in other shapes.
  assert train_bent.texts.tolist() == train_plain.texts.tolist()
  assert train_bent.font_names == train_plain.font_names
  for i in range(len(train_plain)):
    a, b = train_plain.word_image(i), train_bent.word_image(i)
    assert a.shape != b.shape or not np.array_equal(a, b)
    assert b.max() > 0.5 * a.max()
  check_training_only(plain, bent, "shape_distortion", 0.9)  # eval keeps the fonts' shapes


def _ink_height(image: np.ndarray) -> int:
  rows = np.flatnonzero(image.max(axis=1) > 64)
  return int(rows[-1] - rows[0] + 1) if rows.size else 0


def test_size_drift_shrinks_training_words_slowly_along_each_writer(tmp_path):
  plain, drifting, train_plain, train_drift = training_banks(tmp_path, 160, size_drift=0.4)
  # The same words by the same writers, each at its share of the writer's size.
  assert train_drift.texts.tolist() == train_plain.texts.tolist()
  assert train_drift.writers.tolist() == train_plain.writers.tolist()
  ratios = np.array(
    [
      _ink_height(train_drift.word_image(i)) / max(_ink_height(train_plain.word_image(i)), 1)
      for i in range(len(train_plain))
    ]
  )
  assert ratios.max() <= 1.1  # never larger than the writer's size (+ a pixel's rounding)
  assert ratios.min() < 0.8  # and down to 1 - 0.4 of it
  assert train_drift.widths.sum() < 0.95 * train_plain.widths.sum()
  check_training_only(plain, drifting, "size_drift", 0.7)  # eval: one size a writer


def test_slant_drift_slants_training_words_only(tmp_path):
  plain, slanting, train_plain, train_slant = training_banks(tmp_path, slant_drift=0.3)
  assert train_slant.texts.tolist() == train_plain.texts.tolist()
  changed = [
    not np.array_equal(train_plain.word_image(i), train_slant.word_image(i))
    for i in range(len(train_plain))
  ]
  assert np.mean(changed) > 0.9
  check_training_only(plain, slanting, "slant_drift", 0.5)  # eval: one slant a writer


def test_slow_waves_drift_slowly_over_the_whole_range():
  rng = np.random.default_rng(0)
  for _ in range(20):
    wave = bank_lib.slow_wave(400, rng)
    assert wave.shape == (400,)
    assert wave.min() >= 0.0 and wave.max() <= 1.0
    assert wave.max() - wave.min() > 0.9  # a whole cycle in 400 words
    # Neighbouring words are alike: a step is at most pi / 8 (the shortest period).
    assert np.abs(np.diff(wave)).max() <= np.pi / 8 + 1e-12


def test_train_words_per_writer_gives_training_more_writers_only(tmp_path):
  heldout = ("Zeyada",)
  plain = _data_config(tmp_path, heldout_fonts=heldout, bank_size=240)
  many = _data_config(
    tmp_path, heldout_fonts=heldout, bank_size=240, train_words_per_writer=(12, 18)
  )
  train_plain = bank_lib.build_word_bank(plain, "train")
  train_many = bank_lib.build_word_bank(many, "train")
  counts = np.bincount(train_many.writers)
  assert counts.min() >= 12
  assert len(counts) >= 3 * len(train_plain.writer_names)
  assert len(set(train_many.font_names)) > len(set(train_plain.font_names))
  # The eval split keeps its writers: the very same bank and cache file.
  eval_plain = bank_lib.build_word_bank(plain, "eval")
  eval_many = bank_lib.build_word_bank(many, "eval")
  assert eval_many.strip.tobytes() == eval_plain.strip.tobytes()
  assert eval_many.writer_names == eval_plain.writer_names
  assert bank_lib.word_bank_path(many, "eval") == bank_lib.word_bank_path(plain, "eval")
  assert bank_lib.word_bank_path(many, "train") != bank_lib.word_bank_path(plain, "train")
  many.train_words_per_writer = (30, 20)
  with pytest.raises(ValueError, match="words_per_writer"):
    bank_lib.build_word_bank(many, "train")


@pytest.mark.parametrize("stem", ["Caveat[wght]", "hershey-scripts"])
def test_distorted_words_keep_their_ink_and_baseline(stem):
  font = next(f for f in fonts_lib.list_default_fonts() if f.name == stem)
  metrics = rendering.font_metrics(font, "handwritig")
  style = writers_lib.sample_writer_style(font, metrics, np.random.default_rng(3))
  bent = dataclasses.replace(style, distortion=0.15)
  row = rendering.baseline_row(40)
  for seed in range(4):
    plain = rendering.render_word("handwriting", style, 40, np.random.default_rng(seed), metrics)
    again = rendering.render_word("handwriting", bent, 40, np.random.default_rng(seed), metrics)
    assert not np.array_equal(plain[:, : again.shape[1]], again[:, : plain.shape[1]])
    # About the same ink, about as wide, still on the baseline.
    assert 0.7 < again.sum(dtype=float) / plain.sum(dtype=float) < 1.4
    assert 0.8 < again.shape[1] / plain.shape[1] < 1.25
    assert again[row - 2 : row + 1].max() > 64


def test_glyph_coverage_of_real_fonts():
  charset = "abcxyzABC.,жЖ"
  caveat = rendering.font_metrics(
    fonts_lib.FontSource("Caveat[wght]", str(_font_path("Caveat[wght]"))), charset
  )
  indie = rendering.font_metrics(
    fonts_lib.FontSource("IndieFlower-Regular", str(_font_path("IndieFlower-Regular"))), charset
  )
  hershey = rendering.font_metrics(
    fonts_lib.FontSource("hershey-scripts", hershey="scripts"), charset
  )
  assert caveat.coverage == set(charset)  # Caveat has Cyrillic
  assert indie.coverage == set("abcxyzABC.,")
  assert hershey.coverage == set("abcxyzABC.,")


def test_extra_fonts_join_training_and_leave_the_eval_bank(tmp_path):
  # A fontpkg family outside the handwriting category is not a default font,
  # but "fontpkg:NAME" names it, in data.font_paths or data.extra_fonts.
  defaults = {f.name for f in fonts_lib.list_default_fonts()}
  assert "Quicksand[wght]" not in defaults
  assert [f.name for f in fonts_lib.resolve_fonts("fontpkg:quicksand")] == ["Quicksand[wght]"]
  fonts = dict(
    heldout_fonts=("Zeyada",),
    bank_size=100,
    words_per_writer=(20, 30),
    font_paths="fontpkg:indie-flower,fontpkg:zeyada",
  )
  plain = _data_config(tmp_path, **fonts)
  extra = _data_config(tmp_path, **fonts, extra_fonts="fontpkg:quicksand,fontpkg:zeyada")
  train = bank_lib.load_word_bank(extra, "train")
  # Zeyada is already a font (not added twice), and held out.
  assert set(train.font_names) == {"IndieFlower-Regular", "Quicksand[wght]"}
  assert set(bank_lib.load_word_bank(plain, "train").font_names) == {"IndieFlower-Regular"}
  plain_eval = bank_lib.load_word_bank(plain, "eval")
  extra_eval = bank_lib.load_word_bank(extra, "eval")
  assert np.array_equal(plain_eval.strip, extra_eval.strip)
  assert plain_eval.texts.tolist() == extra_eval.texts.tolist()
  # ... from the same cache file: the eval bank is rendered once.
  assert bank_lib.word_bank_path(extra, "eval") == bank_lib.word_bank_path(plain, "eval")
  assert bank_lib.word_bank_path(extra, "train") != bank_lib.word_bank_path(plain, "train")
  extra.extra_fonts = "fontpkg:no-such-family"
  with pytest.raises(ValueError, match="data.extra_fonts.*no-such-family.*not installed"):
    bank_lib.load_word_bank(extra, "train")


def test_font_entries_split_at_commas_but_not_inside_a_file_name(tmp_path):
  font = tmp_path / "Hand[wdth,wght].ttf"
  shutil.copy(fonts_lib.resolve_fonts("fontpkg:fredoka")[0].path, font)
  fonts = fonts_lib.resolve_fonts(f"{font}, hershey:cursive,fontpkg:zeyada,")
  assert [f.name for f in fonts] == ["Hand[wdth,wght]", "hershey-cursive", "Zeyada"]
  missing = tmp_path / "missing.ttf"
  with pytest.raises(ValueError, match=rf"data.font_paths: {missing} does not exist\."):
    fonts_lib.resolve_fonts(f"{missing},{font}")


def test_font_lacking_a_character_never_gets_words_with_it(tmp_path):
  text = "жук и Жаба пошли в лес, where the bugs live. " * 12
  cyrillic = "".join(sorted({c for c in text if not c.isascii()}))
  text_file = _write_text(tmp_path, text)
  config = _data_config(
    tmp_path,
    charset=default.IAM_CHARSET + cyrillic,
    font_paths=",".join(
      [str(_font_path("Caveat[wght]")), str(_font_path("IndieFlower-Regular")), "hershey:cursive"]
    ),
    text_file=str(text_file),
    bank_size=150,
    words_per_writer=(25, 35),
  )
  bank = bank_lib.load_word_bank(config, "train")
  assert {"IndieFlower-Regular", "hershey-cursive"} <= set(bank.font_names)
  with_zhe = [i for i, t in enumerate(bank.texts) if set(t) & set("жЖ")]
  assert with_zhe
  for i in with_zhe:
    assert bank.font_names[bank.writers[i]] == "Caveat[wght]", bank.texts[i]
  # All other Cyrillic words stay with fonts that have these letters too.
  for i, text in enumerate(bank.texts):
    if not text.isascii():
      assert bank.font_names[bank.writers[i]] == "Caveat[wght]", text


def test_render_word_refuses_a_missing_glyph():
  font = fonts_lib.FontSource("IndieFlower-Regular", str(_font_path("IndieFlower-Regular")))
  metrics = rendering.font_metrics(font, "abcж")
  style = writers_lib.sample_writer_style(font, metrics, np.random.default_rng(0))
  image = rendering.render_word("cab", style, 32, np.random.default_rng(0), metrics)
  assert image.shape[0] == 32 and image.dtype == np.uint8 and image.max() > 0
  with pytest.raises(ValueError, match="no glyph"):
    rendering.render_word("жab", style, 32, np.random.default_rng(0), metrics)


def test_empty_font_folder_is_an_error(tmp_path):
  empty = tmp_path / "no_fonts"
  empty.mkdir()
  (empty / "readme.txt").write_text("not a font")
  config = _data_config(tmp_path, font_paths=str(empty))
  with pytest.raises(ValueError, match=str(empty)):
    bank_lib.load_word_bank(config, "train")


def test_text_file_without_usable_words_is_an_error(tmp_path):
  text_file = _write_text(tmp_path, "  \n\t\n")
  config = _data_config(tmp_path, text_file=str(text_file))
  with pytest.raises(ValueError, match=f"{text_file}.*no usable words"):
    bank_lib.load_word_bank(config, "train")


def test_character_outside_the_charset_is_an_error(tmp_path):
  text_file = _write_text(tmp_path, "a fine day\nfor a café au lait\n")
  config = _data_config(tmp_path, text_file=str(text_file))
  with pytest.raises(
    ValueError, match=(f"{text_file}, line 2: the word 'café' has the character 'é'.*data.charset")
  ):
    bank_lib.load_word_bank(config, "train")
  # Asked to, the loader skips such words instead.
  config.skip_unknown_chars = True
  config.bank_size = 60
  config.words_per_writer = (60, 60)
  bank = bank_lib.load_word_bank(config, "train")
  assert "café" not in bank.texts.tolist()
  assert bank.texts.tolist()[:7] == "a fine day for a au lait".split()


def test_sampled_words_are_deterministic_and_in_charset():
  words = text_lib.sample_words("abcdefghijklmnopqrstuvwxyz.,", 300, seed=3)
  assert words == text_lib.sample_words("abcdefghijklmnopqrstuvwxyz.,", 300, seed=3)
  assert all(w and set(w) <= set("abcdefghijklmnopqrstuvwxyz.,") for w in words)


@pytest.mark.slow
def test_module_does_not_import_jax():
  code = (
    "import sys; from input_pipeline.wordbank import bank; "
    "assert not {'jax', 'flax', 'tensorflow'} & set(sys.modules)"
  )
  subprocess.run([sys.executable, "-c", code], check=True, cwd=pathlib.Path(__file__).parents[1])
