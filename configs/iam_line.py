"""IAM lines at 0.5 scale (~140 dpi), mixed with synthetic lines of IAM training words.

Needs your IAM download (see input_pipeline/iam/reader.py for the folder layout):

  python -m fphtr_jax.main --config=configs/iam_line.py \
      --config.data.iam_dir=~/data/iam --workdir=/tmp/fphtr_iam_line

The first run prepares the TFDS dataset (input_pipeline/iam/tfds_builder.py) in
data.iam_tfds_dir and caches the word bank of the training split.
"""

from configs import default, variants

# The keys of every IAM config (configs/iam_*.py).
VARIANTS = variants.Variants(
  {
    **variants.common_keys(),
    "iam_dir": variants.Key("data.iam_dir", "the folder of your IAM download"),
    "synthetic": variants.Key("data.synthetic_proba", "share of synthetic examples"),
  }
)


def add_iam_fields(config):
  """The IAM source: its data.iam_* fields are in configs/default.py."""
  data = config.data
  data.source = "iam"
  data.charset = default.IAM_CHARSET + "\n"
  data.synthetic_proba = 0.5  # share of synthetic examples composed from IAM training words
  return config


def get_config(arg=None):
  config = add_iam_fields(default.get_config())
  config.data.level = "line"
  # IAM lines at 0.5 scale are up to ~1200 x 150 px; larger ones are shrunk to fit.
  config.data.image_height = 128
  config.data.image_width = 1152
  config.data.word_height = 64  # synthetic words: ascenders to descenders at 0.5 scale
  config.data.max_len = 90
  config.data.max_rotation = 10.0
  config.eval.num_examples = 1000  # the first 1000 validation lines
  return VARIANTS.apply(config, arg)
