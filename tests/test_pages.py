"""The pages source: PAGE-XML, ALTO and image + text folders -> records, splits, TFDS, batches.

Every fixture is written here: PAGE-XML in the 2013 and 2019 namespaces (a
ReadingOrder that differs from the document order, polygons, words), ALTO v4
and v2 (SP, HYP, a unit in mm10), image + .txt/.gt.txt pairs, and what real
exports hold: a missing image, a line with no text, a file that is not XML,
an XML file of another kind, coordinates partly and wholly outside the image,
a page with no lines.
"""

import dataclasses
import itertools
import pathlib
import unicodedata

import numpy as np
from PIL import Image, ImageDraw, ImageFont
import pytest

from input_pipeline.pages import reader

PAGE_2013 = "http://schema.primaresearch.org/PAGE/gts/pagecontent/2013-07-15"
PAGE_2019 = "http://schema.primaresearch.org/PAGE/gts/pagecontent/2019-07-15"
INK = 60  # the grey of the fixture pages whose crops are checked pixel by pixel
CAFE_NFD = "Cafe\u0301"  # "Café" with a combining accent


def _points(points) -> str:
  return " ".join(f"{x},{y}" for x, y in points)


def _box(left, top, right, bottom):
  return ((left, top), (right, top), (right, bottom), (left, bottom))


def page_xml(namespace, image, size, regions, order=None) -> str:
  """A PcGts document. regions: [(id, [line dict])]; a line: id, points, text, words, baseline."""
  body = []
  for region_id, lines in regions:
    body.append(f'<TextRegion id="{region_id}"><Coords points="0,0 1,0 1,1"/>')
    for line in lines:
      body.append(f'<TextLine id="{line["id"]}">')
      if line.get("points") is not None:
        body.append(f'<Coords points="{line["points"]}"/>')
      if line.get("baseline"):
        body.append(f'<Baseline points="{_points(line["baseline"])}"/>')
      for word_id, points, text in line.get("words", ()):
        body.append(
          f'<Word id="{word_id}"><Coords points="{_points(points)}"/>'
          f"<TextEquiv><Unicode>{text}</Unicode></TextEquiv></Word>"
        )
      for index, text in line.get("equivs", ()):
        body.append(f'<TextEquiv index="{index}"><Unicode>{text}</Unicode></TextEquiv>')
      if line.get("text") is not None:
        body.append(f"<TextEquiv><Unicode>{line['text']}</Unicode></TextEquiv>")
      body.append("</TextLine>")
    body.append("</TextRegion>")
  reading_order = ""
  if order:
    # Written last index first: the reader sorts by @index.
    refs = "".join(
      f'<RegionRefIndexed index="{i}" regionRef="{r}"/>'
      for i, r in reversed(list(enumerate(order)))
    )
    reading_order = f'<ReadingOrder><OrderedGroup id="ro">{refs}</OrderedGroup></ReadingOrder>'
  return (
    f'<?xml version="1.0" encoding="UTF-8"?>\n<PcGts xmlns="{namespace}"><Metadata/>'
    f'<Page imageFilename="{image}" imageWidth="{size[0]}" imageHeight="{size[1]}">'
    f"{reading_order}{''.join(body)}</Page></PcGts>\n"
  )


def _flat_page(path, size=(400, 300)):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.new("L", size, INK).save(path)


DIAMOND = ((50, 100), (150, 60), (250, 100), (150, 140))
PARTLY_OUTSIDE = _box(-20, 200, 60, 230)
WHOLLY_OUTSIDE = _box(500, 10, 600, 40)


