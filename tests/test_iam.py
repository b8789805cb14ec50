"""IAM reader, TFDS builder, splits, pipeline and training on a small IAM-format fixture.

The fixture is written here: five forms by two writers, drawn with PIL, with
the xml (ISO-8859-1, entities), ascii/{forms,lines,words}.txt, cropped line and
word images, an "err" line, an empty word image and a Latin-1 character.
"""

import importlib.util
import itertools
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFont
import pytest

from configs import default, iam_line
from input_pipeline import image_io
from input_pipeline.composer import PUNCTUATION
from input_pipeline.iam import reader
from input_pipeline.iam import word_bank as iam_word_bank

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORM_SIZE = (700, 900)  # width, height, at 300 dpi
FIRST_LINE_TOP, LINE_PITCH = 300, 90
# (form id, writer, Aachen split, lines); each line is (words, segmentation).
FORMS = (
  (
    "a01-000u",
    "000",
    "train",
    (
      (("A", "MOVE", "to", "stop"), "ok"),
      (("Mr.", "Gaitskell", "from"), "ok"),
      (("said", '"', "no", '"', "."), "ok"),
    ),
  ),
  (
    "a01-003",
    "000",
    "train",
    (
      (("nominating", "any", "more"), "ok"),
      (("Labour", "life", "Peers"), "err"),
      (("is", "to", "be", "made"), "ok"),
    ),
  ),
  (
    "c04-156",
    "001",
    "validation",
    ((("it's", "a", "meeting"), "ok"), (("of", "Labour", "M", "Ps"), "ok")),
  ),
  (
    "c04-110",
    "001",
    "test",
    ((("the", "caf\xe9", "is", "open"), "ok"), (("Tom", "&", "Jerry"), "ok")),
  ),
  ("z99-999", "001", None, ((("not", "in", "Aachen"), "ok"),)),
)
EMPTY_WORD = "a01-000u-01-01"  # its image file is empty
ERR_LINE = "a01-003-01"
TAGS = itertools.cycle(("AT", "NN", "VB", "IN"))


def _line_text(words):
  return " ".join(words)


def _escape(text):
  return (
    text.replace("&", "&amp;").replace('"', "&quot;").replace("'", "&apos;").replace("<", "&lt;")
  )


