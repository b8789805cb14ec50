"""Seconds-long smoke config: tiny images, tiny encoder, one decoder layer.

Used by the tests; also handy to check an installation:
  python -m fphtr_jax.main --config=configs/tiny.py --workdir=/tmp/tiny
"""

from configs import default


def get_config():
  config = default.get_config()

  config.model.encoder_width = 8
  config.model.d_model = 32
  config.model.num_layers = 1
  config.model.num_heads = 2
  config.model.mlp_dim = 64
  config.model.dropout_rate = 0.0

  config.data.level = "line"
  config.data.image_height = 32
  config.data.image_width = 128
  config.data.word_height = 16
  config.data.words_per_line = (1, 3)
  config.data.max_len = 32
  config.data.bank_size = 500
  config.data.augment = False
  config.data.prefetch = 1

  config.train.num_steps = 10
  config.train.rng_impl = "unsafe_rbg"
  config.train.batch_size = 8
  config.train.learning_rate = 1e-3
  config.train.log_every_steps = 5

  config.eval.every_steps = 10
  config.eval.num_examples = 8
  config.eval.batch_size = 8
  config.eval.num_images = 2

  config.checkpoint.every_steps = 5
  config.checkpoint.max_to_keep = 2
  return config