def write_messy_export(root: pathlib.Path) -> pathlib.Path:
  """A folder of every format and of the faults of real exports."""
  root.mkdir(parents=True, exist_ok=True)
  # PAGE 2019: region r2 is first in the reading order, second in the document.
  _flat_page(root / "p2019.png")
  regions = [
    (
      "r1",
      [
        dict(
          id="l1",
          points=_points(DIAMOND),
          baseline=((50, 120), (250, 120)),
          equivs=((2, "not this one"), (1, "Hello \t  world ")),
        ),
        dict(
          id="l2",
          points=_points(_box(10, 150, 200, 190)),
          words=(("w1", _box(10, 150, 60, 190), "foo"), ("w2", _box(80, 150, 160, 190), "bar")),
        ),
        dict(id="l_empty", points=_points(_box(10, 10, 50, 30)), text="  "),
        dict(id="l_edge", points=_points(PARTLY_OUTSIDE), text="edge"),
        dict(id="l_away", points=_points(WHOLLY_OUTSIDE), text="away"),
        dict(id="l_bad", points="10,10 20", text="bad coords"),
        dict(id="l_none", points="", text="no coords"),
      ],
    ),
    ("r2", [dict(id="l0", points=_points(_box(10, 240, 300, 280)), text="First line")]),
  ]
  (root / "p2019.xml").write_text(
    page_xml(PAGE_2019, "p2019.png", (400, 300), regions, order=["r2", "r1"])
  )
  # PAGE 2013 in a page/ subfolder, its image in the folder above (Transkribus).
  _flat_page(root / "book" / "p2013.jpg")
  (root / "book" / "page").mkdir(parents=True)
  (root / "book" / "page" / "p2013.xml").write_text(
    page_xml(
      PAGE_2013,
      "p2013.jpg",
      (400, 300),
      [("r", [dict(id="t1", points=_points(_box(5, 5, 200, 40)), text=f"{CAFE_NFD}  au lait")])],
    )
  )
  # ALTO v4 in pixels: a polygon, SP between Strings.
  _flat_page(root / "alto4.png")
  (root / "alto4.xml").write_text(
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<alto xmlns="http://www.loc.gov/standards/alto/ns-v4#"><Description>'
    "<MeasurementUnit>pixel</MeasurementUnit><sourceImageInformation>"
    "<fileName>alto4.png</fileName></sourceImageInformation></Description>"
    '<Layout><Page ID="p" WIDTH="400" HEIGHT="300"><PrintSpace><TextBlock ID="b">'
    '<TextLine ID="a1" HPOS="20" VPOS="30" WIDTH="200" HEIGHT="40" BASELINE="20,60 220,60">'
    '<Shape><Polygon POINTS="20 30 220 30 220 70 20 70"/></Shape>'
    '<String ID="s1" CONTENT="big" HPOS="20" VPOS="30" WIDTH="60" HEIGHT="40"/>'
    '<SP WIDTH="10"/><String ID="s2" CONTENT="bad" HPOS="90" VPOS="30" WIDTH="80" HEIGHT="40"/>'
    "</TextLine></TextBlock></PrintSpace></Page></Layout></alto>\n"
  )
  # ALTO v2 in mm10 (400 x 300 px = 1016 x 762 mm10): HYP, Strings with no SP between.
  _flat_page(root / "scans" / "alto2.tif")
  (root / "alto2.xml").write_text(
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<alto xmlns="http://www.loc.gov/standards/alto/ns-v2#"><Description>'
    "<MeasurementUnit>mm10</MeasurementUnit><sourceImageInformation>"
    "<fileName>scans/alto2.tif</fileName></sourceImageInformation></Description>"
    '<Layout><Page ID="p" WIDTH="1016" HEIGHT="762"><PrintSpace><TextBlock ID="b">'
    '<TextLine ID="v1" HPOS="254" VPOS="254" WIDTH="508" HEIGHT="127" BASELINE="360">'
    '<String CONTENT="an" HPOS="254" VPOS="254" WIDTH="100" HEIGHT="127"/>'
    '<String CONTENT="exam" HPOS="380" VPOS="254" WIDTH="200" HEIGHT="127"/><HYP CONTENT="-"/>'
    "</TextLine>"
    '<TextLine ID="v2" HPOS="254" VPOS="400" WIDTH="508" HEIGHT="127">'
    '<String CONTENT="x"/><SP/><String CONTENT="y"/></TextLine>'
    "</TextBlock></PrintSpace></Page></Layout></alto>\n"
  )
  # Image + text pairs.
  _flat_page(root / "pairs" / "two.png", (120, 60))
  (root / "pairs" / "two.gt.txt").write_text("one line\n\nanother  line\n", encoding="utf-8")
  _flat_page(root / "pairs" / "one.jpeg", (120, 30))
  (root / "pairs" / "one.txt").write_text("\ufeffsingle\n", encoding="utf-8")
  # The faults.
  (root / "missing.xml").write_text(
    page_xml(
      PAGE_2019, "nowhere.png", (10, 10), [("r", [dict(id="m1", points="1,1 5,5", text="x")])]
    )
  )
  (root / "broken.xml").write_text("this is not XML <at all")
  (root / "other.xml").write_text('<?xml version="1.0"?><doc xmlns="urn:other"><p>hi</p></doc>')
  _flat_page(root / "empty.png")
  (root / "empty.xml").write_text(page_xml(PAGE_2019, "empty.png", (400, 300), [("r", [])]))
  (root / "mets.xml").write_text('<mets:mets xmlns:mets="http://www.loc.gov/METS/"/>')
  return root