def write_iam_fixture(root, *, words_with_components: bool = False):
  """Writes an IAM-format folder at `root`; returns {line id: (x, y, w, h)}."""
  root = pathlib.Path(root)
  for folder in ("formsA-D", "formsI-Z", "lines", "words", "xml", "ascii"):
    (root / folder).mkdir(parents=True, exist_ok=True)
  font = ImageFont.load_default(size=40)
  forms_txt = ["# IAM form list: id writer sentences segmentation lines lines_ok words words_ok"]
  lines_txt = [
    "# a01-000u-00 ok 154 19 408 746 1661 89 A|MOVE|to|stop|Mr.|Gaitskell|from",
    "#  id, result, graylevel, components, bounding box x y w h, transcription",
  ]
  words_txt = [
    "# a01-000u-00-00 ok 154 1 408 768 27 51 AT A",
    "#  id, result, graylevel, number of components, x y w h, tag, transcription",
  ]
  line_boxes = {}
  for form_id, writer, _, lines in FORMS:
    page = Image.new("L", FORM_SIZE, 255)
    draw = ImageDraw.Draw(page)
    draw.text((40, 40), "Sentence Database " + form_id, font=font, fill=0)  # printed part
    xml_lines, crops = [], []
    for line_number, (words, segmentation) in enumerate(lines):
      line_id = f"{form_id}-{line_number:02d}"
      top = FIRST_LINE_TOP + line_number * LINE_PITCH
      x, word_entries, boxes = 60, [], []
      for word_number, word in enumerate(words):
        word_id = f"{line_id}-{word_number:02d}"
        left, t, right, bottom = draw.textbbox((x, top), word, font=font)
        draw.text((x, top), word, font=font, fill=30)
        box = (left, t, right - left, bottom - t)
        boxes.append(box)
        status = "ok" if segmentation == "ok" else "er"
        # An "err" line's last word has no box, as in the download.
        if segmentation == "err" and word_number == len(words) - 1:
          box = (-1, -1, -1, -1)
        shape = f"{box[0]} {box[1]} {box[2]} {box[3]}"
        if words_with_components:
          shape = f"1 {shape}"
        words_txt.append(f"{word_id} {status} 154 {shape} {next(TAGS)} {_escape(word)}")
        word_entries.append((word_id, word, box))
        x = right + 30
      lx = min(b[0] for b in boxes)
      ly = min(b[1] for b in boxes)
      lw = max(b[0] + b[2] for b in boxes) - lx
      lh = max(b[1] + b[3] for b in boxes) - ly
      line_boxes[line_id] = (lx, ly, lw, lh)
      lines_txt.append(
        f"{line_id} {segmentation} 154 {len(words)} {lx} {ly} {lw} {lh} "
        + "|".join(_escape(w) for w in words)
      )
      cmps = "".join(
        f'<word id="{wid}" tag="NN" text="{_escape(w)}">'
        f'<cmp x="{b[0]}" y="{b[1]}" width="{b[2]}" height="{b[3]}"/></word>\n'
        for wid, w, b in word_entries
      )
      xml_lines.append(
        f'<line id="{line_id}" text="{_escape(_line_text(words))}" '
        f'segmentation="{segmentation}" threshold="154" asx="0" asy="0" dsx="0" dsy="0">\n'
        f"{cmps}</line>\n"
      )
      crops.append((line_id, (lx, ly, lw, lh), word_entries))
    folder = "formsA-D" if form_id[0] in "abcd" else "formsI-Z"
    page.save(root / folder / f"{form_id}.png")
    for line_id, (lx, ly, lw, lh), word_entries in crops:
      nested = root / "lines" / form_id.split("-")[0] / form_id
      nested.mkdir(parents=True, exist_ok=True)
      page.crop((lx, ly, lx + lw, ly + lh)).save(nested / f"{line_id}.png")
      nested = root / "words" / form_id.split("-")[0] / form_id
      nested.mkdir(parents=True, exist_ok=True)
      for word_id, _, (wx, wy, ww, wh) in word_entries:
        if ww < 1:
          continue  # no image for a word without a box
        if word_id == EMPTY_WORD:
          (nested / f"{word_id}.png").write_bytes(b"")
          continue
        page.crop((wx, wy, wx + ww, wy + wh)).save(nested / f"{word_id}.png")
    xml = (
      f'<?xml version="1.0" encoding="ISO-8859-1"?>\n'
      f'<form created="2026-01-01" height="{FORM_SIZE[1]}" id="{form_id}" '
      f'width="{FORM_SIZE[0]}" writer-id="{writer}">\n'
      f'<machine-printed-part><machine-print-line text="Sentence Database"/>'
      f"</machine-printed-part>\n<handwritten-part>\n{''.join(xml_lines)}"
      f"</handwritten-part>\n</form>\n"
    )
    (root / "xml" / f"{form_id}.xml").write_bytes(xml.encode("iso-8859-1"))
    num_words = sum(len(w) for w, _ in lines)
    forms_txt.append(f"{form_id} {writer} 2 prt {len(lines)} {len(lines)} {num_words} {num_words}")
  for name, rows in (("forms", forms_txt), ("lines", lines_txt), ("words", words_txt)):
    (root / "ascii" / f"{name}.txt").write_text("\n".join(rows) + "\n", encoding="latin-1")
  return line_boxes


@pytest.fixture(scope="module")
def iam_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("iam")
  write_iam_fixture(root)
  return str(root)


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  """Where the pipeline prepares the fixture's TFDS datasets, once per level."""
  return tmp_path_factory.mktemp("tfds")


def _options(iam_dir, **kwargs):
  return reader.Options(iam_dir=iam_dir, **kwargs)


def _tiny_iam_config(iam_dir, tfds_dir, bank_cache_dir, level="line"):
  from configs import tiny

  config = iam_line.add_iam_fields(tiny.get_config())
  config.data.iam_dir = iam_dir
  config.data.iam_tfds_dir = str(tfds_dir)
  config.data.cache_dir = bank_cache_dir
  config.data.level = level
  config.data.image_height, config.data.image_width = 32, 128
  config.data.word_height = 16
  config.data.charset = default.IAM_CHARSET + "\n"
  config.train.batch_size = 4
  config.eval.batch_size = 4
  return config


