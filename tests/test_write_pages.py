"""input_pipeline.write_pages: synthetic pages as a PAGE-XML folder that the pages source reads."""

from lxml import etree
import numpy as np
from PIL import Image
import pytest

from fphtr_jax import page_export
from input_pipeline import write_pages
from input_pipeline.pages import reader

INK = 200  # darker than this is ink (the pages' ink is black to mid grey, the paper white)


@pytest.fixture(scope="module")
def written(tmp_path_factory, bank_cache_dir):
  """(folder, summary) of 3 + 1 + 1 two-to-three-line pages of the tiny config's eval bank."""
  from configs import tiny

  config = tiny.get_config()
  config.data.cache_dir = bank_cache_dir
  config.data.level = "form"
  config.data.image_height, config.data.image_width = 96, 192
  config.data.words_per_line = (1, 3)
  config.data.words_per_form = (3, 6)
  folder = tmp_path_factory.mktemp("written") / "pages"
  summary = write_pages.write_pages(config, str(folder), (3, 1, 1), seed=3)
  return folder, summary


def test_pages_validate_and_read_back_to_their_text(written):
  folder, summary = written
  assert summary["pages"] == {"train": 3, "validation": 1, "test": 1}
  schema = page_export.page_schema()
  for path in sorted(folder.glob("page*.xml")):
    schema.assertValid(etree.parse(str(path)))
  options = reader.Options(pages_dir=str(folder), level="line", split_dir=str(folder / "splits"))
  pages, skipped = reader.read_folder(str(folder), options)
  assert not skipped.records and [p.id for p in pages] == write_pages.page_ids(5)
  assert sum(len(p.lines) for p in pages) == summary["lines"]
  ids = reader.split_ids(options, reader.all_page_ids(pages, skipped))
  assert ids == {
    "train": {"page0000", "page0001", "page0002"},
    "validation": {"page0003"},
    "test": {"page0004"},
  }
  for page in pages:
    image = np.asarray(Image.open(folder / f"{page.id}.png"))
    assert image.shape == (96, 192) and image.dtype == np.uint8
    for line in page.lines:
      assert line.text.strip()
      left, top, right, bottom = _box(line.polygon)
      assert 0 <= left < right <= 192 and 0 <= top < bottom <= 96
      assert image[top:bottom, left:right].min() < INK  # the box holds ink


def test_line_boxes_cover_the_ink(written):
  folder, _ = written
  options = reader.Options(pages_dir=str(folder), level="line")
  pages, _ = reader.read_folder(str(folder), options)
  for page in pages:
    ink = np.asarray(Image.open(folder / f"{page.id}.png")) < INK
    covered = np.zeros_like(ink)
    for line in page.lines:
      left, top, right, bottom = _box(line.polygon)
      covered[top:bottom, left:right] = True
    assert ink[covered].sum() >= 0.95 * ink.sum()


def test_split_counts_are_checked():
  assert write_pages.parse_splits("10,2,3") == (10, 2, 3)
  for bad in ("10,2", "a,b,c", "0,1,1", "5,-1,1"):
    with pytest.raises(ValueError, match=rf"--splits={bad!r}"):
      write_pages.parse_splits(bad)


def _box(points) -> tuple[int, int, int, int]:
  xs, ys = [x for x, _ in points], [y for _, y in points]
  return min(xs), min(ys), max(xs) + 1, max(ys) + 1
