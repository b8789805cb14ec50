"""Folders of transcribed pages: PAGE-XML, ALTO, image + text pairs -> pages, records, splits.

What transcription tools export (Transkribus, eScriptorium, OCR-D, Kraken,
library ALTO), read into one shape: a `Page` per file with its `Line`s in
reading order, and their `Word`s where the file has them. A folder is read
recursively (`read_folder`):

  NAME.xml                       PAGE-XML (2013-07-15 to 2019-07-15) or ALTO v2/v3/v4,
                                 told apart by the root element's namespace
  NAME.png|jpg|jpeg|tif|tiff     an image with NAME.gt.txt or NAME.txt beside it:
    + NAME.gt.txt | NAME.txt     one line of text per line of the page

An XML file's image is the one it names (`Page@imageFilename`, ALTO's
`sourceImageInformation/fileName`), looked up beside the XML file and in the
folder above it (Transkribus and OCR-D keep the XML in a subfolder), else an
image with the XML's stem beside it. Page ids are the file stems and must be
unique in the folder.

What a real export holds and a model must not train on is named (file, line
id) and left out with a count, or raised, as `Options.bad_record` says: a
missing image, a file that is not XML, an XML file of another kind, a line
with no text, a line with no usable coordinates (line and word level) or
lying wholly outside the image, a page with no lines, a character outside
data.charset. XML files that describe a document rather than a page (METS,
Transkribus's metadata.xml) are passed over.
"""

import dataclasses
import hashlib
import math
import os
import pathlib
import re
import unicodedata

from absl import logging
from lxml import etree
import numpy as np
from PIL import Image, ImageDraw

from input_pipeline import image_io
from input_pipeline.iam import reader as iam_reader

LEVELS = ("word", "line", "form")
SPLITS = iam_reader.SPLITS
BAD_RECORD_POLICIES = ("skip", "error")
NORMALIZATIONS = ("none", "NFC", "NFD")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
TEXT_SUFFIXES = (".gt.txt", ".txt")  # in this order: a .gt.txt wins
PAPER = 255  # what line and word crops hold outside their polygon

_PAGE = "http://schema.primaresearch.org/PAGE/gts/pagecontent/"
# 2013-07-15 and 2019-07-15 are what the tools write; the versions between
# them lay out Pages, regions, lines and Coords@points the same way.
PAGE_NAMESPACES = tuple(
  _PAGE + d for d in ("2013-07-15", "2016-07-15", "2017-07-15", "2018-07-15", "2019-07-15")
)
ALTO_NAMESPACES = tuple(f"http://www.loc.gov/standards/alto/ns-v{v}#" for v in (2, 3, 4))
_ALTO_V1 = "http://schema.ccs-gmbh.com/ALTO"
# Root elements of XML files that describe a document, not a page.
_NOT_PAGES = frozenset(("{http://www.loc.gov/METS/}mets", "trpDocMetadata"))
# ALTO's MeasurementUnit -> how many of it make an inch.
_ALTO_UNITS_PER_INCH = {"mm10": 254.0, "inch1200": 1200.0}
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)

Points = tuple[tuple[int, int], ...]


@dataclasses.dataclass(frozen=True)
class Options:
  """The `config.data` fields that shape the pages' records (data.pages_*, see configs/default.py).

  The defaults are those of configs/default.py: the TFDS builder's named
  configs (`tfds_builder.builder_config`) are prepared with them.
  """

  pages_dir: str = ""
  level: str = "form"  # which coordinates must be usable: lines' (line), words' (word)
  scale: float = 1.0
  split_dir: str | None = None
  split_seed: int = 0
  split_fractions: tuple = (0.8, 0.1, 0.1)  # train, validation, test; random split only
  unicode_normalization: str = "NFC"  # none | NFC | NFD
  bad_record: str = "skip"  # skip | error
  max_pixels: int = image_io.DEFAULT_MAX_PIXELS
  # The first N training pages (by id) only; None = all. Not part of the prepared
  # dataset, which always holds whole splits.
  train_limit: int | None = None


def options_from_config(data_config) -> Options:
  """Reads and checks the data.pages_* fields; data.pages_dir is required."""
  pages_dir = data_config.pages_dir
  if not pages_dir:
    raise ValueError(
      "data.pages_dir is required with data.source='pages': the folder of your exported "
      "pages (PAGE-XML, ALTO, or images with .txt/.gt.txt), e.g. "
      "--config.data.pages_dir=~/data/my_export."
    )
  split_dir = data_config.pages_split_dir
  options = Options(
    pages_dir=str(pathlib.Path(pages_dir).expanduser()),
    level=str(data_config.level),
    scale=float(data_config.pages_scale),
    split_dir=str(pathlib.Path(split_dir).expanduser()) if split_dir else None,
    split_seed=int(data_config.pages_split_seed),
    split_fractions=tuple(float(f) for f in data_config.split_fractions),
    unicode_normalization=str(data_config.unicode_normalization),
    bad_record=str(data_config.pages_bad_record),
    max_pixels=int(data_config.max_image_pixels),
    train_limit=_optional_int(data_config.get("pages_train_limit")),
  )
  check_options(options)
  return options