# --- Parsing -------------------------------------------------------------------


def test_parses_texts_entities_boxes_and_status(iam_dir):
  forms = {f.id: f for f in reader.parse_forms(iam_dir, need_words=True)}
  assert sorted(forms) == sorted(f[0] for f in FORMS)
  assert forms["a01-000u"].writer == "000" and forms["c04-156"].writer == "001"
  assert forms["a01-000u"].lines[2].text == 'said " no " .'
  assert forms["c04-156"].lines[0].words[0].text == "it's"
  assert forms["c04-110"].lines[0].text == "the caf\xe9 is open"  # Latin-1 decoded
  assert forms["c04-110"].lines[1].text == "Tom & Jerry"
  assert forms["a01-000u"].text == "A MOVE to stop\nMr. Gaitskell from\nsaid \" no \" ."
  err = forms["a01-003"].lines[1]
  assert err.id == ERR_LINE and not err.ok and not err.words[0].ok
  assert err.words[-1].box == (-1, -1, -1, -1)
  line = forms["a01-000u"].lines[0]
  assert line.ok and line.box[1] >= FIRST_LINE_TOP - 10 and line.box[3] > 20


def test_both_words_txt_shapes_parse_alike(tmp_path, iam_dir):
  write_iam_fixture(tmp_path, words_with_components=True)
  plain = reader.parse_words_txt(pathlib.Path(iam_dir) / "ascii" / "words.txt")
  with_components = reader.parse_words_txt(tmp_path / "ascii" / "words.txt")
  assert plain == with_components
  assert plain["a01-000u-02-01"] == (True, plain["a01-000u-02-01"][1], '"')
  assert plain["c04-110-01-01"][2] == "&"