@pytest.fixture(scope="module")
def messy_dir(tmp_path_factory):
  return write_messy_export(tmp_path_factory.mktemp("messy"))


def _read(path, level="form", **kwargs):
  skipped = reader.Skipped()
  page = reader.read_page_file(path, reader.Options(level=level, **kwargs), skipped)
  return page, skipped


# --- Formats -------------------------------------------------------------------


def test_page_xml_texts_reading_order_and_skipped_lines(messy_dir):
  page, skipped = _read(messy_dir / "p2019.xml")
  assert page.id == "p2019" and page.image_path == str(messy_dir / "p2019.png")
  assert (page.width, page.height) == (400, 300)
  # r2 first (ReadingOrder), then r1's lines in document order; the lowest @index
  # TextEquiv; Words' texts when the line has none; whitespace collapsed.
  assert [line.id for line in page.lines] == [
    "l0", "l1", "l2", "l_edge", "l_away", "l_bad", "l_none"
  ]  # fmt: skip
  assert page.text.split("\n")[:3] == ["First line", "Hello world", "foo bar"]
  assert page.lines[1].polygon == DIAMOND and page.lines[1].baseline == ((50, 120), (250, 120))
  assert [w.text for w in page.lines[2].words] == ["foo", "bar"]
  # Form level needs no coordinates: only the line with no text is left out.
  assert skipped.records == [f"{messy_dir / 'p2019.xml'}, line l_empty: the line has no text"]

  lines, skipped = _read(messy_dir / "p2019.xml", level="line")
  assert [line.id for line in lines.lines] == ["l0", "l1", "l2", "l_edge"]
  reasons = {r.split(": ", 1)[0].rsplit(" ", 1)[1]: r.split(": ", 1)[1] for r in skipped.records}
  assert set(reasons) == {"l_empty", "l_away", "l_bad", "l_none"} and skipped.count == 4
  assert "wholly outside the image (400x300)" in reasons["l_away"]
  assert "malformed coordinates '10,10 20'" in reasons["l_bad"]
  assert reasons["l_none"] == "no coordinates"


def test_page_2013_image_beside_or_above_and_normalisation(messy_dir):
  path = messy_dir / "book" / "page" / "p2013.xml"
  page, _ = _read(path)
  assert page.image_path == str(messy_dir / "book" / "p2013.jpg")
  assert page.text == "Caf\xe9 au lait"  # NFC by default, runs of spaces one space
  assert _read(path, unicode_normalization="NFD")[0].text == unicodedata.normalize(
    "NFD", "Caf\xe9 au lait"
  )
  assert _read(path, unicode_normalization="none")[0].text == f"{CAFE_NFD} au lait"
  assert reader.normalize_text(" a \u00a0 b\n c ", "none") == "a b c"


