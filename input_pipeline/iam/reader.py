"""The IAM Handwriting Database: parse a download into word, line and form records.

IAM is downloaded by hand after registering at
https://fki.tic.heia-fr.ch/databases/iam-handwriting-database. A download
unpacked into one folder looks like:

  forms/a01-000u.png                (or formsA-D/, formsE-H/, formsI-Z/)
  lines/a01/a01-000u/a01-000u-00.png
  words/a01/a01-000u/a01-000u-00-00.png
  xml/a01-000u.xml                  ISO-8859-1, entities in attributes
  ascii/forms.txt, ascii/lines.txt, ascii/words.txt

The xml files give the structure of every form and the texts (the targets);
ascii/lines.txt and ascii/words.txt give the bounding boxes and segmentation
status of lines and words. Form images are cropped to their handwritten part
(the first line's top - 150 px to the last line's bottom + 150 px, full width).

Splits are by form: the Aachen split lists shipped with this package
(aachen_splits/) by default, or a seeded random split of all forms.
"""

import dataclasses
import html.entities
import importlib.resources
import pathlib
import re
import xml.etree.ElementTree as ET

from absl import logging
import numpy as np
from PIL import Image

from input_pipeline import image_io

LEVELS = ("word", "line", "form")
SPLITS = ("train", "validation", "test")
SPLIT_SCHEMES = ("aachen", "random")
BAD_IMAGE_POLICIES = ("skip", "error")
FORM_FOLDERS = ("forms", "formsA-D", "formsE-H", "formsI-Z")
# Rows kept above the first and below the last handwritten line of a form.
FORM_CROP_MARGIN = 150
DEFAULT_SCALE = 0.5
# The XML entities ElementTree knows itself; other HTML entities are resolved first.
_XML_ENTITIES = frozenset(("quot", "amp", "apos", "lt", "gt"))
_ENTITY = re.compile(r"&([A-Za-z][A-Za-z0-9]*);")
_ASCII_ENTITY = re.compile(r"&(?:quot|amp|apos|lt|gt|#\d+|#x[0-9a-fA-F]+);")


@dataclasses.dataclass(frozen=True)
class Options:
  """The `config.data` fields that shape the IAM records (data.iam_*).

  The defaults are those of configs/default.py: the TFDS builder's named
  configs (`tfds_builder.builder_config`) are prepared with them.
  """

  iam_dir: str
  scale: float = DEFAULT_SCALE
  split: str = "aachen"  # aachen | random
  split_seed: int = 0
  split_fractions: tuple = (0.8, 0.1, 0.1)  # train, validation, test; random split only
  skip_err: bool = False  # drop words and lines whose segmentation is "err"
  bad_image: str = "skip"  # skip | error


def options_from_config(data_config) -> Options:
  """Reads and checks the data.iam_* fields; data.iam_dir is required."""
  iam_dir = data_config.iam_dir
  if not iam_dir:
    raise ValueError(
      "data.iam_dir is required with data.source='iam': the folder of your IAM "
      "download (with xml/, ascii/, lines/, ...), e.g. "
      "--config.data.iam_dir=~/data/iam."
    )
  options = Options(
    iam_dir=str(pathlib.Path(iam_dir).expanduser()),
    scale=float(data_config.iam_scale),
    split=str(data_config.iam_split),
    split_seed=int(data_config.iam_split_seed),
    split_fractions=tuple(float(f) for f in data_config.iam_split_fractions),
    skip_err=bool(data_config.iam_skip_err),
    bad_image=str(data_config.iam_bad_image),
  )
  check_options(options)
  return options


def check_options(options: Options):
  if not 0.0 < options.scale <= 1.0:
    raise ValueError(f"data.iam_scale={options.scale} must be in (0, 1].")
  if options.split not in SPLIT_SCHEMES:
    raise ValueError(f"data.iam_split={options.split!r} is not one of {SPLIT_SCHEMES}.")
  check_split_fractions(options.split_fractions, "data.iam_split_fractions")
  if options.bad_image not in BAD_IMAGE_POLICIES:
    raise ValueError(
      f"data.iam_bad_image={options.bad_image!r} is not one of {BAD_IMAGE_POLICIES}."
    )


