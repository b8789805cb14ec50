"""A page's transcription as PAGE-XML (2019-07-15) or ALTO v4, with its lines located.

Transcription tools (Transkribus, eScriptorium, OCR-D, Kraken) import these.
One file per image: one text region spanning the lines, then the lines in
reading order, each with its text, its confidence, its outline (a polygon),
its baseline and its words (`line_location`), in the original image's pixels.

PAGE-XML: `TextLine/Coords@points` (the polygon), `Baseline@points`,
`Word`s with their outlines, `TextEquiv@conf` (line: the mean token
probability of its characters and of the token that ends it; word: the mean
of its characters). ALTO: `TextLine` HPOS, VPOS, WIDTH, HEIGHT (its box),
BASELINE (a polyline of x,y points, as ALTO 4.2 allows) and `Shape/Polygon`,
with `String`s (words, `WC` their confidence) and `SP`s between them; ALTO
has no line-level confidence.

`validate` checks a document: PAGE-XML against the official schema vendored
in `fphtr_jax/schemas/`; ALTO (no schema file is vendored, see its README)
for its namespace and the structure and attributes written here.
"""

import datetime
import os

from lxml import etree

PAGE_NAMESPACE = "http://schema.primaresearch.org/PAGE/gts/pagecontent/2019-07-15"
ALTO_NAMESPACE = "http://www.loc.gov/standards/alto/ns-v4#"
ALTO_SCHEMA_URL = "http://www.loc.gov/standards/alto/v4/alto-4-2.xsd"
XSI_NAMESPACE = "http://www.w3.org/2001/XMLSchema-instance"
SCHEMA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schemas")
PAGE_SCHEMA = os.path.join(SCHEMA_DIR, "pagecontent.xsd")
FORMATS = ("pagexml", "alto")
CREATOR = "fphtr-jax"


def _line_char_probs(transcription) -> list[list[float]]:
  """Each line's characters' probabilities ("\\n" excluded)."""
  out, offset = [], 0
  for line in transcription.lines:
    out.append(list(transcription.char_probs[offset : offset + len(line.text)]))
    offset += len(line.text) + 1
  return out


def _mean(values, default: float) -> float:
  return float(sum(values) / len(values)) if len(values) else default


def _conf(value: float) -> str:
  return f"{min(max(float(value), 0.0), 1.0):.4f}"


def _points(points) -> str:
  return " ".join(f"{x},{y}" for x, y in points)


def box_points(box) -> list[tuple[int, int]]:
  """The corners of a box (left, top, right, bottom; right and bottom exclusive), clockwise."""
  left, top, right, bottom = box
  return [(left, top), (right - 1, top), (right - 1, bottom - 1), (left, bottom - 1)]


def _union(boxes) -> tuple[int, int, int, int]:
  return (
    min(b[0] for b in boxes),
    min(b[1] for b in boxes),
    max(b[2] for b in boxes),
    max(b[3] for b in boxes),
  )


def _check(transcription, locations, width: int, height: int):
  if len(locations) != len(transcription.lines):
    raise ValueError(
      f"{len(locations)} line locations for {len(transcription.lines)} lines: "
      "expected one per line of the transcription."
    )
  if width < 1 or height < 1:
    raise ValueError(
      f"image size {width}x{height} is invalid: expected a positive width and height."
    )


# --- PAGE-XML ----------------------------------------------------------------------------------


def page_xml(
  image_name: str,
  width: int,
  height: int,
  transcription,
  locations,
  created: datetime.datetime | None = None,
) -> etree._ElementTree:
  """The PAGE-XML 2019-07-15 document of one page.

  Args:
    image_name: the image's file name (`Page@imageFilename`).
    width, height: the image's size in pixels.
    transcription: its `confidence.Transcription`.
    locations: one `line_location.LineLocation` per line, in its pixels.
    created: the document's time stamp (UTC); None = now.
  """
  _check(transcription, locations, width, height)
  stamp = (created or datetime.datetime.now(datetime.timezone.utc)).strftime("%Y-%m-%dT%H:%M:%S")
  ns = f"{{{PAGE_NAMESPACE}}}"
  root = etree.Element(f"{ns}PcGts", nsmap={None: PAGE_NAMESPACE, "xsi": XSI_NAMESPACE})
  root.set(
    f"{{{XSI_NAMESPACE}}}schemaLocation", f"{PAGE_NAMESPACE} {PAGE_NAMESPACE}/pagecontent.xsd"
  )
  metadata = etree.SubElement(root, f"{ns}Metadata")
  etree.SubElement(metadata, f"{ns}Creator").text = CREATOR
  etree.SubElement(metadata, f"{ns}Created").text = stamp
  etree.SubElement(metadata, f"{ns}LastChange").text = stamp
  page = etree.SubElement(
    root,
    f"{ns}Page",
    imageFilename=image_name,
    imageWidth=str(int(width)),
    imageHeight=str(int(height)),
  )
  region = etree.SubElement(page, f"{ns}TextRegion", id="r1", custom="readingOrder {index:0;}")
  region_box = _union([location.box for location in locations])
  etree.SubElement(region, f"{ns}Coords", points=_points(box_points(region_box)))
  char_probs = _line_char_probs(transcription)
  for index, (line, location) in enumerate(zip(transcription.lines, locations)):
    line_id = f"r1_l{index + 1}"
    element = etree.SubElement(
      region, f"{ns}TextLine", id=line_id, custom=f"readingOrder {{index:{index};}}"
    )
    etree.SubElement(element, f"{ns}Coords", points=_points(location.polygon))
    etree.SubElement(element, f"{ns}Baseline", points=_points(location.baseline))
    for number, word in enumerate(location.words):
      start, end = word.char_span
      word_element = etree.SubElement(element, f"{ns}Word", id=f"{line_id}_w{number + 1}")
      etree.SubElement(word_element, f"{ns}Coords", points=_points(word.polygon))
      _page_text(word_element, word.text, _mean(char_probs[index][start:end], line.confidence))
    _page_text(element, line.text, line.confidence)
  _page_text(region, transcription.text, transcription.confidence)
  return etree.ElementTree(root)