def test_alto_v4_and_v2_texts_units_and_words(messy_dir, tmp_path):
  alto4, _ = _read(messy_dir / "alto4.xml")
  (line,) = alto4.lines
  assert line.text == "big bad" and line.polygon == _box(20, 30, 220, 70)
  assert line.baseline == ((20, 60), (220, 60))
  assert [(w.text, w.polygon) for w in line.words] == [
    ("big", _box(20, 30, 79, 69)),
    ("bad", _box(90, 30, 169, 69)),
  ]
  alto2, skipped = _read(messy_dir / "alto2.xml")
  assert alto2.image_path == str(messy_dir / "scans" / "alto2.tif")
  assert (alto2.width, alto2.height) == (400, 300)  # mm10 converted by the image's size
  assert alto2.text == "an exam-\nx y"
  # 254 mm10 = 1 inch = 100 px here; the box is [100, 300) x [100, 150).
  assert alto2.lines[0].polygon == _box(100, 100, 299, 149)
  assert alto2.lines[0].baseline == ((100, 142), (300, 142))
  assert skipped.count == 0
  # Without the image, mm10 cannot be converted: the error says so.
  (tmp_path / "alto2.xml").write_bytes((messy_dir / "alto2.xml").read_bytes())
  with pytest.raises(reader.PageFileError, match=r"alto2\.xml: its coordinates are in mm10"):
    reader.read_page_file(tmp_path / "alto2.xml")


def test_text_pairs(messy_dir):
  pages, _ = reader.read_folder(str(messy_dir / "pairs"), reader.Options())
  two, one = sorted(pages, key=lambda p: p.id, reverse=True)
  assert two.id == "two" and two.text == "one line\nanother line" and two.source.endswith(".gt.txt")
  assert (two.width, two.height) == (120, 60) and all(not l.polygon for l in two.lines)
  assert one.text == "single"
  # Line level: only the one-line pair gives a line, the whole image.
  (record,) = reader.records(pages, "line")
  assert record.id == "one/1" and record.polygon == ()
  image = reader.RecordImages(reader.Options(), reader.Skipped()).load(record)
  assert image.shape == (30, 120)


def test_read_folder_skips_and_counts_bad_records(messy_dir):
  pages, skipped = reader.read_folder(str(messy_dir), reader.Options(level="line"))
  assert [p.id for p in pages] == ["alto2", "alto4", "one", "p2013", "p2019", "two"]
  assert skipped.page_ids == {"missing", "broken", "other", "empty"}
  joined = "\n".join(skipped.records)
  assert f"{messy_dir / 'missing.xml'}: its image {messy_dir / 'nowhere.png'} is missing" in joined
  assert f"{messy_dir / 'broken.xml'} is not XML" in joined
  assert f"{messy_dir / 'other.xml'}: the root element '{{urn:other}}doc'" in joined
  assert f"{messy_dir / 'empty.xml'}: the page has no line with text" in joined
  assert skipped.count == 4 + 4  # the pages above and p2019's four lines
  assert "mets" not in joined  # a document's METS file is passed over