# --- Records -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Word:
  id: str  # a01-000u-00-00
  text: str
  ok: bool  # segmentation status in ascii/words.txt
  box: tuple  # (x, y, w, h) on the form, full resolution; w, h < 1 when unknown


@dataclasses.dataclass(frozen=True)
class Line:
  id: str  # a01-000u-00
  text: str  # words joined as written, e.g. 'said, "No."'
  ok: bool  # segmentation="ok" in the xml
  box: tuple  # (x, y, w, h) on the form, full resolution
  words: tuple  # of Word


@dataclasses.dataclass(frozen=True)
class Form:
  id: str  # a01-000u
  writer: str
  lines: tuple  # of Line, top to bottom

  @property
  def text(self) -> str:
    return "\n".join(line.text for line in self.lines)

  def crop_rows(self, height: int) -> tuple[int, int]:
    """(top, bottom) rows of the handwritten part, bottom exclusive, in [0, height]."""
    top = min(line.box[1] for line in self.lines)
    bottom = max(line.box[1] + line.box[3] for line in self.lines)
    return max(0, top - FORM_CROP_MARGIN), min(height, bottom + FORM_CROP_MARGIN)


@dataclasses.dataclass(frozen=True)
class Record:
  """One example: an image file (cropped for forms) and its text."""

  id: str
  level: str
  form_id: str
  writer: str
  text: str
  ok: bool  # segmentation status (forms: every line ok)
  image_path: str
  form: Form | None = None  # forms only: for the crop


def _malformed(path, number: int, line: str, expected: str) -> ValueError:
  return ValueError(
    f"{path}, line {number}: malformed entry {line.strip()!r}; expected {expected}."
  )


def _data_lines(path: pathlib.Path):
  """(line number, text) of the non-comment, non-blank lines of an ascii file."""
  if not path.is_file():
    raise FileNotFoundError(
      f"{path} is missing: the IAM download's ascii/ folder must hold {path.name}."
    )
  with open(path, encoding="latin-1") as f:
    for number, line in enumerate(f, 1):
      if line.strip() and not line.startswith("#"):
        yield number, line


def _ints(fields, path, number, line, expected):
  try:
    return [int(f) for f in fields]
  except ValueError:
    raise _malformed(path, number, line, expected) from None


def _unescape_ascii(text: str) -> str:
  return _ASCII_ENTITY.sub(lambda m: html.unescape(m.group(0)), text)


def parse_forms_txt(path) -> dict[str, str]:
  """ascii/forms.txt -> {form id: writer id}."""
  path = pathlib.Path(path)
  expected = "'id writer sentences segmentation lines lines_ok words words_ok'"
  forms = {}
  for number, line in _data_lines(path):
    fields = line.split()
    if len(fields) != 8:
      raise _malformed(path, number, line, expected)
    _ints(fields[4:], path, number, line, expected)
    forms[fields[0]] = fields[1]
  return forms


def parse_lines_txt(path) -> dict[str, tuple]:
  """ascii/lines.txt -> {line id: (ok, (x, y, w, h), text)}."""
  path = pathlib.Path(path)
  expected = "'id ok|err graylevel components x y w h word|word|...'"
  lines = {}
  for number, line in _data_lines(path):
    fields = line.split(" ", 8)
    if len(fields) != 9 or fields[1] not in ("ok", "err"):
      raise _malformed(path, number, line, expected)
    values = _ints(fields[2:8], path, number, line, expected)
    text = " ".join(_unescape_ascii(fields[8].rstrip("\r\n")).split("|"))
    lines[fields[0]] = (fields[1] == "ok", tuple(values[2:6]), text)
  return lines


