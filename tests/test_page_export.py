"""Lines located from the cross-attention, and predict's PAGE-XML and ALTO output.

The unit tests build attention maps whose tokens look at known cells of the
encoder grid; the end-to-end tests run predict as a user does on images the
test draws, with the tiny trained run of conftest.py, and read the files
back with the PAGE-XML/ALTO reader of input_pipeline.pages.
"""

import json
import os
import subprocess
import sys

from lxml import etree
import numpy as np
from PIL import Image, ImageDraw
import pytest

from fphtr_jax import cli, confidence, inference, line_location, page_export, pixels, predict
from fphtr_jax import tokenizer as tokenizer_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CANVAS = (64, 128)  # a 4 x 8 grid of 16-pixel cells
STRIDE = (16, 16)
TEXT = "ab cd\nef"
# The cell (row, column) each token of TEXT, then <EOS>, looks at: line 1 on grid row 1,
# line 2 on grid row 2.
CELLS = [(1, 1), (1, 2), (1, 3), (1, 4), (1, 5), (1, 6), (2, 2), (2, 3), (2, 4)]


def _transcription(text: str = TEXT) -> confidence.Transcription:
  tokenizer = tokenizer_lib.Tokenizer("abcdef \n")
  tokens = tokenizer.encode(text)  # <SOS> ... <EOS>
  log_probs = np.log(np.linspace(0.9, 0.5, len(tokens)))
  return confidence.transcription(tokenizer, tokens, log_probs)


def _attention(cells=CELLS, grid=(4, 8)) -> np.ndarray:
  """float32 [tokens, S]: each row all on its cell."""
  attention = np.zeros((len(cells), grid[0] * grid[1]), np.float32)
  for row, (r, c) in enumerate(cells):
    attention[row, r * grid[1] + c] = 1.0
  return attention


def _paper(shape=CANVAS) -> np.ndarray:
  return np.asarray(pixels.normalize(np.ones(shape, np.float32)), np.float32)


def _inside(points, width: int, height: int) -> bool:
  return all(0 <= x < width and 0 <= y < height for x, y in points)


# --- Line location -----------------------------------------------------------------------------


def test_peaks_are_the_attended_cells_to_a_fraction_of_a_cell():
  attention = _attention([(1, 1), (3, 7)])
  attention[0] = 0.0
  attention[0, 1 * 8 + 1] = attention[0, 1 * 8 + 2] = 0.5  # half on each of two cells
  peaks = line_location.attention_peaks(attention, (4, 8), STRIDE)
  np.testing.assert_allclose(peaks, [[24.0, 32.0], [56.0, 120.0]])
  with pytest.raises(ValueError, match=r"does not fit a 4 x 8 grid: expected \[tokens, 32\]"):
    line_location.attention_peaks(np.zeros((2, 30)), (4, 8), STRIDE)


def test_lines_from_attention_alone_in_the_original_pixels():
  # The page was shrunk by half onto the canvas (e.g. --scale=0.5): boxes double back.
  lines = line_location.locate_lines(
    _attention(), _transcription(), STRIDE, None, CANVAS, (128, 256), canvas_shape=CANVAS
  )
  assert len(lines) == 2
  # Line 1: characters at x = 24 ... 88 (pitch 16), centred on row 24; one cell row tall,
  # cut at the midpoint to line 2 (row 32). Line 2: x = 40, 56, rows 32 to 48.
  assert lines[0].box == (32, 32, 192, 64)
  assert lines[1].box == (64, 64, 128, 96)
  assert [w.text for w in lines[0].words] == ["ab", "cd"]
  assert [w.box for w in lines[0].words] == [(32, 32, 96, 64), (128, 32, 192, 64)]
  assert [w.char_span for w in lines[0].words] == [(0, 2), (3, 5)]
  for line in lines:
    left, top, right, bottom = line.box
    assert all(left <= x < right and top <= y < bottom for x, y in line.polygon + line.baseline)
    assert line.baseline[0][0] == left and line.baseline[-1][0] == right - 1