def test_form_crop_is_the_handwritten_part(iam_dir):
  record = next(
    r for r in reader.records(_options(iam_dir, scale=1.0), "form", "train") if r.id == "a01-000u"
  )
  image = reader.load_image(record, scale=1.0)
  lines = record.form.lines
  top = lines[0].box[1] - reader.FORM_CROP_MARGIN
  bottom = lines[-1].box[1] + lines[-1].box[3] + reader.FORM_CROP_MARGIN
  assert image.shape == (bottom - top, FORM_SIZE[0])
  page = np.asarray(Image.open(record.image_path).convert("L"))
  np.testing.assert_array_equal(image, page[top:bottom])
  assert image.min() < 100  # the handwriting is in the crop; the printed header is not
  assert (page[:top] < 100).any() and not (image[:60] < 100).any()
  half = reader.load_image(record)  # default scale 0.5
  assert half.shape == (round(image.shape[0] / 2), FORM_SIZE[0] // 2)


def test_aachen_and_random_splits(iam_dir):
  splits = reader.aachen_split_ids()
  assert [len(splits[s]) for s in reader.SPLITS] == [747, 116, 336]
  aachen = _options(iam_dir)
  ids = {s: {r.form_id for r in reader.records(aachen, "form", s)} for s in reader.SPLITS}
  assert ids == {"train": {"a01-000u", "a01-003"}, "validation": {"c04-156"}, "test": {"c04-110"}}
  lines = {r.id for r in reader.records(aachen, "line", "train")}
  assert ERR_LINE in lines
  skip_err = {r.id for r in reader.records(_options(iam_dir, skip_err=True), "line", "train")}
  assert skip_err == lines - {ERR_LINE}
  words = {r.id for r in reader.records(aachen, "word", "train")}
  assert f"{ERR_LINE}-02" not in words and "a01-000u-00-00" in words  # no box, no word

  random = _options(iam_dir, split="random", split_seed=3, split_fractions=(0.6, 0.2, 0.2))
  parts = [{r.form_id for r in reader.records(random, "form", s)} for s in reader.SPLITS]
  assert sorted(itertools.chain(*parts)) == sorted(f[0] for f in FORMS)
  assert [len(p) for p in parts] == [3, 1, 1]
  again = [{r.form_id for r in reader.records(random, "form", s)} for s in reader.SPLITS]
  assert parts == again


def test_unknown_characters_name_the_record(iam_dir):
  test_lines = reader.records(_options(iam_dir), "line", "test")
  with pytest.raises(ValueError, match="c04-110-00 has characters \\['\xe9'\\].*data.charset"):
    reader.check_record_texts(test_lines, default.IAM_CHARSET, 88, skip_unknown=False)
  kept = reader.check_record_texts(test_lines, default.IAM_CHARSET, 88, skip_unknown=True)
  assert [r.id for r in kept] == ["c04-110-01"]
  with pytest.raises(ValueError, match="c04-110-01.*data.max_len"):
    reader.check_record_texts(kept, default.IAM_CHARSET, 5, skip_unknown=False)


def test_missing_and_malformed_files_are_named(tmp_path):
  write_iam_fixture(tmp_path)
  with pytest.raises(FileNotFoundError, match="data.iam_dir"):
    reader.parse_forms(tmp_path / "nowhere")
  shutil.rmtree(tmp_path / "lines")
  with pytest.raises(FileNotFoundError, match=r"lines"):
    reader.records(_options(str(tmp_path)), "line", "train")
  lines_txt = tmp_path / "ascii" / "lines.txt"
  rows = lines_txt.read_text(encoding="latin-1").splitlines()
  rows[3] = "a01-000u-01 ok 154 three 1 2 3 4 Mr.|Gaitskell|from"
  lines_txt.write_text("\n".join(rows) + "\n", encoding="latin-1")
  with pytest.raises(ValueError, match=r"lines\.txt, line 4: malformed"):
    reader.parse_forms(tmp_path)
  lines_txt.unlink()
  with pytest.raises(FileNotFoundError, match=r"lines\.txt is missing"):
    reader.parse_forms(tmp_path)
  (tmp_path / "xml" / "a01-003.xml").write_text("<form id='a01-003'><handwritten-part>")
  with pytest.raises(ValueError, match=r"a01-003\.xml: not valid XML"):
    reader.parse_form_xml(tmp_path / "xml" / "a01-003.xml", {}, None)


def test_bad_images_are_skipped_and_counted_or_raise(iam_dir):
  words = reader.records(_options(iam_dir), "word", "train")
  empty = next(r for r in words if r.id == EMPTY_WORD)
  skipping = reader.BadImageCounter("skip")
  assert skipping.load(empty, 0.5) is None and skipping.skipped == [EMPTY_WORD]
  with pytest.raises(image_io.BadImageError, match=f"{EMPTY_WORD}.png is empty"):
    reader.BadImageCounter("error").load(empty, 0.5)


def test_word_bank_holds_training_words_only(iam_dir):
  bank = iam_word_bank.build_iam_word_bank(_options(iam_dir), 24, charset=default.IAM_CHARSET)
  train_words = [
    w for f in FORMS if f[2] == "train" for words, seg in f[3] if seg == "ok" for w in words
  ]
  texts = list(bank.texts)
  # Every readable training word, in reading order, and nothing else.
  expected = list(train_words)
  expected.remove("Gaitskell")  # EMPTY_WORD: its image is empty
  assert texts == expected
  assert not {"meeting", "caf\xe9", "Jerry", "Aachen"} & set(texts)
  assert bank.strip.shape[0] == 24 and bank.strip.dtype == np.uint8
  assert len(bank.writer_names) == 2 and bank.strip.max() > 100
  assert list(np.unique(bank.writers)) == [0, 1]


# --- TFDS ----------------------------------------------------------------------


def _build(args, data_dir):
  result = subprocess.run(
    [sys.executable, "-m"] + args + [f"--data_dir={data_dir}"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_tfds_build_command_over_the_fixture(iam_dir, tmp_path):
  args = [
    "input_pipeline/iam/tfds_builder.py",
    "--config=line",
    f"--manual_dir={iam_dir}",
    f"--data_dir={tmp_path}",
  ]
  # The tfds command line itself when apache-beam is installed; TFDS's build
  # command on its own (input_pipeline.tfds_build) otherwise.
  if importlib.util.find_spec("apache_beam") is not None:
    command = [sys.executable, "-m", "tensorflow_datasets.scripts.cli.main", "build"] + args
  else:
    command = [sys.executable, "-m", "input_pipeline.tfds_build"] + args
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  (shard,) = tmp_path.glob("iam_handwriting/line/1.0.0/iam_handwriting-train.tfrecord*")
  assert shard.stat().st_size > 0


def test_tfds_build_and_load_over_the_fixture(iam_dir, tmp_path):
  data_dir = tmp_path / "tfds"
  _build(
    ["input_pipeline.iam.tfds_builder", f"--manual_dir={iam_dir}", "--configs=line,form"], data_dir
  )
  assert list(data_dir.glob("iam_handwriting/line/1.0.0/*.tfrecord*"))
  assert list(data_dir.glob("iam_handwriting/form/1.0.0/*.tfrecord*"))

  import tensorflow_datasets as tfds

  from input_pipeline.iam import tfds_builder  # noqa: F401  (registers the builder)

  kwargs = dict(download_config=tfds.download.DownloadConfig(manual_dir=iam_dir))
  lines = tfds.load(
    "iam_handwriting/line",
    split="train",
    data_dir=str(data_dir),
    download_and_prepare_kwargs=kwargs,
  )
  got = {x["id"].decode(): x for x in tfds.as_numpy(lines)}
  assert sorted(got) == sorted(
    f"{f}-{i:02d}" for f, _, s, ls in FORMS if s == "train" for i in range(len(ls))
  )
  assert got["a01-000u-02"]["text"].decode() == 'said " no " .'
  assert not got[ERR_LINE]["segmentation_ok"] and got["a01-000u-00"]["segmentation_ok"]
  image = got["a01-000u-00"]["image"]
  assert image.dtype == np.uint8 and image.shape[2] == 1 and image.min() < 100

  forms = tfds.load(
    "iam_handwriting/form",
    split="validation",
    data_dir=str(data_dir),
    download_and_prepare_kwargs=kwargs,
  )
  (form,) = list(tfds.as_numpy(forms))
  assert form["text"].decode() == "it's a meeting\nof Labour M Ps"
  words = tfds.load(
    "iam_handwriting/word",
    split="train",
    data_dir=str(data_dir),
    download_and_prepare_kwargs=kwargs,
  )
  word_ids = {x["id"].decode() for x in tfds.as_numpy(words)}
  assert EMPTY_WORD not in word_ids and "a01-000u-00-00" in word_ids  # the empty one skipped


# --- Pipeline and training -----------------------------------------------------


def test_pipeline_batches_from_iam(iam_dir, tfds_dir, bank_cache_dir):
  from fphtr_jax import tokenizer as tokenizer_lib
  from input_pipeline import datasets

  config = _tiny_iam_config(iam_dir, tfds_dir, bank_cache_dir)
  config.data.synthetic_proba = 0.0
  config.eval.num_examples = 100
  train_ds, eval_ds = datasets.create_datasets(config)
  tok = tokenizer_lib.Tokenizer(config.data.charset)
  batches = list(itertools.islice(train_ds.as_numpy_iterator(), 2))
  train_lines = {_line_text(w) for f, _, s, ls in FORMS if s == "train" for w, _ in ls}
  for batch in batches:
    assert batch["image"].shape == (4, 32, 128, 1) and batch["tokens"].shape == (4, 32)
    assert {tok.decode(t) for t in batch["tokens"]} <= train_lines
  # 6 training lines: the first epoch holds each once.
  first_epoch = [tok.decode(t) for b in batches for t in b["tokens"]][:6]
  assert sorted(first_epoch) == sorted(train_lines)

  evals = list(eval_ds.as_numpy_iterator())
  assert len(evals) == 1 and evals[0]["mask"].tolist() == [1, 1, 0, 0]
  assert {tok.decode(t) for t in evals[0]["tokens"][:2]} == {"it's a meeting", "of Labour M Ps"}

  # Resuming at step 1 gives the second batch; two processes share out each batch.
  resumed = next(datasets.create_datasets(config, start_step=1)[0].as_numpy_iterator())
  np.testing.assert_array_equal(resumed["tokens"], batches[1]["tokens"])
  parts = [datasets.create_datasets(config, process_index=i, process_count=2) for i in range(2)]
  train_parts = [next(train.as_numpy_iterator())["tokens"] for train, _ in parts]
  np.testing.assert_array_equal(np.concatenate(train_parts), batches[0]["tokens"])
  eval_parts = [next(ev.as_numpy_iterator()) for _, ev in parts]
  np.testing.assert_array_equal(np.concatenate([e["mask"] for e in eval_parts]), evals[0]["mask"])
  np.testing.assert_array_equal(
    np.concatenate([e["tokens"] for e in eval_parts]), evals[0]["tokens"]
  )

  # Synthetic examples are composed from training words only.
  config.data.synthetic_proba = 1.0
  config.data.words_per_line = (1, 2)
  synthetic = next(datasets.create_datasets(config)[0].as_numpy_iterator())
  train_words = {w for f, _, s, ls in FORMS if s == "train" for ws, _ in ls for w in ws}
  for tokens in synthetic["tokens"]:
    for word in tok.decode(tokens).split(" "):  # punctuation joins the word before it
      assert word in train_words or (word[-1] in PUNCTUATION and word[:-1] in train_words)


def test_bad_image_policy_error_names_the_file(iam_dir, tmp_path, bank_cache_dir):
  from input_pipeline import datasets

  config = _tiny_iam_config(iam_dir, tmp_path, bank_cache_dir, level="word")
  config.data.iam_bad_image = "error"
  with pytest.raises(image_io.BadImageError, match=f"{EMPTY_WORD}.png is empty.*iam_bad_image"):
    datasets.create_datasets(config)


def test_iam_dir_is_required(tmp_path, bank_cache_dir):
  from fphtr_jax import config_validation

  config = _tiny_iam_config(None, tmp_path, bank_cache_dir)
  with pytest.raises(ValueError, match="data.iam_dir"):
    config_validation.validate_config(config)


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory):
  """One persistent XLA cache: the three levels share shapes, so only the first compiles."""
  return str(tmp_path_factory.mktemp("xla_cache"))


@pytest.mark.parametrize("level", ["form", "line", "word"])
@pytest.mark.slow
def test_trains_at_every_level(
  level, iam_dir, tfds_dir, tmp_path, bank_cache_dir, compilation_cache
):
  overrides = {
    "data.iam_dir": iam_dir,
    "data.iam_tfds_dir": tfds_dir,
    "data.cache_dir": bank_cache_dir,
    "data.image_height": 32,
    "data.image_width": 128,
    "data.max_len": 64,
    "data.word_height": 16,
    "data.words_per_form": "(2,6)",
    "data.words_per_line": "(1,3)",
    "data.num_parallel_calls": 1,
    "data.skip_unknown_chars": True,
    "model.encoder_width": 8,
    "model.d_model": 32,
    "model.num_layers": 1,
    "model.num_heads": 2,
    "model.mlp_dim": 64,
    "model.dropout_rate": 0.0,
    "train.num_steps": 2,
    "train.batch_size": 2,
    "train.log_every_steps": 1,
    "train.rng_impl": "unsafe_rbg",
    "eval.every_steps": 2,
    "eval.batch_size": 2,
    "eval.num_examples": 2,
    "eval.num_images": 1,
    "checkpoint.every_steps": 2,
  }
  workdir = tmp_path / "workdir"
  env = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    JAX_COMPILATION_CACHE_DIR=compilation_cache,
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
  )
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "fphtr_jax.main",
      f"--config=configs/iam_{level}.py",
      f"--workdir={workdir}",
    ]
    + [f"--config.{k}={v}" for k, v in overrides.items()],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=400,
    env=env,
  )
  assert result.returncode == 0, result.stderr[-4000:]
  assert "eval/cer" in result.stderr + result.stdout
  assert (workdir / "checkpoints" / "2").is_dir()
  assert f"IAM {level}s:" in result.stderr + result.stdout  # real IAM records were read