def _optional_int(value) -> int | None:
  return None if value is None else int(value)


def check_options(options: Options):
  if options.level not in LEVELS:
    raise ValueError(f"data.level={options.level!r} is not one of {LEVELS}.")
  if not options.scale > 0.0:
    raise ValueError(f"data.pages_scale={options.scale} must be positive (1.0 = as scanned).")
  iam_reader.check_split_fractions(options.split_fractions, "data.split_fractions")
  if options.unicode_normalization not in NORMALIZATIONS:
    raise ValueError(
      f"data.unicode_normalization={options.unicode_normalization!r} is not one of "
      f"{NORMALIZATIONS}."
    )
  if options.bad_record not in BAD_RECORD_POLICIES:
    raise ValueError(
      f"data.pages_bad_record={options.bad_record!r} is not one of {BAD_RECORD_POLICIES}."
    )
  if options.train_limit is not None and options.train_limit < 1:
    raise ValueError(
      f"data.pages_train_limit={options.train_limit} must be at least 1 (unset = all pages)."
    )


# --- Pages ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Word:
  id: str
  text: str
  polygon: Points  # (x, y) image pixels; () when absent


@dataclasses.dataclass(frozen=True)
class Line:
  id: str
  text: str
  polygon: Points  # (x, y) image pixels; () when absent (image + text pairs)
  baseline: Points  # () when absent
  words: tuple[Word, ...]


@dataclasses.dataclass(frozen=True)
class Page:
  id: str  # the file stem, unique in the folder
  source: str  # the XML or .txt file read
  image_path: str  # the image file
  width: int  # as the XML says (or the image's size for pairs): what coordinates refer to
  height: int
  lines: tuple[Line, ...]  # in reading order

  @property
  def text(self) -> str:
    return "\n".join(line.text for line in self.lines)


class PageFileError(ValueError):
  """A file that cannot be read as a page; the message names the file."""


@dataclasses.dataclass
class Skipped:
  """What was left out, as 'FILE[, line ID]: why', under data.pages_bad_record.

  `report` raises ValueError with policy "error"; with "skip" it logs a
  warning and counts. page_ids: the pages left out whole.
  """

  policy: str = "skip"
  records: list[str] = dataclasses.field(default_factory=list)
  page_ids: set[str] = dataclasses.field(default_factory=set)

  @property
  def count(self) -> int:
    return len(self.records)

  def report(self, where: str, reason: str, *, page_id: str | None = None):
    """Leaves out what `where` names (a file, "FILE, line ID") because of `reason`."""
    self.add(f"{where}: {reason}", page_id=page_id)

  def add(self, message: str, *, page_id: str | None = None):
    """`report` of a message that names its file itself (an exception's)."""
    message = message.rstrip(".")
    if self.policy == "error":
      raise ValueError(f"{message}. Fix it, or set data.pages_bad_record='skip' to leave it out.")
    logging.warning("Skipping %s.", message)
    self.records.append(message)
    if page_id is not None:
      self.page_ids.add(page_id)

  def log_summary(self, what: str):
    if self.records:
      logging.warning(
        "Skipped %d bad records of %s: %s",
        self.count,
        what,
        "; ".join(self.records[:10]) + (" ..." if self.count > 10 else ""),
      )


def normalize_text(text: str, form: str = "NFC") -> str:
  """`text` in Unicode normalisation `form` (none | NFC | NFD), runs of whitespace one space."""
  if form != "none":
    text = unicodedata.normalize(form, text)
  return " ".join(text.split())


def parse_points(text: str | None, fx: float = 1.0, fy: float = 1.0) -> Points:
  """'x1,y1 x2,y2 ...' (or 'x1 y1 x2 y2 ...', ALTO) -> ((x, y), ...), times (fx, fy), rounded.

  Raises ValueError saying what is wrong: no coordinates, or malformed ones.
  """
  fields = re.split(r"[\s,]+", (text or "").strip())
  if fields == [""]:
    raise ValueError("no coordinates")
  if len(fields) % 2 or not all(_NUMBER.fullmatch(f) for f in fields):
    shown = text if len(text) <= 60 else text[:57] + "..."
    raise ValueError(f"malformed coordinates {shown!r} (expected 'x1,y1 x2,y2 ...')")
  values = [float(f) for f in fields]
  if not all(math.isfinite(v) for v in values):
    raise ValueError(f"coordinates that are not finite numbers {text!r}")
  return tuple(
    (round(x * fx), round(y * fy)) for x, y in zip(values[0::2], values[1::2], strict=True)
  )


def _outside(polygon: Points, width: int, height: int) -> bool:
  """Whether `polygon` lies wholly outside a width x height image (False if the size is unknown)."""
  if width < 1 or height < 1:
    return False
  xs, ys = [x for x, _ in polygon], [y for _, y in polygon]
  return max(xs) < 0 or max(ys) < 0 or min(xs) >= width or min(ys) >= height