def test_error_mode_names_the_file_and_line(tmp_path):
  write_messy_export(tmp_path / "all")
  options = reader.Options(bad_record="error", level="line")
  with pytest.raises(ValueError, match=r"p2019\.xml, line l_empty: the line has no text\. Fix"):
    reader.read_page_file(tmp_path / "all" / "p2019.xml", options)
  faults = {
    "missing.xml": r"missing\.xml: its image .*nowhere\.png is missing\. Fix",
    "broken.xml": r"broken\.xml is not XML .*\. Fix it, or set data\.pages_bad_record='skip'",
    "empty.xml": r"empty\.xml: the page has no line with text\. Fix",
  }
  for name, message in faults.items():
    (tmp_path / name).mkdir()
    for path in (tmp_path / "all").glob(name.replace(".xml", ".*")):
      (tmp_path / name / path.name).write_bytes(path.read_bytes())
    with pytest.raises(ValueError, match=message):
      reader.read_folder(str(tmp_path / name), options)
  (tmp_path / "dup").mkdir()
  for name in ("a/x.xml", "b/x.xml"):
    (tmp_path / "dup" / name).parent.mkdir()
    (tmp_path / "dup" / name).write_text((tmp_path / "all" / "alto4.xml").read_text())
  with pytest.raises(ValueError, match=r"same page id 'x'"):
    reader.read_folder(str(tmp_path / "dup"), reader.Options())


# --- Crops ---------------------------------------------------------------------


def test_line_crops_cut_the_polygon_and_clip_to_the_image(messy_dir):
  pages, _ = reader.read_folder(str(messy_dir), reader.Options(level="line"))
  records = {r.id: r for r in reader.records(pages, "line")}
  images = reader.RecordImages(reader.Options(), reader.Skipped())
  diamond = images.load(records["p2019/l1"])
  assert diamond.shape == (140 - 60 + 1, 250 - 50 + 1)  # the polygon's bounding box
  assert diamond[0, 0] == diamond[0, -1] == diamond[-1, 0] == diamond[-1, -1] == reader.PAPER
  assert diamond[40, 100] == INK and (diamond == reader.PAPER).mean() > 0.4
  edge = images.load(records["p2019/l_edge"])  # x from -20: clipped at 0
  assert edge.shape == (31, 61) and (edge == INK).all()
  half = reader.RecordImages(reader.Options(scale=0.5), reader.Skipped()).load(
    records["p2019/l_edge"]
  )
  assert half.shape == (16, 30)
  alto = images.load(records["alto2/v1"])
  assert alto.shape == (50, 200) and (alto == INK).all()


def test_word_records_and_crops(messy_dir):
  pages, _ = reader.read_folder(str(messy_dir), reader.Options(level="word"))
  records = reader.records(pages, "word")
  assert [(r.id, r.text) for r in records] == [
    ("alto2/v1/v1_w0", "an"),
    ("alto2/v1/v1_w1", "exam"),
    ("alto4/a1/s1", "big"),
    ("alto4/a1/s2", "bad"),
    ("p2019/l2/w1", "foo"),
    ("p2019/l2/w2", "bar"),
  ]
  images = reader.RecordImages(reader.Options(), reader.Skipped())
  assert images.load(records[4]).shape == (41, 51)
  # "exam": HPOS 380 WIDTH 200 VPOS 254 HEIGHT 127 mm10 = [150, 228) x [100, 150) px.
  assert images.load(records[1]).shape == (50, 78)


# --- Splits and vocabulary ----------------------------------------------------------

WORDS = ("alpha", "beta", "gamma", "delta", "omega", "kappa", "sigma", "theta", "zeta")


