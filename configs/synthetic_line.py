"""Single synthetic handwritten lines (4-9 words) at IAM's 0.5 scale."""

from configs import default, variants

VARIANTS = variants.Variants(variants.common_keys())


def get_config(arg=None):
  config = default.get_config()
  config.data.level = "line"
  config.data.image_height = 64
  config.data.image_width = 896
  config.data.word_height = 40
  config.data.max_len = 90
  config.data.charset = default.IAM_CHARSET
  config.data.max_rotation = 10.0
  config.train.batch_size = 8
  return VARIANTS.apply(config, arg)