class _Coordinates:
  """Parses the coordinates of one page's lines or words, reporting those a level cannot use."""

  def __init__(self, width: int, height: int, skipped: Skipped):
    self.width, self.height, self.skipped = width, height, skipped

  def polygon(self, parse, where: str, *, needed: bool) -> Points | None:
    """parse() -> points; () when unusable but not needed; None when needed and unusable."""
    try:
      polygon = parse()
    except ValueError as e:
      if needed:
        self.skipped.report(where, f"{e}")
        return None
      return ()
    if needed and _outside(polygon, self.width, self.height):
      self.skipped.report(
        where, f"its coordinates lie wholly outside the image ({self.width}x{self.height})"
      )
      return None
    return polygon


def find_image(xml_path, name: str | None) -> str:
  """The image of a page file: `name` (as its XML gives it) beside the file or in the folder
  above; else one with the file's stem beside it. When none exists, the first place looked."""
  xml_path = pathlib.Path(xml_path)
  folder, candidates = xml_path.parent, []
  if name and name.strip():
    name = re.sub(r"^file://", "", name.strip())
    base = re.split(r"[\\/]", name)[-1]  # Windows or URL paths: the file name
    relative = pathlib.Path(name)
    if relative.is_absolute():
      candidates.append(relative)
    else:
      candidates += [folder / relative, folder.parent / relative]
    candidates += [folder / base, folder.parent / base]
  for extension in IMAGE_EXTENSIONS:
    candidates += [
      folder / (xml_path.stem + extension),
      folder / (xml_path.stem + extension.upper()),
    ]
  return str(next((c for c in candidates if c.is_file()), candidates[0]))


def _image_size(path: str) -> tuple[int, int, tuple | None]:
  """(width, height, dpi or None) from the image's header; raises BadImageError naming it."""
  if not os.path.isfile(path):
    raise image_io.BadImageError(f"{path}: no such image file.")
  try:
    with Image.open(path) as image:
      return image.width, image.height, image.info.get("dpi")
  except (OSError, SyntaxError, ValueError) as e:
    raise image_io.BadImageError(f"{path} cannot be read as an image ({e}).") from None


def _number(value: str | None) -> float | None:
  try:
    number = float(value)
  except (TypeError, ValueError):
    return None
  return number if math.isfinite(number) and number > 0 else None


def _page_size(path, width: str | None, height: str | None, image_path: str) -> tuple[int, int]:
  """The size the XML gives; the image's when it gives none (0 x 0 if the image is missing too)."""
  w, h = _number(width), _number(height)
  if w and h:
    return round(w), round(h)
  try:
    return _image_size(image_path)[:2]
  except image_io.BadImageError:
    logging.warning("%s gives no page size and its image %s is unreadable.", path, image_path)
    return 0, 0


# --- PAGE-XML --------------------------------------------------------------------


def _text_equiv(element, ns: str) -> str:
  """The Unicode of `element`'s own TextEquiv: the one of lowest @index, else the first."""
  equivs = element.findall(f"{{{ns}}}TextEquiv")
  if not equivs:
    return ""
  indexed = [(int(e.get("index")), i) for i, e in enumerate(equivs) if _is_int(e.get("index"))]
  chosen = equivs[min(indexed)[1]] if indexed else equivs[0]
  text = chosen.findtext(f"{{{ns}}}Unicode")
  return text if text is not None else chosen.findtext(f"{{{ns}}}PlainText", "")


def _is_int(value) -> bool:
  return value is not None and re.fullmatch(r"\s*[-+]?\d+\s*", value) is not None


def _reading_order(page, ns: str) -> list[str]:
  """Region ids in the page's ReadingOrder, nested groups flattened (ordered ones by @index)."""

  def flatten(group) -> list[str]:
    ids = [group.get("regionRef")] if group.get("regionRef") else []
    members = [c for c in group if isinstance(c.tag, str)]
    if etree.QName(group).localname.startswith("Ordered"):
      members.sort(key=lambda c: int(c.get("index")) if _is_int(c.get("index")) else math.inf)
    for member in members:
      name = etree.QName(member).localname
      if name in ("RegionRefIndexed", "RegionRef"):
        ids.append(member.get("regionRef"))
      elif "Group" in name:
        ids.extend(flatten(member))
    return ids

  order = page.find(f"{{{ns}}}ReadingOrder")
  return (
    []
    if order is None
    else [i for group in order if isinstance(group.tag, str) for i in flatten(group)]
  )


