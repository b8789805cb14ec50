"""Full IAM pages (the handwritten part) at 0.5 scale, mixed with synthetic pages.

  python -m fphtr_jax.main --config=configs/iam_form.py \
      --config.data.iam_dir=~/data/iam --workdir=/tmp/fphtr_iam_form
"""

from configs import iam_line


def get_config(arg=None):
  config = iam_line.get_config()
  config.data.level = "form"
  # The handwritten part of a form at 0.5 scale is ~1240 px wide and up to
  # ~1100 px high; larger pages are shrunk to fit.
  config.data.image_height = 1024
  config.data.image_width = 1280
  config.data.max_len = 700
  config.data.max_rotation = 2.0
  config.data.words_per_form = (7, 70)
  config.eval.num_examples = 116  # the Aachen validation forms
  return iam_line.VARIANTS.apply(config, arg)
