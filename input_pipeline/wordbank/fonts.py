"""Fonts to write with: pip-installed handwriting TTFs, Hershey stroke fonts, user files.

The default fonts are the pip-installed fontpkg-* handwriting families and the
Hershey script stroke fonts; `data.font_paths` and `data.extra_fonts` name
others (see `resolve_fonts`).
"""

from collections.abc import Sequence
import dataclasses
import functools
import importlib.metadata
import importlib.resources
import json
import os
import pathlib

from PIL import ImageFont

# Hershey fonts used by default: the cursive ones. (The others look typeset.)
DEFAULT_HERSHEY_FONTS = ("scripts", "scriptc", "cursive")
# `data.font_paths` entries with this prefix name a Hershey font.
HERSHEY_PREFIX = "hershey:"
# ... and with this one a pip-installed fontpkg family of any category.
FONTPKG_PREFIX = "fontpkg:"
_FONT_SUFFIXES = (".ttf", ".otf")
_FONTPKG_ENTRY_POINTS = "fontpkg.family"


@dataclasses.dataclass(frozen=True)
class FontSource:
  """A font to write with: a TTF/OTF file or a built-in Hershey stroke font."""

  name: str  # file stem, or "hershey-<name>"
  path: str | None = None
  hershey: str | None = None


@dataclasses.dataclass(frozen=True)
class FontMetrics:
  """What a font can draw, and how big its glyphs are.

  Lengths are per unit of scale: per pixel of font size for TTF/OTF, per
  Hershey coordinate unit for Hershey fonts.
  """

  coverage: frozenset  # charset characters with a real glyph (not .notdef)
  ascent: float  # ink above the baseline of tall letters and digits
  x_height: float  # ink above the baseline of short letters (a, c, e, ...)
  joined: bool  # letters connect (cursive), so spacing must stay near 0


def _fontpkg_families() -> dict:
  """{family name: (metadata, files root)} of the pip-installed fontpkg fonts."""
  families = {}
  for entry_point in importlib.metadata.entry_points(group=_FONTPKG_ENTRY_POINTS):
    root = importlib.resources.files(entry_point.value)
    metadata = json.loads((root / "metadata.json").read_text(encoding="utf-8"))
    families[entry_point.name.replace("_", "-")] = (metadata, root)
  return families


def _fontpkg_files(metadata, root) -> list[FontSource]:
  """The font files of one fontpkg family."""
  fonts = []
  for entry in sorted(metadata["files"], key=lambda f: f["path"]):
    path = pathlib.Path(str(root.joinpath(*entry["path"].split("/"))))
    fonts.append(FontSource(name=path.stem, path=str(path)))
  return fonts


def list_default_fonts() -> list[FontSource]:
  """The pip-installed handwriting fonts: fontpkg-* TTFs, then Hershey fonts."""
  fonts = []
  for _, (metadata, root) in sorted(_fontpkg_families().items()):
    # Other fontpkg families (sans, serif, ...) may be installed too.
    if "HANDWRITING" in metadata.get("category", ()):
      fonts.extend(_fontpkg_files(metadata, root))
  fonts.extend(FontSource(name=f"hershey-{name}", hershey=name) for name in DEFAULT_HERSHEY_FONTS)
  return fonts


def resolve_fonts(
  font_paths: str | Sequence[str] | None, extra_fonts: str | Sequence[str] | None = None
) -> list[FontSource]:
  """Fonts named by `data.font_paths` and `data.extra_fonts`.

  Entries are TTF/OTF files, folders (searched recursively), "hershey:NAME"
  (a Hershey stroke font) or "fontpkg:NAME" (every file of a pip-installed
  fontpkg family, e.g. "fontpkg:quicksand" from `pip install
  fontpkg-quicksand`); a string may list several, separated by commas.
  No font_paths gives `list_default_fonts()`; extra_fonts are added to the
  fonts of font_paths (a font already there is not added twice).
  """
  fonts = _fonts_of("data.font_paths", font_paths) if font_paths else list_default_fonts()
  names = {f.name for f in fonts}
  for font in _fonts_of("data.extra_fonts", extra_fonts or ()):
    if font.name not in names:
      fonts.append(font)
      names.add(font.name)
  return fonts