def _read_page_xml(path: pathlib.Path, root, options: Options, skipped: Skipped) -> Page:
  ns = etree.QName(root).namespace
  q = lambda name: f"{{{ns}}}{name}"
  page = root.find(q("Page"))
  if page is None:
    raise PageFileError(f"{path}: the PcGts element holds no Page.")
  image_path = find_image(path, page.get("imageFilename"))
  width, height = _page_size(path, page.get("imageWidth"), page.get("imageHeight"), image_path)
  regions = list(page.iter(q("TextRegion")))
  by_id = {r.get("id"): r for r in regions if r.get("id")}
  ordered = list(dict.fromkeys(by_id[i] for i in _reading_order(page, ns) if i in by_id))
  in_order = set(ordered)
  ordered += [r for r in regions if r not in in_order]
  coordinates = _Coordinates(width, height, skipped)
  form = options.unicode_normalization

  def coords(element):
    found = element.find(q("Coords"))
    return lambda: parse_points(None if found is None else found.get("points"))

  lines = []
  for region in ordered:
    for element in region.findall(q("TextLine")):
      line_id = element.get("id") or f"line{len(lines) + 1}"
      where = f"{path}, line {line_id}"
      words = []
      for number, word in enumerate(element.findall(q("Word"))):
        word_id = word.get("id") or f"{line_id}_w{number}"
        text = normalize_text(_text_equiv(word, ns), form)
        polygon = coordinates.polygon(
          coords(word), f"{where}, word {word_id}", needed=options.level == "word" and bool(text)
        )
        if polygon is not None:
          words.append(Word(id=word_id, text=text, polygon=polygon))
      text = normalize_text(_text_equiv(element, ns), form) or normalize_text(
        " ".join(w.text for w in words), form
      )
      if not text:
        skipped.report(where, "the line has no text")
        continue
      polygon = coordinates.polygon(coords(element), where, needed=options.level == "line")
      if polygon is None:
        continue
      baseline = element.find(q("Baseline"))
      lines.append(
        Line(
          id=line_id,
          text=text,
          polygon=polygon,
          baseline=_optional_points(None if baseline is None else baseline.get("points")),
          words=tuple(words),
        )
      )
  return Page(path.stem, str(path), image_path, width, height, tuple(lines))


def _optional_points(text: str | None, fx: float = 1.0, fy: float = 1.0) -> Points:
  """Points that only inform (baselines): () when absent or malformed."""
  try:
    return parse_points(text, fx, fy)
  except ValueError:
    return ()


# --- ALTO ------------------------------------------------------------------------


def _alto_factors(path, unit: str, page, image_path: str) -> tuple[float, float, int, int]:
  """(fx, fy, width, height): ALTO units -> image pixels, and the page's size in pixels."""
  width, height = _number(page.get("WIDTH")), _number(page.get("HEIGHT"))
  if unit == "pixel":
    if width and height:
      return 1.0, 1.0, round(width), round(height)
    return (1.0, 1.0) + _page_size(path, None, None, image_path)
  if unit not in _ALTO_UNITS_PER_INCH:
    raise PageFileError(f"{path}: MeasurementUnit {unit!r} is not one of pixel, mm10, inch1200.")
  try:
    image_width, image_height, dpi = _image_size(image_path)
  except image_io.BadImageError as e:
    raise PageFileError(
      f"{path}: its coordinates are in {unit}, and converting them to pixels needs the "
      f"image's size, but {e}"
    ) from None
  if width and height:
    return image_width / width, image_height / height, image_width, image_height
  if dpi and all(d > 0 for d in dpi):
    per_inch = _ALTO_UNITS_PER_INCH[unit]
    return dpi[0] / per_inch, dpi[1] / per_inch, image_width, image_height
  raise PageFileError(
    f"{path}: its coordinates are in {unit}, and neither Page@WIDTH/HEIGHT nor the "
    f"image's dpi ({image_path}) say how many pixels that is."
  )


def _alto_polygon(element, q, fx: float, fy: float) -> Points:
  """Shape/Polygon@POINTS, else the HPOS VPOS WIDTH HEIGHT box; raises ValueError if neither."""
  shape = element.find(f"{q('Shape')}/{q('Polygon')}")
  if shape is not None and shape.get("POINTS"):
    return parse_points(shape.get("POINTS"), fx, fy)
  box = [element.get(k) for k in ("HPOS", "VPOS", "WIDTH", "HEIGHT")]
  if any(v is None for v in box):
    raise ValueError("no coordinates (HPOS VPOS WIDTH HEIGHT)")
  try:
    x, y, w, h = (float(v) for v in box)
  except ValueError:
    raise ValueError(f"malformed coordinates HPOS VPOS WIDTH HEIGHT = {box}") from None
  if not (w > 0 and h > 0 and all(map(math.isfinite, (x, y, w, h)))):
    raise ValueError(f"an empty box HPOS VPOS WIDTH HEIGHT = {box}")
  # Corner pixels: the box covers [x, x + w) x [y, y + h).
  left, top = round(x * fx), round(y * fy)
  right, bottom = max(left, round((x + w) * fx) - 1), max(top, round((y + h) * fy) - 1)
  return ((left, top), (right, top), (right, bottom), (left, bottom))


def _alto_baseline(element, fx: float, fy: float) -> Points:
  """BASELINE: a row (v2, v3) across the line's box, or points (v4); () if absent or malformed."""
  value = (element.get("BASELINE") or "").strip()
  if _NUMBER.fullmatch(value):
    x, w = _number(element.get("HPOS")) or 0.0, _number(element.get("WIDTH")) or 0.0
    row = round(float(value) * fy)
    return ((round(x * fx), row), (round((x + w) * fx), row))
  return _optional_points(value, fx, fy)