def parse_words_txt(path) -> dict[str, tuple]:
  """ascii/words.txt -> {word id: (ok, (x, y, w, h), text)}.

  Accepts both shapes: the data lines of the download,
    'a01-000u-00-00 ok 154 408 768 27 51 AT A'
  and the shape its header documents, with a component count after the grey level,
    'a01-000u-00-00 ok 154 1 408 768 27 51 AT A'.
  """
  path = pathlib.Path(path)
  expected = "'id ok|er graylevel [components] x y w h tag text'"
  words = {}
  for number, line in _data_lines(path):
    fields = line.rstrip("\r\n").split(" ")
    if len(fields) < 9 or fields[1] not in ("ok", "er", "err"):
      raise _malformed(path, number, line, expected)
    # The tag is never a number; the height is: it tells the two shapes apart.
    with_components = len(fields) >= 10 and fields[7].lstrip("-").isdigit()
    first_box = 4 if with_components else 3
    values = _ints(fields[2 : first_box + 4], path, number, line, expected)
    text = _unescape_ascii(" ".join(fields[first_box + 5 :]))
    words[fields[0]] = (fields[1] == "ok", tuple(values[-4:]), text)
  return words


def _resolve_entities(text: str) -> str:
  """Replaces HTML entities the XML parser does not know by their characters."""

  def replace(match):
    name = match.group(1)
    if name in _XML_ENTITIES or name not in html.entities.name2codepoint:
      return match.group(0)
    return f"&#{html.entities.name2codepoint[name]};"

  return _ENTITY.sub(replace, text)


def parse_form_xml(path, lines_txt: dict, words_txt: dict | None) -> Form:
  """xml/<form id>.xml -> Form, with boxes and status from the ascii files."""
  path = pathlib.Path(path)
  raw = path.read_bytes()
  match = re.match(rb"<\?xml[^>]*encoding=[\"']([\w-]+)[\"']", raw)
  text = raw.decode(match.group(1).decode() if match else "iso-8859-1")
  text = re.sub(r"^<\?xml[^>]*\?>", "", _resolve_entities(text).lstrip("\ufeff"))
  try:
    root = ET.fromstring(text)
  except ET.ParseError as e:
    raise ValueError(f"{path}: not valid XML ({e}).") from None
  form = root if root.tag == "form" else root.find("form")
  part = root.find("handwritten-part")
  if form is None or part is None or "id" not in form.attrib:
    raise ValueError(f"{path}: expected a <form id=...> with a <handwritten-part>.")
  lines = []
  for element in part.iter("line"):
    line_id = element.get("id")
    if line_id is None or "text" not in element.attrib:
      raise ValueError(f"{path}: a <line> lacks its id or text attribute.")
    if line_id not in lines_txt:
      raise ValueError(f"{path}: line {line_id} is not in ascii/lines.txt.")
    _, box, _ = lines_txt[line_id]
    words = []
    for word in element.iter("word"):
      word_id = word.get("id")
      ok, word_box = False, (-1, -1, -1, -1)
      if words_txt is not None:
        if word_id not in words_txt:
          raise ValueError(f"{path}: word {word_id} is not in ascii/words.txt.")
        ok, word_box, _ = words_txt[word_id]
      words.append(Word(id=word_id, text=word.get("text", ""), ok=ok, box=word_box))
    lines.append(
      Line(
        id=line_id,
        text=element.get("text"),
        ok=element.get("segmentation", "ok") == "ok",
        box=box,
        words=tuple(words),
      )
    )
  if not lines:
    raise ValueError(f"{path}: the <handwritten-part> has no <line>.")
  return Form(id=form.get("id"), writer=form.get("writer-id", ""), lines=tuple(lines))


def required_dir(root: pathlib.Path, name: str, what: str) -> pathlib.Path:
  """root/name, which must be a folder; else FileNotFoundError saying it should hold `what`."""
  path = root / name
  if not path.is_dir():
    raise FileNotFoundError(
      f"{path} is missing: the IAM download must hold {what} in "
      f"{name}/ (see input_pipeline/iam/reader.py for the layout)."
    )
  return path