def _page_text(parent, text: str, conf: float):
  ns = f"{{{PAGE_NAMESPACE}}}"
  equiv = etree.SubElement(parent, f"{ns}TextEquiv", conf=_conf(conf))
  etree.SubElement(equiv, f"{ns}Unicode").text = text


# --- ALTO --------------------------------------------------------------------------------------


def alto_xml(
  image_name: str, width: int, height: int, transcription, locations
) -> etree._ElementTree:
  """The ALTO v4 document of one page (arguments as `page_xml`'s)."""
  _check(transcription, locations, width, height)
  ns = f"{{{ALTO_NAMESPACE}}}"
  root = etree.Element(f"{ns}alto", nsmap={None: ALTO_NAMESPACE, "xsi": XSI_NAMESPACE})
  root.set(f"{{{XSI_NAMESPACE}}}schemaLocation", f"{ALTO_NAMESPACE} {ALTO_SCHEMA_URL}")
  description = etree.SubElement(root, f"{ns}Description")
  etree.SubElement(description, f"{ns}MeasurementUnit").text = "pixel"
  source = etree.SubElement(description, f"{ns}sourceImageInformation")
  etree.SubElement(source, f"{ns}fileName").text = image_name
  layout = etree.SubElement(root, f"{ns}Layout")
  page = etree.SubElement(
    layout,
    f"{ns}Page",
    ID="page_1",
    PHYSICAL_IMG_NR="1",
    WIDTH=str(int(width)),
    HEIGHT=str(int(height)),
  )
  space = etree.SubElement(page, f"{ns}PrintSpace", **_alto_box((0, 0, int(width), int(height))))
  block = etree.SubElement(
    space, f"{ns}TextBlock", ID="block_1", **_alto_box(_union([l.box for l in locations]))
  )
  char_probs = _line_char_probs(transcription)
  for index, (line, location) in enumerate(zip(transcription.lines, locations)):
    line_id = f"line_{index + 1}"
    element = etree.SubElement(
      block,
      f"{ns}TextLine",
      ID=line_id,
      **_alto_box(location.box),
      BASELINE=_points(location.baseline),
    )
    shape = etree.SubElement(element, f"{ns}Shape")
    etree.SubElement(shape, f"{ns}Polygon", POINTS=_points(location.polygon))
    if not location.words:  # an empty line: ALTO wants at least one String
      etree.SubElement(element, f"{ns}String", CONTENT="", **_alto_box(location.box))
    for number, word in enumerate(location.words):
      if number:
        before = location.words[number - 1].box
        etree.SubElement(
          element,
          f"{ns}SP",
          HPOS=str(before[2]),
          VPOS=str(before[1]),
          WIDTH=str(max(word.box[0] - before[2], 0)),
        )
      start, end = word.char_span
      etree.SubElement(
        element,
        f"{ns}String",
        ID=f"{line_id}_w{number + 1}",
        CONTENT=word.text,
        **_alto_box(word.box),
        WC=_conf(_mean(char_probs[index][start:end], line.confidence)),
      )
  return etree.ElementTree(root)


def _alto_box(box) -> dict[str, str]:
  left, top, right, bottom = box
  return {
    "HPOS": str(left),
    "VPOS": str(top),
    "WIDTH": str(max(right - left, 0)),
    "HEIGHT": str(max(bottom - top, 0)),
  }


# --- Files and checks --------------------------------------------------------------------------


