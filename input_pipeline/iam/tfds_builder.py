"""TFDS builder over a user's IAM download: `iam_handwriting/{word,line,form}`.

IAM cannot be downloaded automatically; point `manual_dir` at the unpacked
download (see input_pipeline/iam/reader.py for the layout):

  python -m input_pipeline.iam.tfds_builder --manual_dir=~/data/iam \
      --data_dir=~/tensorflow_datasets

(all three levels; --configs=line for one), or with the TFDS command line
(which needs apache_beam installed in tensorflow-datasets 4.9.10)

  tfds build input_pipeline/iam/tfds_builder.py --config=line --manual_dir=~/data/iam

or from Python:

  from input_pipeline.iam import tfds_builder  # registers the builder
  ds = tfds.load("iam_handwriting/line", data_dir=..., download_and_prepare_kwargs=dict(
      download_config=tfds.download.DownloadConfig(manual_dir="~/data/iam")))

Images are decoded, cropped (forms) and resized once, then stored as PNG in
TFRecords. Bad images are skipped with a warning (or fail the build, per the
config's `bad_image`).
"""

import dataclasses
import hashlib
import json

from absl import app, flags, logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from input_pipeline.iam import reader

# The defaults of the data.iam_* fields: the named configs are prepared with them.
_DEFAULT = reader.Options(iam_dir="")


@dataclasses.dataclass
class IamConfig(tfds.core.BuilderConfig):
  """Level, scale and split of the prepared dataset (see reader.Options)."""

  level: str = "line"
  scale: float = _DEFAULT.scale
  split: str = _DEFAULT.split
  split_seed: int = _DEFAULT.split_seed
  split_fractions: tuple = _DEFAULT.split_fractions
  bad_image: str = _DEFAULT.bad_image


def _config_fields(level: str, options: reader.Options) -> dict:
  """The `IamConfig` fields of `level` prepared with `options`."""
  return dict(
    level=level,
    scale=options.scale,
    split=options.split,
    split_seed=options.split_seed,
    split_fractions=tuple(options.split_fractions),
    bad_image=options.bad_image,
  )


def builder_config(level: str, options: reader.Options | None = None) -> IamConfig:
  """The named config of `level` if `options` are the defaults, else a config named by a hash."""
  fields = _config_fields(level, options or _DEFAULT)
  if fields == _config_fields(level, _DEFAULT):
    return IamConfig(
      name=level, description=f"IAM {level}s, Aachen splits, scale {_DEFAULT.scale}.", **fields
    )
  digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]
  return IamConfig(name=f"{level}_{digest}", description=f"IAM {level}s: {fields}", **fields)


class IamHandwriting(tfds.core.GeneratorBasedBuilder):
  """The IAM Handwriting Database at word, line or form level."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Word, line and form levels; Aachen splits."}
  BUILDER_CONFIGS = [builder_config(level) for level in reader.LEVELS]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Register at https://fki.tic.heia-fr.ch/databases/iam-handwriting-database,
  download the xml, ascii, forms (formsA-D, formsE-H, formsI-Z), lines and
  words archives, and unpack them into one folder (`manual_dir`) holding
  xml/, ascii/, forms*/ (or formsA-D/ ...), lines/ and words/.
  """

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS's own lookup needs the importlib_resources backport for a package
    # imported from a source tree; this file is the answer either way.
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    # DatasetInfo itself rather than dataset_info_from_configs, which looks for
    # metadata files beside the module (absent under `python -m`).
    return tfds.core.DatasetInfo(
      builder=self,
      description=f"The IAM Handwriting Database: {self.builder_config.description}",
      features=tfds.features.FeaturesDict(
        {
          "id": tfds.features.Text(),
          "form_id": tfds.features.Text(),
          "writer": tfds.features.Text(),
          "image": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
          "text": tfds.features.Text(),
          "segmentation_ok": tfds.features.Scalar(dtype=np.bool_),
        }
      ),
      supervised_keys=("image", "text"),
      homepage="https://fki.tic.heia-fr.ch/databases/iam-handwriting-database",
    )

  def _options(self, manual_dir) -> reader.Options:
    c = self.builder_config
    options = reader.Options(
      iam_dir=str(manual_dir),
      scale=c.scale,
      split=c.split,
      split_seed=c.split_seed,
      split_fractions=tuple(c.split_fractions),
      bad_image=c.bad_image,
    )
    reader.check_options(options)
    return options

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    options = self._options(dl_manager.manual_dir)
    forms = reader.parse_forms(options.iam_dir, need_words=self.builder_config.level == "word")
    return {split: self._generate_examples(options, split, forms) for split in reader.SPLITS}

  def _generate_examples(self, options: reader.Options, split: str, forms):
    level = self.builder_config.level
    loader = reader.BadImageCounter(options.bad_image)
    for record in reader.records(options, level, split, forms):
      image = loader.load(record, options.scale)
      if image is None:
        continue
      yield (
        record.id,
        {
          "id": record.id,
          "form_id": record.form_id,
          "writer": record.writer,
          "image": image[:, :, None],
          "text": record.text,
          "segmentation_ok": record.ok,
        },
      )
    loader.log_summary(f"the {split} {level}s")
    logging.info("IAM %s %ss written.", split, level)


def prepare(manual_dir: str, data_dir: str | None = None, levels=reader.LEVELS):
  """Prepares the named configs of `levels` from the IAM download in `manual_dir`."""
  for level in levels:
    builder = IamHandwriting(config=level, data_dir=data_dir)
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
    )
    logging.info(
      "Prepared %s in %s: %s",
      builder.info.full_name,
      builder.data_dir,
      {k: v.num_examples for k, v in builder.info.splits.items()},
    )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  levels = [level.strip() for level in flags.FLAGS.configs.split(",")]
  unknown = [level for level in levels if level not in reader.LEVELS]
  if unknown:
    raise app.UsageError(f"--configs: {unknown} are not among {reader.LEVELS}.")
  prepare(flags.FLAGS.manual_dir, flags.FLAGS.data_dir, levels)


if __name__ == "__main__":
  flags.DEFINE_string("manual_dir", None, "The unpacked IAM download.", required=True)
  flags.DEFINE_string(
    "data_dir", None, "Where TFDS writes the dataset; unset = ~/tensorflow_datasets."
  )
  flags.DEFINE_string("configs", ",".join(reader.LEVELS), "Comma-separated levels to prepare.")
  app.run(main)