def parse_forms(iam_dir, *, need_words: bool = False) -> list[Form]:
  """Every form of an IAM download, in id order."""
  root = pathlib.Path(iam_dir).expanduser()
  if not root.is_dir():
    raise FileNotFoundError(f"data.iam_dir={str(iam_dir)!r} is not a folder.")
  xml_dir = required_dir(root, "xml", "the form descriptions (a01-000u.xml, ...)")
  ascii_dir = required_dir(root, "ascii", "forms.txt, lines.txt and words.txt")
  writers = parse_forms_txt(ascii_dir / "forms.txt")
  lines_txt = parse_lines_txt(ascii_dir / "lines.txt")
  words_txt = parse_words_txt(ascii_dir / "words.txt") if need_words else None
  paths = sorted(xml_dir.glob("*.xml"))
  if not paths:
    raise FileNotFoundError(f"{xml_dir} holds no .xml files.")
  forms = []
  for path in paths:
    form = parse_form_xml(path, lines_txt, words_txt)
    if form.id not in writers:
      raise ValueError(f"{path}: form {form.id} is not in {ascii_dir / 'forms.txt'}.")
    forms.append(form)
  return forms


# --- Splits --------------------------------------------------------------------


def aachen_split_ids() -> dict[str, frozenset]:
  """{split: form ids} of the Aachen splits (747 / 116 / 336 forms)."""
  folder = importlib.resources.files("input_pipeline.iam") / "aachen_splits"
  splits = {}
  for split in SPLITS:
    text = (folder / f"{split}.uttlist").read_text()
    splits[split] = frozenset(line.strip() for line in text.splitlines() if line.strip())
  return splits


def check_split_fractions(fractions, field: str):
  """Raises ValueError naming `field` unless `fractions` are 3 shares >= 0 that sum to 1."""
  if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(sum(fractions), 1.0):
    raise ValueError(
      f"{field}={fractions} must be 3 fractions (train, validation, test) >= 0 that sum to 1."
    )


def random_split_ids(form_ids, seed: int, fractions) -> dict[str, frozenset]:
  """A seeded random split of `form_ids` by the (train, validation, test) fractions."""
  ids = sorted(form_ids)
  order = np.random.default_rng(seed).permutation(len(ids))
  counts = np.floor(np.cumsum(fractions) * len(ids) + 0.5).astype(int)
  bounds = [0, counts[0], counts[1], len(ids)]
  return {
    split: frozenset(ids[i] for i in order[bounds[k] : bounds[k + 1]])
    for k, split in enumerate(SPLITS)
  }


def split_ids(options: Options, form_ids) -> dict[str, frozenset]:
  if options.split == "aachen":
    return aachen_split_ids()
  return random_split_ids(form_ids, options.split_seed, options.split_fractions)


# --- Records per level ---------------------------------------------------------


def _form_images(root: pathlib.Path) -> dict[str, pathlib.Path]:
  folders = [root / name for name in FORM_FOLDERS if (root / name).is_dir()]
  if not folders:
    raise FileNotFoundError(f"{root} has none of the form image folders {FORM_FOLDERS}.")
  return {p.stem: p for folder in folders for p in folder.glob("*.png")}


def nested_image(root: pathlib.Path, folder: str, item_id: str) -> str:
  """Path of a line or word image in the download: root/folder/a01/a01-000u/<item_id>.png."""
  prefix, form = item_id.split("-")[0], "-".join(item_id.split("-")[:2])
  return str(root / folder / prefix / form / f"{item_id}.png")