def test_the_ink_sets_the_height_and_the_baseline():
  canvas = _paper()
  ink = np.ones(CANVAS, np.float32)
  ink[18:28, 20:91] = 0.0  # the letters' body, rows 18 to 27
  ink[28:31, 30:34] = 0.0  # a descender below it
  canvas = np.asarray(pixels.normalize(ink), np.float32)
  lines = line_location.locate_lines(
    _attention(), _transcription(), STRIDE, canvas, CANVAS, (128, 256)
  )
  # Rows 18 to 30 hold ink; the body ends at row 28 (exclusive); all times 2.
  assert lines[0].box == (32, 36, 192, 62)
  assert {y for _, y in lines[0].baseline} == {55}
  assert lines[1].box == (64, 64, 128, 96)  # no ink there: one cell row


def test_a_canvas_fit_maps_back_and_clips_to_the_image():
  # A 96 x 192 image shrunk to 48 x 96 at the canvas's top-left; line 2's last
  # characters look past the page, onto the blank canvas.
  cells = CELLS[:6] + [(2, 5), (3, 7), (3, 7)]
  lines = line_location.locate_lines(
    _attention(cells), _transcription(), STRIDE, _paper(), (48, 96), (96, 192)
  )
  for line in lines:
    left, top, right, bottom = line.box
    assert 0 <= left < right <= 192 and 0 <= top < bottom <= 96
    assert _inside(line.polygon, 192, 96) and _inside(line.baseline, 192, 96)
  assert lines[0].box[:2] == (32, 32) and lines[0].box[2] == 192  # x = 96 (the page's edge) * 2
  assert lines[1].box[2] == 192 and lines[1].box[3] == 96


def test_lines_without_characters_still_get_a_place():
  transcription = _transcription("ab\n")
  cells = [(1, 1), (1, 2), (1, 3), (2, 0)]  # a, b, "\n", then <EOS> for the empty line
  lines = line_location.locate_lines(
    _attention(cells), transcription, STRIDE, _paper(), CANVAS, CANVAS
  )
  assert [l.words for l in lines][1] == [] and len(lines) == 2
  assert lines[1].box[1] >= lines[0].box[1] and _inside(lines[1].polygon, 128, 64)


def test_words_split_at_single_spaces_and_join_back():
  for text in ["ab cd", " ab", "ab  cd", "ab ", "a", ""]:
    spans = line_location.split_words(text)
    assert " ".join(text[a:b] for a, b in spans) == text
  assert line_location.split_words("ab  cd") == [(0, 2), (3, 6)]
  assert line_location.split_words("") == []


def test_synthetic_eval_pages_give_their_true_line_boxes(tiny_config):
  from input_pipeline.sources import synthetic

  config = tiny_config
  config.data.level = "form"
  config.data.image_height, config.data.image_width = 96, 128
  config.eval.num_examples = 5  # and 3 padding pages in the batch of 8
  plain, boxed = (
    next(
      synthetic.create_eval_dataset(
        config, "validation", process_index=0, process_count=1, line_boxes=line_boxes
      ).as_numpy_iterator()
    )
    for line_boxes in (False, True)
  )
  np.testing.assert_array_equal(plain["image"], boxed["image"])  # the same pages
  np.testing.assert_array_equal(plain["tokens"], boxed["tokens"])
  tokenizer = tokenizer_lib.Tokenizer(config.data.charset)
  texts = tokenizer.decode_batch(boxed["tokens"])
  assert sum(t.count("\n") for t in texts[:5]) > 0  # some pages have several lines
  for image, text, boxes, real in zip(boxed["image"], texts, boxed["line_boxes"], boxed["mask"]):
    boxes = [b for b in boxes.tolist() if b[2] > b[0]]  # (top, left, bottom, right)
    ink = pixels.to_grey(image) < 0.99  # eval pages are not augmented: paper is white
    if not real:
      assert not boxes and not ink.any()
      continue
    assert len(boxes) == text.count("\n") + 1
    inside = np.zeros_like(ink)
    for top, left, bottom, right in boxes:
      assert ink[top:bottom, left:right].any()
      inside[top:bottom, left:right] = True
    assert not (ink & ~inside).any()  # all the ink lies in the lines' boxes
    assert [b[0] for b in boxes] == sorted(b[0] for b in boxes)


