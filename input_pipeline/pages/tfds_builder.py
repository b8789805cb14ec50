"""TFDS builder over a folder of transcribed pages: `pages_dataset/{word,line,form}`.

`manual_dir` is the folder (PAGE-XML, ALTO, image + text pairs; see
input_pipeline/pages/reader.py). The training pipeline prepares the config it
needs itself (`builder_config`, named by a hash of the data.pages_* options
and of the folder's files, so an edited export is prepared anew). The named
configs (the default options) can also be built by hand:

  python -m input_pipeline.tfds_build input_pipeline/pages/tfds_builder.py --config=line \\
      --manual_dir=~/data/my_export --data_dir=~/tensorflow_datasets

or loaded from Python:

  from input_pipeline.pages import tfds_builder  # registers the builder
  ds = tfds.load("pages_dataset/line", split="train", data_dir=...,
      download_and_prepare_kwargs=dict(download_config=tfds.download.DownloadConfig(
          manual_dir="~/data/my_export")))

Images are decoded, made grey, cut (lines, words) and scaled once, then
stored as PNG in TFRecords with their text and ids. Bad records are skipped
with a warning (or fail the build, per the config's `bad_record`).
"""

import dataclasses
import hashlib
import json

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from input_pipeline.pages import reader

# The defaults of the data.pages_* fields: the named configs are prepared with them.
_DEFAULT = reader.Options()


@dataclasses.dataclass
class PagesConfig(tfds.core.BuilderConfig):
  """Level, scale, splits, text normalisation and bad-record policy (see reader.Options)."""

  level: str = "line"
  scale: float = _DEFAULT.scale
  split_dir: str = ""  # "" = a random split by page
  split_seed: int = _DEFAULT.split_seed
  split_fractions: tuple = _DEFAULT.split_fractions
  unicode_normalization: str = _DEFAULT.unicode_normalization
  bad_record: str = _DEFAULT.bad_record
  max_pixels: int = _DEFAULT.max_pixels
  # Of the folder's files and the split lists: another export, another copy.
  fingerprint: str = ""


def _config_fields(level: str, options: reader.Options, fingerprint: str) -> dict:
  """The `PagesConfig` fields of `level` prepared with `options`."""
  return dict(
    level=level,
    scale=options.scale,
    split_dir=options.split_dir or "",
    split_seed=options.split_seed,
    split_fractions=tuple(options.split_fractions),
    unicode_normalization=options.unicode_normalization,
    bad_record=options.bad_record,
    max_pixels=options.max_pixels,
    fingerprint=fingerprint,
  )


def fingerprint(options: reader.Options) -> str:
  """What the prepared copy of options.pages_dir depends on besides the options."""
  return reader.folder_fingerprint(options.pages_dir) + reader.split_fingerprint(options)


def builder_config(
  level: str, options: reader.Options | None = None, fingerprint_: str = ""
) -> PagesConfig:
  """The named config of `level` for the default options; else a config named by a hash."""
  fields = _config_fields(level, options or _DEFAULT, fingerprint_)
  if fields == _config_fields(level, _DEFAULT, ""):
    return PagesConfig(name=level, description=f"Page {level}s, default options.", **fields)
  digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]
  return PagesConfig(name=f"{level}_{digest}", description=f"Page {level}s: {fields}", **fields)


class PagesDataset(tfds.core.GeneratorBasedBuilder):
  """A folder of PAGE-XML, ALTO or image + text pages at word, line or form level."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "PAGE-XML, ALTO and image + text pairs; word, line, form levels."}
  BUILDER_CONFIGS = [builder_config(level) for level in reader.LEVELS]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Point `manual_dir` at the folder of your exported pages: PAGE-XML or ALTO
  files with their images, or images with a .gt.txt/.txt beside each
  (see input_pipeline/pages/reader.py).
  """

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # As in the IAM builder: TFDS's own lookup fails for a module of a source tree.
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=f"Transcribed pages: {self.builder_config.description}",
      features=tfds.features.FeaturesDict(
        {
          "id": tfds.features.Text(),
          "page_id": tfds.features.Text(),
          "source": tfds.features.Text(),
          "image": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
          "text": tfds.features.Text(),
        }
      ),
      supervised_keys=("image", "text"),
    )

  def _options(self, manual_dir) -> reader.Options:
    c = self.builder_config
    options = reader.Options(
      pages_dir=str(manual_dir),
      level=c.level,
      scale=c.scale,
      split_dir=c.split_dir or None,
      split_seed=c.split_seed,
      split_fractions=tuple(c.split_fractions),
      unicode_normalization=c.unicode_normalization,
      bad_record=c.bad_record,
      max_pixels=c.max_pixels,
    )
    reader.check_options(options)
    return options

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    options = self._options(dl_manager.manual_dir)
    pages, skipped = reader.read_folder(options.pages_dir, options)
    ids = reader.split_ids(options, reader.all_page_ids(pages, skipped))
    return {
      split: self._generate_examples(options, reader.records(pages, options.level, ids[split]))
      for split in reader.SPLITS
    }

  def _generate_examples(self, options: reader.Options, records):
    skipped = reader.Skipped(options.bad_record)
    images = reader.RecordImages(options, skipped)
    for record in records:
      image = images.load(record)
      if image is None:
        continue
      yield (
        record.id,
        {
          "id": record.id,
          "page_id": record.page_id,
          "source": record.where,
          "image": image[:, :, None].astype(np.uint8),
          "text": record.text,
        },
      )
    skipped.log_summary(f"the {options.level} images")
    logging.info("%d %ss written.", len(records) - skipped.count, options.level)