def records(
  options: Options, level: str, split: str, forms: list[Form] | None = None
) -> list[Record]:
  """The records of `level` in `split`, in form order.

  Lines (and their words) whose segmentation is "err" are dropped when
  options.skip_err; forms always hold all their lines. Words without a box
  (no image in the download) are left out.
  """
  if level not in LEVELS:
    raise ValueError(f"data.level={level!r} is not one of {LEVELS}.")
  if split not in SPLITS:
    raise ValueError(f"split={split!r} is not one of {SPLITS}.")
  root = pathlib.Path(options.iam_dir).expanduser()
  if forms is None:
    forms = parse_forms(root, need_words=level == "word")
  ids = split_ids(options, [f.id for f in forms])[split]
  if level == "form":
    images = _form_images(root)
  else:
    required_dir(root, f"{level}s", f"the {level} images ({level}s/a01/a01-000u/...)")
  result = []
  for form in forms:
    if form.id not in ids:
      continue
    if level == "form":
      result.append(
        Record(
          id=form.id,
          level=level,
          form_id=form.id,
          writer=form.writer,
          text=form.text,
          ok=all(line.ok for line in form.lines),
          image_path=str(images.get(form.id, root / FORM_FOLDERS[0] / f"{form.id}.png")),
          form=form,
        )
      )
      continue
    for line in form.lines:
      if options.skip_err and not line.ok:
        continue
      if level == "line":
        result.append(
          Record(
            id=line.id,
            level=level,
            form_id=form.id,
            writer=form.writer,
            text=line.text,
            ok=line.ok,
            image_path=nested_image(root, "lines", line.id),
          )
        )
        continue
      for word in line.words:
        if word.box[2] < 1 or word.box[3] < 1 or (options.skip_err and not word.ok):
          continue
        result.append(
          Record(
            id=word.id,
            level=level,
            form_id=form.id,
            writer=form.writer,
            text=word.text,
            ok=word.ok,
            image_path=nested_image(root, "words", word.id),
          )
        )
  return result


def check_record_texts(records_, charset: str, max_chars: int, *, skip_unknown: bool):
  """Records whose text data.charset can write; raises naming the first that it cannot.

  With skip_unknown, records with other characters are left out (and counted
  in the log) instead.
  """
  allowed = set(charset)
  kept, skipped = [], 0
  for record in records_:
    unknown = sorted(set(record.text) - allowed)
    if unknown:
      if skip_unknown:
        skipped += 1
        continue
      raise ValueError(
        f"IAM {record.level} {record.id} has characters {unknown} that are not in data.charset "
        f"(text {record.text!r}); add them to data.charset, or set "
        "data.skip_unknown_chars=True to leave such records out."
      )
    if len(record.text) > max_chars:
      raise ValueError(
        f"IAM {record.level} {record.id} has {len(record.text)} characters, more than "
        f"data.max_len - 2 = {max_chars}; raise data.max_len."
      )
    kept.append(record)
  if skipped:
    logging.warning(
      "Left out %d IAM %ss with characters outside data.charset.", skipped, records_[0].level
    )
  return kept


# --- Images --------------------------------------------------------------------


def _resize(image: Image.Image, scale: float) -> Image.Image:
  if scale == 1.0:
    return image
  size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
  return image.resize(size, Image.Resampling.BOX)


def load_image(record: Record, scale: float = DEFAULT_SCALE) -> np.ndarray:
  """uint8 [H, W] grey image of `record` (forms cropped), resized by `scale`.

  Raises image_io.BadImageError naming the file when it is missing, empty or unreadable.
  """
  path = record.image_path
  image = image_io.open_image(path).convert("L")
  if record.form is not None:
    top, bottom = record.form.crop_rows(image.height)
    if bottom <= top:
      raise image_io.BadImageError(
        f"{path}: the lines of {record.id} lie outside the image ({image.width}x{image.height})."
      )
    image = image.crop((0, top, image.width, bottom))
  return np.asarray(_resize(image, scale), np.uint8)


class BadImageCounter:
  """Applies data.iam_bad_image: 'error' re-raises, 'skip' warns and counts."""

  def __init__(self, policy: str):
    self.policy = policy
    self.skipped = []

  def load(self, record: Record, scale: float) -> np.ndarray | None:
    try:
      return load_image(record, scale)
    except image_io.BadImageError as e:
      if self.policy == "error":
        raise image_io.BadImageError(
          f"{e} Set data.iam_bad_image='skip' to leave such images out."
        ) from None
      logging.warning("Skipping IAM %s %s: %s", record.level, record.id, e)
      self.skipped.append(record.id)
      return None

  def log_summary(self, what: str):
    if self.skipped:
      logging.warning(
        "Skipped %d bad images of %s: %s",
        len(self.skipped),
        what,
        ", ".join(self.skipped[:20]) + (" ..." if len(self.skipped) > 20 else ""),
      )