def _read_alto(path: pathlib.Path, root, options: Options, skipped: Skipped) -> Page:
  ns = etree.QName(root).namespace
  q = lambda name: f"{{{ns}}}{name}"
  description = root.find(q("Description"))
  unit, file_name = "pixel", None
  if description is not None:
    unit = (description.findtext(q("MeasurementUnit")) or "pixel").strip()
    file_name = description.findtext(f"{q('sourceImageInformation')}/{q('fileName')}")
  image_path = find_image(path, file_name)
  pages = root.findall(f"{q('Layout')}/{q('Page')}")
  if not pages:
    raise PageFileError(f"{path}: the ALTO file holds no Layout/Page.")
  if len(pages) > 1:
    logging.warning("%s holds %d pages; only the first is read.", path, len(pages))
  fx, fy, width, height = _alto_factors(path, unit, pages[0], image_path)
  coordinates = _Coordinates(width, height, skipped)
  form = options.unicode_normalization
  lines = []
  for block in pages[0].iter(q("TextBlock")):
    for element in block.findall(q("TextLine")):
      line_id = element.get("ID") or f"line{len(lines) + 1}"
      where = f"{path}, line {line_id}"
      parts, words, after_string, strings = [], [], False, 0
      for child in element:
        name = etree.QName(child).localname if isinstance(child.tag, str) else ""
        if name == "String":
          content = child.get("CONTENT", "")
          parts.append((" " if after_string else "") + content)
          after_string = True
          word_id = child.get("ID") or f"{line_id}_w{strings}"
          strings += 1
          text = normalize_text(content, form)
          polygon = coordinates.polygon(
            lambda child=child: _alto_polygon(child, q, fx, fy),
            f"{where}, word {word_id}",
            needed=options.level == "word" and bool(text),
          )
          if polygon is not None:
            words.append(Word(id=word_id, text=text, polygon=polygon))
        elif name == "SP":
          parts.append(" ")
          after_string = False
        elif name == "HYP":
          parts.append(child.get("CONTENT", ""))
          after_string = False
      text = normalize_text("".join(parts), form)
      if not text:
        skipped.report(where, "the line has no text")
        continue
      polygon = coordinates.polygon(
        lambda: _alto_polygon(element, q, fx, fy), where, needed=options.level == "line"
      )
      if polygon is None:
        continue
      lines.append(
        Line(
          id=line_id,
          text=text,
          polygon=polygon,
          baseline=_alto_baseline(element, fx, fy),
          words=tuple(words),
        )
      )
  return Page(path.stem, str(path), image_path, width, height, tuple(lines))


# --- Files and folders -----------------------------------------------------------


def _parse_xml(path: pathlib.Path):
  try:
    return etree.parse(str(path), _PARSER).getroot()
  except etree.XMLSyntaxError as e:
    raise PageFileError(f"{path} is not XML ({e}).") from None
  except OSError as e:
    raise PageFileError(f"{path} cannot be read ({e}).") from None


def read_page_file(path, options: Options | None = None, skipped: Skipped | None = None) -> Page:
  """The page of a PAGE-XML or ALTO file; its lines in reading order, texts normalised.

  Lines (and, at word level, words) that options.level cannot use are
  reported to `skipped` (a fresh `Skipped(options.bad_record)` if None) and
  left out. The image is not opened, unless ALTO coordinates need its size.

  Raises:
    PageFileError (a ValueError) naming the file: not XML, or neither PAGE-XML
      nor ALTO v2-v4 (the root's namespace says which).
  """
  options = options or Options()
  skipped = skipped if skipped is not None else Skipped(options.bad_record)
  path = pathlib.Path(path)
  return _read_xml(path, _parse_xml(path), options, skipped)


def _read_xml(path: pathlib.Path, root, options: Options, skipped: Skipped) -> Page:
  qname = etree.QName(root)
  if qname.localname == "PcGts" and qname.namespace in PAGE_NAMESPACES:
    return _read_page_xml(path, root, options, skipped)
  if qname.localname == "alto" and qname.namespace in ALTO_NAMESPACES:
    return _read_alto(path, root, options, skipped)
  if qname.namespace == _ALTO_V1:
    raise PageFileError(
      f"{path}: ALTO 1 ({_ALTO_V1}) is not read; export ALTO v2, v3 or v4 "
      "(namespace http://www.loc.gov/standards/alto/ns-v4#)."
    )
  raise PageFileError(
    f"{path}: the root element {root.tag!r} is neither PAGE-XML (PcGts in "
    f"{_PAGE}2013-07-15 ... 2019-07-15) nor ALTO (alto in {ALTO_NAMESPACES[0]} .. ns-v4#)."
  )


def pair_text(image_path: pathlib.Path) -> pathlib.Path | None:
  """NAME.gt.txt or NAME.txt beside NAME.png (also for OCRopus' NAME.bin.png)."""
  stems = [image_path.stem]
  if pathlib.Path(image_path.stem).suffix:
    stems.append(pathlib.Path(image_path.stem).stem)
  for stem in stems:
    for suffix in TEXT_SUFFIXES:
      path = image_path.with_name(stem + suffix)
      if path.is_file():
        return path
  return None


def _pair_id(text_path: pathlib.Path) -> str:
  """NAME of NAME.gt.txt or NAME.txt."""
  name = text_path.name
  return name[: -len(next(s for s in TEXT_SUFFIXES if name.endswith(s)))]