# --- The documents -----------------------------------------------------------------------------


def _located():
  transcription = _transcription()
  lines = line_location.locate_lines(
    _attention(), transcription, STRIDE, _paper(), CANVAS, (128, 256)
  )
  return transcription, lines


def test_page_xml_is_valid_and_holds_the_lines(tmp_path):
  transcription, lines = _located()
  tree = page_export.page_xml("page.png", 256, 128, transcription, lines)
  path = tmp_path / "page.xml"
  page_export.write(tree, str(path))
  page_export.validate(str(path), "pagexml")
  schema = etree.XMLSchema(etree.parse(page_export.PAGE_SCHEMA))  # the vendored official XSD
  assert schema.validate(etree.parse(str(path))), schema.error_log
  ns = {"pc": page_export.PAGE_NAMESPACE}
  text_lines = tree.findall(".//pc:TextLine", ns)
  assert [l.findtext("pc:TextEquiv/pc:Unicode", namespaces=ns) for l in text_lines] == [
    "ab cd",
    "ef",
  ]
  confs = [float(l.find("pc:TextEquiv", ns).get("conf")) for l in text_lines]
  assert confs == pytest.approx([l.confidence for l in transcription.lines], abs=1e-4)
  assert tree.find(".//pc:Page", ns).get("imageFilename") == "page.png"
  assert len(text_lines[0].findall("pc:Word", ns)) == 2

  # A broken document is refused, naming what is wrong.
  text_lines[0].find("pc:TextEquiv", ns).set("conf", "1.5")
  with pytest.raises(page_export.InvalidDocument, match="conf"):
    page_export.validate(tree, "pagexml")


def test_alto_is_valid_and_holds_words_and_spaces():
  transcription, lines = _located()
  tree = page_export.alto_xml("page.png", 256, 128, transcription, lines)
  page_export.validate(tree, "alto")
  ns = {"a": page_export.ALTO_NAMESPACE}
  assert tree.findtext(".//a:MeasurementUnit", namespaces=ns) == "pixel"
  assert tree.findtext(".//a:sourceImageInformation/a:fileName", namespaces=ns) == "page.png"
  first = tree.find(".//a:TextLine", ns)
  assert [etree.QName(c).localname for c in first] == ["Shape", "String", "SP", "String"]
  assert [s.get("CONTENT") for s in first.findall("a:String", ns)] == ["ab", "cd"]
  box = tuple(int(first.get(k)) for k in ("HPOS", "VPOS", "WIDTH", "HEIGHT"))
  left, top, right, bottom = lines[0].box
  assert box == (left, top, right - left, bottom - top) and first.get("BASELINE")
  for string in first.findall("a:String", ns):
    assert 0 <= float(string.get("WC")) <= 1

  first.find("a:String", ns).attrib.pop("CONTENT")
  with pytest.raises(page_export.InvalidDocument, match="CONTENT"):
    page_export.validate(tree, "alto")


# --- predict ---------------------------------------------------------------------------------