def _fonts_of(field: str, entries: str | Sequence[str]) -> list[FontSource]:
  """The fonts of the entries of config field `field`; see `resolve_fonts`."""
  if isinstance(entries, str):
    entries = _split_entries(entries)
  elif isinstance(entries, os.PathLike):
    entries = [entries]
  fonts = []
  for entry in entries:
    entry = str(entry)
    if entry.startswith(HERSHEY_PREFIX):
      name = entry[len(HERSHEY_PREFIX) :]
      available = _hershey_font_names()
      if name not in available:
        raise ValueError(
          f"{field}: unknown Hershey font {entry!r}; available: "
          + ", ".join(HERSHEY_PREFIX + n for n in available)
        )
      fonts.append(FontSource(name=f"hershey-{name}", hershey=name))
      continue
    if entry.startswith(FONTPKG_PREFIX):
      name = entry[len(FONTPKG_PREFIX) :].replace("_", "-")
      families = _fontpkg_families()
      if name not in families:
        raise ValueError(
          f"{field}: fontpkg family {name!r} is not installed (pip install "
          f"fontpkg-{name}); installed: {', '.join(sorted(families))}."
        )
      fonts.extend(_fontpkg_files(*families[name]))
      continue
    path = pathlib.Path(entry).expanduser()
    if path.is_dir():
      files = sorted(
        p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in _FONT_SUFFIXES
      )
      if not files:
        raise ValueError(f"{field}: folder {path} holds no .ttf or .otf font files.")
    elif path.is_file():
      if path.suffix.lower() not in _FONT_SUFFIXES:
        raise ValueError(f"{field}: {path} is not a .ttf or .otf font file.")
      files = [path]
    else:
      raise ValueError(f"{field}: {path} does not exist.")
    for file in files:
      try:
        ImageFont.truetype(str(file), 20)
      except OSError as e:
        raise ValueError(f"{field}: cannot read font file {file}: {e}") from e
      fonts.append(FontSource(name=file.stem, path=str(file)))
  return fonts


def _split_entries(text: str) -> list[str]:
  """The entries of a comma-separated list of fonts.

  A comma inside an existing file's name (variable fonts are often named so:
  "Fredoka[wdth,wght].ttf") does not split it.
  """
  entries, pending = [], []
  for piece in text.split(","):
    pending.append(piece)
    entry = ",".join(pending).strip()
    if (
      len(pending) == 1
      and entry.startswith((HERSHEY_PREFIX, FONTPKG_PREFIX))
      or pathlib.Path(entry).expanduser().exists()
    ):
      entries.append(entry)
      pending = []
  # What names no existing file stays split, for an error about each piece.
  entries.extend(p.strip() for p in pending)
  return [entry for entry in entries if entry]


@functools.cache
def _hershey_font_names() -> tuple:
  """Names of the Hershey fonts built into the HersheyFonts package."""
  from HersheyFonts import HersheyFonts  # pylint: disable=g-import-not-at-top

  return tuple(HersheyFonts().default_font_names)


@functools.cache
def hershey_font(name: str):
  """(glyphs: {char: glyph}, baseline y) of a built-in Hershey font."""
  from HersheyFonts import HersheyFonts  # pylint: disable=g-import-not-at-top

  font = HersheyFonts()
  font.load_default_font(name)
  return font.all_glyphs, float(font.render_options["base_line"])


@functools.lru_cache(maxsize=512)
def truetype(path: str, size: int, weight: float | None):
  """The TTF/OTF font at `path` in `size` pixels, at `weight` on its "wght" axis (if not None)."""
  font = ImageFont.truetype(path, size)
  if weight is not None:
    font.set_variation_by_axes([weight])
  return font


def weight_range(font: FontSource) -> tuple[float, float] | None:
  """(min, max) of the "wght" axis of a variable font, else None."""
  if font.path is None:
    return None
  try:
    axes = truetype(font.path, 20, None).get_variation_axes()
  except OSError:  # not a variable font
    return None
  for axis in axes:
    if axis["name"] in (b"Weight", "Weight"):
      return float(axis["minimum"]), float(axis["maximum"])
  return None