def read_text_pair(
  image_path, text_path, options: Options | None = None, skipped: Skipped | None = None
) -> Page:
  """The page of an image and its .gt.txt/.txt: one line of text per line, no coordinates.

  Raises:
    PageFileError naming the file: the text is not UTF-8; image_io.BadImageError:
      the image's header cannot be read.
  """
  options = options or Options()
  text_path, image_path = pathlib.Path(text_path), str(image_path)
  try:
    raw = text_path.read_text(encoding="utf-8-sig")
  except UnicodeDecodeError as e:
    raise PageFileError(f"{text_path} is not UTF-8 text ({e}).") from None
  width, height, _ = _image_size(image_path)
  texts = [normalize_text(t, options.unicode_normalization) for t in raw.splitlines()]
  lines = tuple(
    Line(id=str(number), text=text, polygon=(), baseline=(), words=())
    for number, text in enumerate(texts, 1)
    if text
  )
  return Page(
    id=_pair_id(text_path),
    source=str(text_path),
    image_path=image_path,
    width=width,
    height=height,
    lines=lines,
  )


def _files(root: pathlib.Path):
  """The files under `root`, recursively, in path order; hidden ones and __MACOSX passed over."""
  for folder, dirs, files in os.walk(root):
    dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__MACOSX")
    for name in sorted(files):
      if not name.startswith("."):
        yield pathlib.Path(folder) / name


def _walk(root: pathlib.Path):
  """('xml', path, None) and ('pair', image, text) of the folder, recursively, in path order."""
  for path in _files(root):
    suffix = path.suffix.lower()
    if suffix == ".xml":
      yield "xml", path, None
    elif suffix in IMAGE_EXTENSIONS:
      text = pair_text(path)
      if text is not None:
        yield "pair", path, text


def _check_unique(page_id: str, source: pathlib.Path, sources: dict):
  """Registers `source` as the file of `page_id`; ValueError if another file has that id."""
  if sources.setdefault(page_id, source) != source:
    raise ValueError(
      f"{source} and {sources[page_id]} give the same page id {page_id!r} (the file stem); "
      "page ids must be unique in data.pages_dir: rename or remove one of them."
    )


def read_folder(folder: str, options: Options) -> tuple[list[Page], Skipped]:
  """Every XML page file and image + text pair in `folder` (recursive), sorted by id.

  Returns (pages, what was skipped). Raises FileNotFoundError when `folder`
  is not a folder or holds no page, and ValueError when two files give the
  same page id, or for a bad record when options.bad_record is "error".
  """
  root = pathlib.Path(folder).expanduser()
  if not root.is_dir():
    raise FileNotFoundError(f"data.pages_dir={str(folder)!r} is not a folder.")
  skipped = Skipped(options.bad_record)
  sources, pages, documents = {}, [], []
  for kind, path, text_path in _walk(root):
    source = path if kind == "xml" else text_path
    page_id = path.stem if kind == "xml" else _pair_id(text_path)
    try:
      if kind == "xml":
        root_element = _parse_xml(path)
        if root_element.tag in _NOT_PAGES:
          documents.append(str(path))
          continue
      _check_unique(page_id, source, sources)
      if kind == "xml":
        page = _read_xml(path, root_element, options, skipped)
      else:
        page = read_text_pair(path, text_path, options, skipped)
    except (PageFileError, image_io.BadImageError) as e:
      _check_unique(page_id, source, sources)
      skipped.add(str(e), page_id=page_id)
      continue
    if not os.path.isfile(page.image_path):
      skipped.report(str(source), f"its image {page.image_path} is missing", page_id=page_id)
    elif not page.lines:
      skipped.report(str(source), "the page has no line with text", page_id=page_id)
    else:
      pages.append(page)
  if documents:
    logging.info(
      "Passed over %d XML files of a document, not a page: %s", len(documents), documents
    )
  if not sources:
    raise FileNotFoundError(
      f"{root} holds no page: no PAGE-XML or ALTO file, and no image "
      f"({'/'.join(IMAGE_EXTENSIONS)}) with a .gt.txt or .txt beside it."
    )
  skipped.log_summary(str(root))
  return sorted(pages, key=lambda p: p.id), skipped


def folder_fingerprint(folder: str) -> str:
  """A digest of the folder's page files and images (names, sizes, modification times).

  Only what `read_folder` reads counts: a TFDS copy or a cache kept inside
  the folder does not change it.
  """
  root = pathlib.Path(folder).expanduser()
  digest = hashlib.sha256()
  for path in _files(root):
    if path.suffix.lower() in (".xml", ".txt") + IMAGE_EXTENSIONS:
      stat = path.stat()
      digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
  return digest.hexdigest()[:16]


# --- Splits ----------------------------------------------------------------------


def _split_list(path: pathlib.Path) -> list[tuple[int, str]]:
  """(line number, page id) of a split list: one id a line, '#' starts a comment."""
  if not path.is_file():
    raise FileNotFoundError(
      f"{path} is missing: data.pages_split_dir must hold train.txt, validation.txt and "
      "test.txt, each listing page ids (file stems), one a line."
    )
  entries = []
  for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
    page_id = line.split("#", 1)[0].strip()
    if page_id:
      entries.append((number, page_id))
  return entries


