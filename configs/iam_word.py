"""IAM words at 0.5 scale, mixed with synthetic single words (IAM training words).

  python -m fphtr_jax.main --config=configs/iam_word.py \
      --config.data.iam_dir=~/data/iam --workdir=/tmp/fphtr_iam_word
"""

from configs import iam_line


def get_config(arg=None):
  config = iam_line.get_config()
  config.data.level = "word"
  config.data.image_height = 96
  config.data.image_width = 512
  config.data.max_len = 55
  # Synthetic words are IAM words again, only augmented: a smaller share.
  config.data.synthetic_proba = 0.2
  config.train.batch_size = 32
  config.eval.batch_size = 32
  config.eval.num_examples = 2048
  return iam_line.VARIANTS.apply(config, arg)