def write_clean_export(root: pathlib.Path, num_pages: int = 10) -> dict[str, list[str]]:
  """num_pages PAGE-XML pages of two handwritten-looking lines each; returns {id: lines}."""
  root.mkdir(parents=True, exist_ok=True)
  font = ImageFont.load_default(size=18)
  texts, words = {}, itertools.cycle(WORDS)
  for n in range(num_pages):
    page_id = f"page{n:02d}"
    image = Image.new("RGB", (260, 90), "white")  # colour: made grey when read
    draw = ImageDraw.Draw(image)
    lines = []
    for i in range(2):
      top, x, entries = 10 + 40 * i, 8, []
      for _ in range(2):
        word = next(words) + ("\xe9" if n == 9 and i == 1 else "")
        left, t, right, bottom = draw.textbbox((x, top), word, font=font)
        draw.text((x, top), word, font=font, fill=(20, 20, 20))
        entries.append((f"w{len(entries)}", _box(left, t, right, bottom), word))
        x = right + 14
      lines.append(
        dict(
          id=f"l{i}",
          points=_points(_box(4, top - 4, x, top + 30)),
          baseline=((4, top + 18), (x, top + 18)),
          words=tuple(entries),
        )
      )
    image.save(root / f"{page_id}.png")
    (root / f"{page_id}.xml").write_text(
      page_xml(PAGE_2019, f"{page_id}.png", (260, 90), [("r", lines)])
    )
    texts[page_id] = [" ".join(w for _, _, w in line["words"]) for line in lines]
  return texts


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
  root = tmp_path_factory.mktemp("clean")
  texts = write_clean_export(root / "pages")
  splits = root / "splits"
  splits.mkdir()
  (splits / "train.txt").write_text("# training pages\n" + "\n".join(sorted(texts)[:6]) + "\n")
  (splits / "validation.txt").write_text("page06  # the first\npage07\n")
  (splits / "test.txt").write_text("page08\npage09\n")
  return root, texts


def test_split_lists_and_their_errors(clean, tmp_path):
  root, texts = clean
  options = reader.Options(pages_dir=str(root / "pages"), split_dir=str(root / "splits"))
  ids = reader.split_ids(options, list(texts))
  assert ids["train"] == frozenset(sorted(texts)[:6])
  assert ids["validation"] == {"page06", "page07"} and ids["test"] == {"page08", "page09"}
  bad = tmp_path / "bad"
  bad.mkdir()
  for split in reader.SPLITS:
    (bad / f"{split}.txt").write_text((root / "splits" / f"{split}.txt").read_text())
  (bad / "test.txt").write_text("page08\npage99\n")
  with pytest.raises(ValueError, match=r"test\.txt, line 2: page id 'page99' is not in"):
    reader.split_ids(dataclasses.replace(options, split_dir=str(bad)), list(texts))
  (bad / "test.txt").write_text("page08\npage07\n")
  with pytest.raises(ValueError, match=r"test\.txt, line 2: page 'page07' is also listed in"):
    reader.split_ids(dataclasses.replace(options, split_dir=str(bad)), list(texts))
  (bad / "test.txt").unlink()
  with pytest.raises(FileNotFoundError, match=r"test\.txt is missing"):
    reader.split_ids(dataclasses.replace(options, split_dir=str(bad)), list(texts))


def test_random_split_is_seeded_disjoint_and_by_page(clean):
  root, texts = clean
  options = reader.Options(pages_dir=str(root / "pages"), level="line", split_seed=5)
  pages, skipped = reader.read_folder(options.pages_dir, options)
  ids = reader.split_ids(options, reader.all_page_ids(pages, skipped))
  assert [len(ids[s]) for s in reader.SPLITS] == [8, 1, 1]
  assert set().union(*ids.values()) == set(texts)
  assert not (ids["train"] & ids["validation"]) and not (ids["train"] & ids["test"])
  assert ids == reader.split_ids(options, reader.all_page_ids(pages, skipped))
  other = reader.split_ids(dataclasses.replace(options, split_seed=6), list(texts))
  assert other != ids
  # Every line of a page lands where its page does.
  for split in reader.SPLITS:
    assert {r.page_id for r in reader.records(pages, "line", ids[split])} == ids[split]