def split_fingerprint(options: Options) -> str:
  """A digest of the split lists' contents ('' for a random split)."""
  if options.split_dir is None:
    return ""
  folder = pathlib.Path(options.split_dir)
  digest = hashlib.sha256()
  for split in SPLITS:
    digest.update(repr(_split_list(folder / f"{split}.txt")).encode())
  return digest.hexdigest()[:16]


def split_ids(options: Options, page_ids) -> dict[str, frozenset]:
  """{split: page ids}: the lists in options.split_dir, else a seeded random split by page.

  `page_ids`: every page id of the folder, skipped pages included, so that a
  page that is fixed later does not move the others between splits. With
  options.train_limit, the training split keeps its first that many ids in
  sorted order (so a smaller limit's pages are among a larger one's).

  Raises ValueError naming the list file and id: an id that is not in the
  folder, or in two lists.
  """
  splits = _whole_split_ids(options, page_ids)
  if options.train_limit is not None:
    train = sorted(splits["train"])
    if options.train_limit > len(train):
      logging.warning(
        "data.pages_train_limit=%d, but the training split of %s has %d pages: all are used.",
        options.train_limit,
        options.pages_dir,
        len(train),
      )
    splits["train"] = frozenset(train[: options.train_limit])
  return splits


def _whole_split_ids(options: Options, page_ids) -> dict[str, frozenset]:
  known = sorted(set(page_ids))
  if options.split_dir is None:
    return iam_reader.random_split_ids(known, options.split_seed, options.split_fractions)
  folder = pathlib.Path(options.split_dir)
  if not folder.is_dir():
    raise FileNotFoundError(f"data.pages_split_dir={options.split_dir!r} is not a folder.")
  known_set, listed, splits = set(known), {}, {}
  for split in SPLITS:
    path = folder / f"{split}.txt"
    for number, page_id in _split_list(path):
      if page_id not in known_set:
        raise ValueError(
          f"{path}, line {number}: page id {page_id!r} is not in data.pages_dir="
          f"{options.pages_dir} (page ids are the file stems, e.g. {known[:3]})."
        )
      if listed.setdefault(page_id, path) != path:
        raise ValueError(
          f"{path}, line {number}: page {page_id!r} is also listed in {listed[page_id]}; "
          "a page belongs to one split."
        )
    splits[split] = frozenset(page_id for _, page_id in _split_list(path))
  if len(listed) < len(known):
    logging.info(
      "%d pages of %s are in no split list.", len(known) - len(listed), options.pages_dir
    )
  return splits


# --- Records per level -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Record:
  """One example: a page image (whole, or cut to a polygon) and its text."""

  id: str  # form: the page id; line: PAGE/LINE; word: PAGE/LINE/WORD
  level: str
  page_id: str
  text: str
  where: str  # the file, and the line (and word) in it: for messages
  image_path: str
  page_size: tuple[int, int]  # (width, height) the polygon refers to
  polygon: Points  # () = the whole image
  lines: tuple[tuple[str, str], ...]  # (line id, text) of what the text is made of


def records(pages: list[Page], level: str, page_ids=None) -> list[Record]:
  """The records of `level` of `pages` (of those in `page_ids`, if given), in page order.

  Line level needs line polygons: a page without them (an image + text pair)
  gives one line record, the whole image, only when it has a single line.
  Word level takes the words that have a polygon and a text.
  """
  if level not in LEVELS:
    raise ValueError(f"data.level={level!r} is not one of {LEVELS}.")
  result, unusable = [], []
  for page in pages:
    if page_ids is not None and page.id not in page_ids:
      continue
    common = dict(
      level=level, page_id=page.id, image_path=page.image_path, page_size=(page.width, page.height)
    )
    if level == "form":
      result.append(
        Record(
          id=page.id,
          text=page.text,
          where=page.source,
          polygon=(),
          lines=tuple((line.id, line.text) for line in page.lines),
          **common,
        )
      )
      continue
    for line in page.lines:
      where = f"{page.source}, line {line.id}"
      if level == "line":
        if not line.polygon and len(page.lines) > 1:
          unusable.append(page.id)
          break
        result.append(
          Record(
            id=f"{page.id}/{line.id}",
            text=line.text,
            where=where,
            polygon=line.polygon,
            lines=((line.id, line.text),),
            **common,
          )
        )
        continue
      for word in line.words:
        if word.polygon and word.text:
          result.append(
            Record(
              id=f"{page.id}/{line.id}/{word.id}",
              text=word.text,
              where=f"{where}, word {word.id}",
              polygon=word.polygon,
              lines=((line.id, word.text),),
              **common,
            )
          )
  if unusable:
    logging.info(
      "%d pages have several lines of text and no line coordinates (image + text pairs); "
      "they serve at form level only: %s",
      len(unusable),
      unusable[:10],
    )
  return result