def _run(*args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  return subprocess.run(
    [sys.executable, "-m", "fphtr_jax.predict", *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )


def _refused(result: subprocess.CompletedProcess, *names: str):
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
  for name in names:
    assert name in result.stderr, (name, result.stderr)


@pytest.fixture
def images(tmp_path):
  """Two drawn pages: one the canvas's size, one twice as large (shrunk to fit)."""
  folder = tmp_path / "scans"
  folder.mkdir()
  for name, size, scale in (("small.png", (128, 32), 1), ("large.png", (256, 80), 2)):
    image = Image.new("L", size, 255)
    draw = ImageDraw.Draw(image)
    draw.text((4 * scale, 6 * scale), "the cat", fill=0, font_size=10 * scale)
    image.save(folder / name)
  return folder


@pytest.mark.slow
def test_output_folder_mistakes_are_one_line_before_the_model(tmp_path, images):
  from configs import tiny

  workdir = tmp_path / "run"  # a run with no checkpoint to load: the checks come first
  (workdir / "checkpoints").mkdir(parents=True)
  (workdir / "config.json").write_text(json.dumps(tiny.get_config().to_dict()))
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  _refused(
    _run(f"--workdir={workdir}", "--format=pagexml", f"--output_dir={blocker}", str(images)),
    f"--output_dir={blocker} is a file",
  )
  # The other checks main makes before loading anything, in-process.
  with pytest.raises(cli.CommandLineError, match="--format=alto writes one file per image"):
    predict.check_output_flags("alto", None)
  with pytest.raises(cli.CommandLineError, match="--output_dir is for --format=pagexml or alto"):
    predict.check_output_flags("json", str(tmp_path))
  predict.check_output_flags("pagexml", str(tmp_path))
  Image.new("L", (8, 8), 255).save(images / "small.jpg")  # small.xml twice
  with pytest.raises(cli.CommandLineError, match=r"small\.jpg and .*small\.png .*small\.xml"):
    predict.check_output_names(predict.list_images([str(images)]))


@pytest.mark.slow
def test_predict_writes_page_xml_and_alto_that_read_back(trained_tiny_workdir, images):
  from input_pipeline.pages import reader

  # What predict prints for these images (its JSON, with the lines' boxes), in-process.
  config = inference.load_config(trained_tiny_workdir)
  run = inference.restore_run(trained_tiny_workdir, config, "latest")
  d = config.data
  paths = predict.list_images([str(images)])
  # As the command line below reads them: prepared, at the automatic scale.
  pages = [
    predict.load_page(p, d.image_height, d.image_width, "auto", word_height=d.word_height)
    for p in paths
  ]
  assert pages[0].original_size != (pages[0].height, pages[0].width)  # large.png was shrunk
  texts, attentions = predict.recognise(run, pages, with_attention=True)
  printed, sizes = {}, {}
  for page, text, attention in zip(pages, texts, attentions):
    out, _ = predict.format_result(
      page.path, text, None, "json", predict.locate(run, page, text, attention)
    )
    name = os.path.basename(page.path)
    printed[name], sizes[name] = json.loads(out), Image.open(page.path).size
    width, height = sizes[name]
    for line in printed[name]["lines"]:
      left, top, right, bottom = line["box"]
      assert 0 <= left < right <= width and 0 <= top < bottom <= height

  for output_format in page_export.FORMATS:
    output_dir = images / output_format  # a subfolder, as Transkribus and OCR-D keep theirs
    result = _run(
      f"--workdir={trained_tiny_workdir}",
      f"--format={output_format}",
      f"--output_dir={output_dir}",
      str(images),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(os.listdir(output_dir)) == ["large.xml", "small.xml"]
    assert result.stdout.split() == [str(output_dir / n) for n in ("large.xml", "small.xml")]
    for name, output in printed.items():
      path = output_dir / (os.path.splitext(name)[0] + ".xml")
      page_export.validate(str(path), output_format)
      page = reader.read_page_file(str(path))
      width, height = sizes[name]
      assert (page.width, page.height) == (width, height)
      assert os.path.samefile(page.image_path, images / name)
      # The reader keeps a line's text with its runs of spaces made one and drops empty lines.
      expected = [reader.normalize_text(l) for l in output["text"].split("\n")]
      assert page.text == "\n".join(l for l in expected if l), (output_format, name)
      for line in page.lines:
        assert line.polygon and _inside(line.polygon, width, height)
        assert len(line.baseline) >= 2 and _inside(line.baseline, width, height)


def test_a_line_that_ends_with_a_space_is_located():
  transcription = _transcription("ab \ncd")
  cells = [(1, 1), (1, 2), (1, 3), (1, 4), (2, 1), (2, 2), (2, 3)]  # a b " " "\n" c d <EOS>
  lines = line_location.locate_lines(
    _attention(cells), transcription, STRIDE, _paper(), CANVAS, CANVAS
  )
  assert len(lines) == 2 and [w.text for w in lines[0].words] == ["ab", ""]
  left, top, right, bottom = lines[0].box
  for word in lines[0].words:  # the empty word after the space: at the line's end
    assert left <= word.box[0] <= word.box[2] <= right
