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
  bash launch/train.sh configs/cpu_fullpage.py:steps=6000 workdirs/cpu_fullpage_6k
  # The variants of docs/experiments/cpu_fullpage.md, as config arguments:
  bash launch/train.sh configs/cpu_fullpage.py:b8,fonts=sans workdirs/cpu_fullpage_sans

configs/fullpage.py is the same recipe at the paper's scale for a GPU or TPU.
"""

from configs import default, variants

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
# The earlier versions of the recipe: the five rounded sans fonts only.
SANS_FONTS = EXTRA_FONTS[:5]

VARIANTS = variants.Variants(
  {
    **variants.common_keys(),
    "curriculum": variants.Key("data.curriculum_steps", "steps from one line to full pages"),
    "single_lines": variants.Key("data.single_line_pages", "share of one-line training pages"),
    "fonts": variants.Key(
      "data.extra_fonts",
      "print fonts added to the handwriting ones for training",
      choices={"print": ",".join(EXTRA_FONTS), "sans": ",".join(SANS_FONTS), "none": ""},
    ),
    "distortion": variants.Key("data.shape_distortion", "how far training words bend"),
    "bank": variants.Key("data.bank_size", "pre-rendered words of each word bank"),
    "train_pages": variants.Key(
      "data.pages_train_limit", "the first N pages of the training split (data.source=pages)"
    ),
    "freeze": variants.Key(
      "train.freeze",
      "parameters kept as the source's when fine-tuning",
      choices={"none": (), "encoder": ("encoder",), "decoder": ("decoder",)},
    ),
  },
  {
    "clean": variants.Variant(
      "the earlier versions' pages: clean, text at 0.9-1.1x its height, one in ten a lone "
      "line, no lone words",
      "single_lines=0.1",
      {"data.single_word_pages": 0.0, "data.scale_range": (0.9, 1.1), "data.scan_look": 0.0},
    ),
    "b8": variants.Variant(
      "the earlier versions' schedule: 6000 steps of 8 pages",
      "batch=8,steps=6000,warmup=500,curriculum=2400,eval_every=600,ckpt_every=400",
    ),
    "wide_hands": variants.Variant(
      "more varied training hands: bent words, twice the writers, no print fonts",
      "fonts=none,distortion=0.1,bank=40000,single_lines=0.1",
      {"data.words_per_writer": (100, 200)},
    ),
    "more_writers": variants.Variant(
      "five times the training writers (13 styles a font instead of 3)",
      fields={"data.train_words_per_writer": (40, 80)},
    ),
    "real_look": variants.Variant(
      "pages more like real ones: lines that tilt and wander, uneven line gaps, word sizes "
      "that drift along the text, letters bent a little out of their font's shapes, and one "
      "page in five a lone line",
      "distortion=0.05,single_lines=0.2",
      {"data.line_tilt": 2.0, "data.line_gap_jitter": 0.3, "data.size_drift": 0.3},
    ),
    "lines12": variants.Variant(
      "pages of up to 12-14 lines of 7-11 words: a 512x512 canvas, 24 px words, 16-150 "
      "words, up to 800 tokens (a step costs about three of the recipe's)",
      fields={
        "data.image_height": 512,
        "data.word_height": 24,
        "data.words_per_form": (16, 150),
        "data.max_len": 800,
      },
    ),
    "tall": variants.Variant(
      "pages of 2 to 7 lines on the recipe's canvas: laid out 448 px tall and fitted onto "
      "it, so a page of more than 4 lines is written smaller (down to 23 px words); 8-40 "
      "words, up to 256 tokens",
      fields={"data.layout_height": 448, "data.words_per_form": (8, 40), "data.max_len": 256},
    ),
    "long_lines": variants.Variant(
      "lone lines as long as a real one: 4-12 words on one line of a page laid out 1024 px "
      "wide and fitted onto the canvas, so a long line is written at about half size; a "
      "page's lines still break where the canvas would break them (384-448 px)",
      fields={
        "data.layout_width": 1024,
        "data.words_per_line": (4, 12),
        "data.line_width": (384, 448),
      },
    ),
    "real_pages": variants.Variant(
      "pages shaped like real ones, from scratch: 2-7 lines laid out 256-448 px tall (a "
      "height drawn per page) and 1024 px wide, lines 384-960 px wide, 8-60 words, lone "
      "lines of 4-12 words in three pages of ten; the recipe that reads the real scans best "
      "in 90 minutes of a 2-core CPU (steps=8000 there)",
      "tall,long_lines,single_lines=0.3",
      {
        "data.layout_height_min": 256,
        "data.line_width": (384, 960),
        "data.words_per_form": (8, 60),
      },
    ),
    "bf16": variants.Variant("bfloat16 compute", "dtype=bfloat16"),
    "few_shot": variants.Variant(
      "the schedule of a fine-tuning run (give train.init_from, and the data: e.g. "
      "data.source=pages, data.pages_dir): 300 steps at a third of the learning rate, the "
      "best of six evaluations kept; no guided attention (real pages do not say where each "
      "character is)",
      "steps=300,lr=2e-4,warmup=30,eval_every=50,ckpt_every=50,eval_examples=20",
      {"train.attention_loss_weight": 0.0},
    ),
  },
  sweeps={
    # The batch sizes of docs/experiments/cpu_fullpage.md at equal time.
    "batch_sizes": [dict(batch=2, steps=22000, lr=4e-4), dict(batch=4), dict(b8=True)],
    # The few-shot table of docs/experiments/few_shot.md: 10, 50, 200 pages of one hand.
    # All parameters fine-tuned, or the decoder (the language) kept as it was.
    "few_shot": [
      dict(few_shot=True, train_pages=n, **frozen)
      for frozen in ({}, {"freeze": "decoder"})
      for n in (10, 50, 200)
    ],
  },
)


def get_sweep(arg=None):
  return VARIANTS.sweep(arg)


def get_config(arg=None):
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
  config.data.single_line_pages = 0.15  # lone lines too, not only pages
  config.data.single_word_pages = 0.05  # and lone words
  # Text from 0.6x to 1.15x the word height: a wide real page shrunk to fit
  # the canvas, or a scan read at another size, is still read.
  config.data.scale_range = (0.6, 1.15)
  config.data.scan_look = 0.5  # half the training pages look like scans
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
  return VARIANTS.apply(config, arg)
