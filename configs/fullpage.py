"""The full-page recipe of configs/cpu_fullpage.py at the paper's scale, for a GPU or TPU.

ResNet34 with the finer last stage, a 6-layer pre-norm decoder, pages of up
to 25 lines (32 px words, IAM at 0.4 of its 300 dpi, on a 1536x1280 canvas:
40 to 250 words, up to 2000 tokens), the same curriculum (one line first,
full pages from a quarter of the run on), warmup, cosine decay, label
smoothing, held-out fonts and guided attention. The default of
launch/train.sh where JAX sees a GPU or TPU. Its measured runs are in
docs/experiments/fullpage_gpu.md.

  bash launch/gpu_local.sh configs/fullpage.py   # all GPUs of this machine
  # bfloat16 compute (parameters and optimizer state stay float32):
  bash launch/gpu_local.sh configs/fullpage.py:bf16 workdirs/fullpage_bf16
  # The shortened run of docs/experiments/fullpage_gpu.md, on the earlier canvas:
  python -m fphtr_jax.main --config=configs/fullpage.py:iam_forms,short,bf16,wide_hands \
      --workdir=workdirs/fullpage_2k
"""

from configs import cpu_fullpage, variants

# The keys and variants of cpu_fullpage.py, and a shortened schedule.
VARIANTS = variants.Variants(
  cpu_fullpage.VARIANTS.keys,
  {
    **cpu_fullpage.VARIANTS.variants,
    "iam_forms": variants.Variant(
      "the earlier canvas, of the one H200 run: pages like IAM's forms at half resolution, "
      "40 px words on 1024x1280, 40-70 words (up to 14 lines), up to 700 tokens",
      fields={
        "data.image_height": 1024,
        "data.word_height": 40,
        "data.words_per_form": (40, 70),
        "data.max_len": 700,
      },
    ),
    "short": variants.Variant(
      "the 2000-step schedule of the one H200 run: evaluations at steps 1000 and 2000 "
      "on 64 pages, a checkpoint at the end only",
      "steps=2000,warmup=200,curriculum=800,eval_every=1000,eval_examples=64,ckpt_every=100000",
    ),
  },
)


def get_config(arg=None):
  # The recipe's optimisation, layout and held-out fonts, at the paper's scale.
  config = cpu_fullpage.get_config()
  config.model.encoder = "resnet34"
  config.model.encoder_width = 64
  config.model.num_layers = 6
  config.model.dropout_rate = 0.1

  # Up to 25 lines: 32 px words with the config's line gaps (12-49 px at 40 px
  # words, so 10-39 here) take 42-71 px a line, and 1536 rows less the
  # margins hold 20-34 of them. A line (data.line_width: 600-799 px here)
  # holds 10-15 of the fonts' words, about 85 characters, as wide as 8-10
  # words of real handwriting at the same height.
  config.data.image_height = 1536
  config.data.image_width = 1280
  config.data.word_height = 32
  config.data.words_per_form = (40, 250)
  config.data.max_len = 2000  # 25 lines of up to 80 characters

  # In fractions of the run, as in cpu_fullpage.py.
  config.train.num_steps = 60_000
  num_steps = config.train.get_ref("num_steps")
  config.train.warmup_steps = num_steps // 30  # 2000
  config.data.curriculum_steps = num_steps // 4  # 15000
  config.eval.every_steps = (num_steps + 29) // 30  # 2000
  config.checkpoint.every_steps = (num_steps + 59) // 60  # 1000
  config.train.batch_size = 32
  config.train.learning_rate = 4e-4
  config.train.log_every_steps = 100

  config.eval.num_examples = 256
  config.eval.batch_size = 32
  return VARIANTS.apply(config, arg)