def test_train_limit_keeps_the_first_training_pages_only(clean):
  root, texts = clean
  options = reader.Options(pages_dir=str(root / "pages"), level="line", split_seed=5)
  whole = reader.split_ids(options, list(texts))
  three = reader.split_ids(dataclasses.replace(options, train_limit=3), list(texts))
  one = reader.split_ids(dataclasses.replace(options, train_limit=1), list(texts))
  assert three["train"] == frozenset(sorted(whole["train"])[:3])
  assert one["train"] < three["train"]  # a smaller limit's pages are among a larger one's
  assert three["validation"] == whole["validation"] and three["test"] == whole["test"]
  # More than there are: all of them.
  assert reader.split_ids(dataclasses.replace(options, train_limit=99), list(texts)) == whole
  with pytest.raises(ValueError, match="pages_train_limit=0"):
    reader.check_options(dataclasses.replace(options, train_limit=0))


def test_charset_auto_and_characters_outside_it(clean):
  root, texts = clean
  options = reader.Options(
    pages_dir=str(root / "pages"), level="line", split_dir=str(root / "splits")
  )
  pages, skipped = reader.read_folder(options.pages_dir, options)
  charset = reader.training_charset(pages, skipped, options)
  train_text = "".join(t for p in sorted(texts)[:6] for t in texts[p])
  assert charset == "".join(sorted(set(train_text) | {" "}))
  assert "\n" not in charset
  form = reader.training_charset(pages, skipped, dataclasses.replace(options, level="form"))
  assert form == "".join(sorted(set(charset) | {"\n"}))
  # page09's second line has an é the training split never writes.
  test = reader.records(pages, "line", {"page09"})
  counted = reader.Skipped()
  kept = reader.check_record_texts(test, charset, 100, counted)
  assert [r.id for r in kept] == ["page09/l0"] and counted.count == 1
  assert counted.records[0].startswith(f"{root / 'pages' / 'page09.xml'}, line l1: characters")
  forms = reader.records(pages, "form", {"page09"})
  with pytest.raises(ValueError, match=r"page09\.xml, line l1: characters \['\xe9'\]"):
    reader.check_record_texts(forms, charset, 100, reader.Skipped("error"))
  with pytest.raises(ValueError, match=r"page09\.xml, line l0: .* more than data\.max_len - 2"):
    reader.check_record_texts(test, None, 5, reader.Skipped("error"))


# --- TFDS and the pipeline -------------------------------------------------------


def test_tfds_load_of_the_builder(clean, tmp_path):
  import tensorflow_datasets as tfds

  from input_pipeline.pages import tfds_builder  # noqa: F401  (registers the builder)

  root, texts = clean
  pages_dir = str(root / "pages")
  ds = tfds.load(
    "pages_dataset/line",
    split="validation",
    data_dir=str(tmp_path),
    download_and_prepare_kwargs=dict(
      download_config=tfds.download.DownloadConfig(manual_dir=pages_dir)
    ),
  )
  got = {x["id"].decode(): x for x in tfds.as_numpy(ds)}
  # The named config: the default options, a random split by page with seed 0.
  (page_id,) = reader.split_ids(reader.Options(pages_dir=pages_dir), list(texts))["validation"]
  assert sorted(got) == [f"{page_id}/l0", f"{page_id}/l1"]
  assert [got[f"{page_id}/l{i}"]["text"].decode() for i in (0, 1)] == texts[page_id]
  image = got[f"{page_id}/l0"]["image"]
  assert image.dtype == np.uint8 and image.shape[2] == 1 and image.min() < 100
  assert image.shape[0] == 35  # the line's polygon: top - 4 .. top + 30


def _pages_config(tiny_config, pages_dir, tfds_dir, **data):
  config = tiny_config
  config.data.source = "pages"
  config.data.pages_dir = str(pages_dir)
  config.data.pages_tfds_dir = str(tfds_dir)
  config.data.charset = "auto"
  config.train.batch_size = 4
  config.eval.batch_size = 4
  for key, value in data.items():
    config.data[key] = value
  return config