def check_record_texts(
  records_: list[Record], charset: str | None, max_chars: int, skipped: Skipped
) -> list[Record]:
  """The records whose text data.charset can write (any, if None) in data.max_len tokens.

  The others are reported to `skipped`, naming the file and line.
  """
  allowed = None if charset is None else set(charset)
  kept = []
  for record in records_:
    if allowed is not None:
      bad = [(line_id, sorted(set(t) - allowed)) for line_id, t in record.lines if set(t) - allowed]
      if bad:
        where = record.where if record.level != "form" else f"{record.where}, line {bad[0][0]}"
        skipped.report(
          where,
          f"characters {bad[0][1]} are not in data.charset (add them to data.charset, or "
          "set data.charset='auto')",
        )
        continue
    if len(record.text) > max_chars:
      skipped.report(
        record.where,
        f"its {record.level} text has {len(record.text)} characters, more than data.max_len "
        f"- 2 = {max_chars} (raise data.max_len)",
      )
      continue
    kept.append(record)
  return kept


def all_page_ids(pages: list[Page], skipped: Skipped) -> list[str]:
  """Every page id of a folder (`read_folder`'s answer), the skipped pages' too: what splits."""
  return sorted({p.id for p in pages} | skipped.page_ids)


def training_charset(pages: list[Page], skipped: Skipped, options: Options) -> str:
  """data.charset='auto': the sorted characters of the training split's records at
  options.level, with " " and "\\n" where that level writes them between words and lines."""
  ids = split_ids(options, all_page_ids(pages, skipped))["train"]
  train = records(pages, options.level, ids)
  if not train:
    raise ValueError(
      f"data.charset='auto' reads the characters of the training split, and the training "
      f"split of data.pages_dir={options.pages_dir} has no {options.level}."
    )
  chars = set("".join(r.text for r in train))
  chars |= set({"form": " \n", "line": " "}.get(options.level, ""))
  return "".join(sorted(chars))


# --- Images ----------------------------------------------------------------------


def to_grey(image: Image.Image) -> Image.Image:
  """Any PIL image -> mode "L": transparency on white paper, 16/32-bit grey scaled to 8 bits."""
  if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
    grey = np.asarray(image, np.float32)
    top = 65535.0 if image.mode.startswith("I;16") or grey.max() > 255 else 255.0
    grey = grey / (1.0 if image.mode == "F" and grey.max() <= 1.0 else top)
    return Image.fromarray(np.round(np.clip(grey, 0.0, 1.0) * 255).astype(np.uint8))
  if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
    rgba = image.convert("RGBA")
    image = Image.new("RGBA", rgba.size, "white")
    image.alpha_composite(rgba)
  return image.convert("L")


def cut_polygon(image: Image.Image, polygon: Points, page_size: tuple[int, int]) -> Image.Image:
  """The bounding box of `polygon` in grey `image`, clipped to it; paper outside the polygon.

  `polygon` is in the coordinates of a page_size (width, height) page, scaled
  to the image's size when they differ. The box holds the polygon's pixels:
  (max x - min x + 1) x (max y - min y + 1) before clipping.

  Raises:
    image_io.BadImageError: the polygon lies wholly outside the image.
  """
  width, height = page_size
  fx = image.width / width if width > 0 else 1.0
  fy = image.height / height if height > 0 else 1.0
  points = [(x * fx, y * fy) for x, y in polygon]
  left = max(0, math.floor(min(x for x, _ in points)))
  top = max(0, math.floor(min(y for _, y in points)))
  right = min(image.width, math.floor(max(x for x, _ in points)) + 1)
  bottom = min(image.height, math.floor(max(y for _, y in points)) + 1)
  if right <= left or bottom <= top:
    raise image_io.BadImageError(
      f"its coordinates lie outside the image ({image.width}x{image.height})"
    )
  crop = image.crop((left, top, right, bottom))
  if len(points) >= 3:
    mask = Image.new("L", crop.size, 0)
    ImageDraw.Draw(mask).polygon([(x - left, y - top) for x, y in points], fill=255, outline=255)
    crop = Image.composite(crop, Image.new("L", crop.size, PAPER), mask)
  return crop


def _scaled(image: Image.Image, scale: float) -> Image.Image:
  if scale == 1.0:
    return image
  size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
  return image.resize(size, Image.Resampling.BOX if scale < 1.0 else Image.Resampling.BICUBIC)


class RecordImages:
  """uint8 [H, W] grey images of records, each page image opened once for its records in a row.

  A page image that cannot be read is reported to `skipped` (per
  data.pages_bad_record) with the records it would have given.
  """

  def __init__(self, options: Options, skipped: Skipped):
    self.options, self.skipped = options, skipped
    self._path, self._image, self._error = None, None, None

  def page_image(self, path: str) -> Image.Image:
    """The grey page image at `path`; raises image_io.BadImageError naming it."""
    if path != self._path:
      self._path, self._image, self._error = path, None, None
      try:
        self._image = to_grey(image_io.open_image(path, self.options.max_pixels))
      except image_io.BadImageError as e:
        self._error = e
    if self._error is not None:
      raise self._error
    return self._image

  def load(self, record: Record) -> np.ndarray | None:
    """The record's image scaled by options.scale; None when it is skipped."""
    try:
      image = self.page_image(record.image_path)
      if record.polygon:
        image = cut_polygon(image, record.polygon, record.page_size)
    except image_io.BadImageError as e:
      self.skipped.report(record.where, str(e).rstrip("."))
      return None
    return np.asarray(_scaled(image, self.options.scale), np.uint8)
