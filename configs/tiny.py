"""Seconds-long smoke config: tiny images, tiny encoder, one decoder layer.

Used by the tests; also handy to check an installation:
  python -m fphtr_jax.main --config=configs/tiny.py --workdir=/tmp/tiny
  python -m fphtr_jax.main --config=configs/tiny.py:steps=20,lr=0.003 --workdir=/tmp/tiny20

`configs/tiny.py:sweep` is a sweep of three tiny runs: two seeds, one of them
also trained longer (docs/experiments/README.md). Seeds and steps leave the
compiled steps as they are, so the three runs compile once:
  python -m fphtr_jax.sweep --config=configs/tiny.py:sweep --workdir_root=/tmp/tiny_sweep
"""

from configs import default, variants

VARIANTS = variants.Variants(
  variants.common_keys(), sweeps={"sweep": [dict(seed=1), dict(seed=2), dict(seed=2, steps=15)]}
)


def get_sweep(arg=None):
  return VARIANTS.sweep(arg)


def get_config(arg=None):
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
  return VARIANTS.apply(config, arg)