def document(
  output_format: str, image_name: str, width: int, height: int, transcription, locations
):
  """`page_xml` or `alto_xml` by `output_format` ("pagexml" or "alto")."""
  if output_format == "pagexml":
    return page_xml(image_name, width, height, transcription, locations)
  if output_format == "alto":
    return alto_xml(image_name, width, height, transcription, locations)
  raise ValueError(f"output format {output_format!r} is not one of {FORMATS}.")


def write(tree: etree._ElementTree, path: str):
  """Writes `tree` to `path` as UTF-8 with an XML declaration."""
  tree.write(path, xml_declaration=True, encoding="UTF-8", pretty_print=True)


_SCHEMAS = {}


def page_schema() -> etree.XMLSchema:
  """The vendored PAGE-XML 2019-07-15 schema (parsed once)."""
  if "page" not in _SCHEMAS:
    _SCHEMAS["page"] = etree.XMLSchema(etree.parse(PAGE_SCHEMA))
  return _SCHEMAS["page"]


class InvalidDocument(ValueError):
  """A PAGE-XML or ALTO document that breaks its format; the message says where."""


def validate(tree, output_format: str):
  """Raises InvalidDocument unless `tree` (an ElementTree or a file path) is a valid document.

  PAGE-XML: against the vendored official schema. ALTO: its namespace, and
  the structure and attributes this module writes (see the module's doc).
  """
  if isinstance(tree, (str, os.PathLike)):
    tree = etree.parse(os.fspath(tree))
  if output_format == "pagexml":
    schema = page_schema()
    if not schema.validate(tree):
      errors = "; ".join(f"line {e.line}: {e.message}" for e in list(schema.error_log)[:3])
      raise InvalidDocument(f"not valid PAGE-XML 2019-07-15: {errors}")
    return
  if output_format != "alto":
    raise ValueError(f"output format {output_format!r} is not one of {FORMATS}.")
  _validate_alto(tree.getroot())


def _validate_alto(root):
  ns = f"{{{ALTO_NAMESPACE}}}"

  def fail(element, why: str):
    raise InvalidDocument(f"not valid ALTO v4: line {element.sourceline}: {element.tag}: {why}")

  def number(element, name: str, required: bool = True):
    value = element.get(name)
    if value is None:
      if required:
        fail(element, f"no {name} attribute")
      return None
    try:
      return float(value)
    except ValueError:
      fail(element, f"{name}={value!r} is not a number")

  def child(element, name: str):
    found = element.find(f"{ns}{name}")
    if found is None:
      fail(element, f"no {name} element")
    return found

  if root.tag != f"{ns}alto":
    fail(root, f"the root element should be {ns}alto")
  description = child(root, "Description")
  unit = child(description, "MeasurementUnit")
  if unit.text not in ("pixel", "mm10", "inch1200"):
    fail(unit, f"{unit.text!r} is not pixel, mm10 or inch1200")
  if not (child(child(description, "sourceImageInformation"), "fileName").text or "").strip():
    fail(description, "sourceImageInformation/fileName is empty")
  page = child(child(root, "Layout"), "Page")
  if not page.get("ID") or number(page, "PHYSICAL_IMG_NR") is None:
    fail(page, "a Page needs ID and PHYSICAL_IMG_NR")
  width, height = number(page, "WIDTH"), number(page, "HEIGHT")
  ids = set()
  for element in root.iter(f"{ns}TextBlock", f"{ns}TextLine", f"{ns}String"):
    identifier = element.get("ID")
    if element.tag == f"{ns}TextBlock" and not identifier:
      fail(element, "a TextBlock needs an ID")
    if identifier in ids:
      fail(element, f"ID {identifier!r} is used twice")
    ids.add(identifier)
    left, top = number(element, "HPOS"), number(element, "VPOS")
    w, h = number(element, "WIDTH"), number(element, "HEIGHT")
    if min(left, top, w, h) < 0 or left + w > width or top + h > height:
      fail(element, f"box {left:g},{top:g} {w:g}x{h:g} is not inside the {width:g}x{height:g} page")
  for line in root.iter(f"{ns}TextLine"):
    parts = [etree.QName(c).localname for c in line if isinstance(c.tag, str)]
    if parts and parts[0] == "Shape":
      parts = parts[1:]
    if not parts or parts[0] != "String" or parts[-1] not in ("String", "HYP"):
      fail(line, f"its content {parts} should be String (SP String)* [HYP]")
    for a, b in zip(parts, parts[1:]):
      if a == b == "SP" or b == "Shape":
        fail(line, f"its content {parts} should be String (SP String)* [HYP]")
  for string in root.iter(f"{ns}String"):
    if string.get("CONTENT") is None:
      fail(string, "a String needs CONTENT")
    confidence = number(string, "WC", required=False)
    if confidence is not None and not 0 <= confidence <= 1:
      fail(string, f"WC={confidence:g} is not in [0, 1]")