def test_create_datasets_batches_from_pages(clean, tmp_path, tiny_config):
  from fphtr_jax import config_validation
  from fphtr_jax import tokenizer as tokenizer_lib
  from input_pipeline import datasets

  root, texts = clean
  config = _pages_config(
    tiny_config, root / "pages", tmp_path, pages_split_dir=str(root / "splits")
  )
  config_validation.validate_config(config)
  train_ds, eval_ds = datasets.create_datasets(config)
  train_lines = {t for p in sorted(texts)[:6] for t in texts[p]}
  assert config.data.charset == "".join(sorted(set("".join(train_lines)) | {" "}))
  tok = tokenizer_lib.Tokenizer(config.data.charset)
  batches = list(itertools.islice(train_ds.as_numpy_iterator(), 3))
  for batch in batches:
    assert batch["image"].shape == (4, 32, 128, 1) and batch["tokens"].shape == (4, 32)
    assert batch["image"].dtype == np.float32 and batch["mask"].tolist() == [1, 1, 1, 1]
  # 12 training lines: the first epoch holds each once.
  first_epoch = [tok.decode(t) for b in batches for t in b["tokens"]]
  assert sorted(first_epoch) == sorted(t for p in sorted(texts)[:6] for t in texts[p])
  (evals,) = list(eval_ds.as_numpy_iterator())
  assert evals["mask"].tolist() == [1, 1, 1, 1]
  assert {tok.decode(t) for t in evals["tokens"]} == set(texts["page06"] + texts["page07"])
  resumed = next(datasets.create_datasets(config, start_step=1)[0].as_numpy_iterator())
  np.testing.assert_array_equal(resumed["tokens"], batches[1]["tokens"])
  # Two processes share out each batch.
  parts = [datasets.create_datasets(config, process_index=i, process_count=2) for i in range(2)]
  train_parts = [next(train.as_numpy_iterator())["tokens"] for train, _ in parts]
  np.testing.assert_array_equal(np.concatenate(train_parts), batches[0]["tokens"])
  eval_parts = [next(ev.as_numpy_iterator())["tokens"] for _, ev in parts]
  np.testing.assert_array_equal(np.concatenate(eval_parts), evals["tokens"])

  # Synthetic lines are composed from the training pages' word crops.
  config.data.synthetic_proba = 1.0
  config.data.words_per_line = (1, 2)
  synthetic = next(datasets.create_datasets(config)[0].as_numpy_iterator())
  train_words = {w for line in train_lines for w in line.split(" ")}
  for tokens in synthetic["tokens"]:
    assert set(tok.decode(tokens).split(" ")) <= train_words


def test_pages_word_bank_holds_training_words_only(clean):
  from input_pipeline.pages import word_bank

  root, texts = clean
  options = reader.Options(pages_dir=str(root / "pages"), split_dir=str(root / "splits"))
  pages, skipped = reader.read_folder(options.pages_dir, options)
  bank = word_bank.build_pages_word_bank(pages, skipped, options, 24, "".join(WORDS) + "\xe9 ")
  expected = [w for p in sorted(texts)[:6] for line in texts[p] for w in line.split(" ")]
  assert list(bank.texts) == expected
  assert bank.strip.shape[0] == 24 and bank.strip.max() > 100  # ink
  assert bank.writer_names == tuple(sorted(texts)[:6])


def test_config_checks_name_the_field(tiny_config, tmp_path):
  from fphtr_jax import config_validation

  config = _pages_config(tiny_config, tmp_path, tmp_path)
  config.data.pages_dir = None
  with pytest.raises(ValueError, match="data.pages_dir"):
    config_validation.validate_config(config)
  config.data.pages_dir = str(tmp_path)
  config.data.pages_bad_record = "ignore"
  with pytest.raises(ValueError, match="data.pages_bad_record='ignore'"):
    config_validation.validate_config(config)
  config.data.pages_bad_record = "skip"
  config.data.source = "embedded"
  with pytest.raises(ValueError, match="data.charset='auto'.*data.source='pages'"):
    config_validation.validate_config(config)
