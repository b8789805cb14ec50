"""The full-page recipe sized for a 2-core CPU; launch/train.sh's default on a CPU.

The FPHTR model, narrowed for a CPU, trained with guided attention (the
synthetic pages say where each character is, and a training loss pulls the
decoder's cross-attention there), a curriculum (one line at first, full pages
of two to four lines from 40% of the run on), a finer grid of columns in the
encoder's last stage, a pre-norm decoder, AdamW on batches of 4 pages (more,
smaller steps) with warmup and cosine decay, and label smoothing; one
training page in ten is a single line. Training writes in the handwriting
fonts and in sans-serif and Hershey stroke fonts (printed letters); three
handwriting font families are held out of training: the eval pages are
written only in them, so the CER measures reading unseen handwriting, not
remembering the fonts. The recipe is described in docs/training.md; its
measured results and the variants tried are in
docs/experiments/cpu_fullpage.md.

  bash launch/train.sh configs/cpu_fullpage.py
  # A slower CPU: the whole schedule (warmup, curriculum, evaluations,
  # checkpoints) scales with num_steps.
  bash launch/train.sh configs/cpu_fullpage.py --config.train.num_steps=6000

configs/fullpage.py is the same recipe at the paper's scale for a GPU or TPU.
"""

from configs import default

# Font families that training never sees; the eval split is written in them.
HELDOUT_FONTS = ("IndieFlower-Regular", "ShadowsIntoLight", "Satisfy-Regular")
# For training only, more letter shapes of print writing: rounded sans fonts,
# narrow or small-x-height sans fonts, and Hershey pen-stroke print letters.
EXTRA_FONTS = (
  "fontpkg:comfortaa",
  "fontpkg:fredoka",
  "fontpkg:nunito",
  "fontpkg:quicksand",
  "fontpkg:varela-round",
  "fontpkg:yanone-kaffeesatz",
  "fontpkg:josefin-sans",
  "fontpkg:smooch-sans",
  "hershey:futural",
  "hershey:rowmans",
  "hershey:timesi",
)


def get_config():
  config = default.get_config()

  config.model.encoder = "resnet18"
  config.model.encoder_width = 32  # channels 32-256: a quarter of the compute
  config.model.encoder_last_stride = (2, 1)  # 32 x 16 px cells: about a letter each
  config.model.d_model = 256
  config.model.num_layers = 4
  config.model.num_heads = 4
  config.model.mlp_dim = 1024
  config.model.dropout_rate = 0.0  # endless fresh pages: nothing to overfit
  config.model.pre_norm = True

  config.data.level = "form"
  config.data.image_height = 256
  config.data.image_width = 512
  config.data.word_height = 40  # IAM's text size at half resolution
  config.data.words_per_line = (4, 9)  # the curriculum starts at 4 words
  config.data.words_per_form = (16, 40)  # full pages: 3 or 4 lines
  config.data.max_len = 160
  config.data.single_line_pages = 0.1  # lone lines too, not only pages
  config.data.heldout_fonts = HELDOUT_FONTS
  config.data.extra_fonts = ",".join(EXTRA_FONTS)

  # The schedule is in fractions of the run: `--config.train.num_steps=N`
  # scales warmup, curriculum, evaluations and checkpoints with it (to fit
  # the time on a slower or faster CPU); any of them can still be set alone.
  config.train.num_steps = 11000
  num_steps = config.train.get_ref("num_steps")
  config.train.warmup_steps = num_steps // 11  # 1000
  config.data.curriculum_steps = num_steps * 2 // 5  # 4400: full pages from 40% on
  config.eval.every_steps = (num_steps + 9) // 10  # 1100 (a tenth, at least 1)
  config.checkpoint.every_steps = (num_steps + 9) // 10
  config.train.batch_size = 4  # a step costs in proportion: twice the steps of 8
  config.train.optimizer = "adamw"
  config.train.learning_rate = 6e-4
  config.train.weight_decay = 0.01
  config.train.schedule = "cosine"
  config.train.grad_clip_norm = 1.0
  config.train.label_smoothing = 0.1
  config.train.attention_loss_weight = 1.0  # guided attention: shows where to read
  config.train.attention_sigma = 1.0
  config.train.rng_impl = "unsafe_rbg"
  config.train.log_every_steps = 25

  config.eval.num_examples = 64
  config.eval.batch_size = 16
  return config
