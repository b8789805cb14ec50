"""Default run: full synthetic handwritten pages, ResNet18 + transformer decoder.

Needs no download: words are rendered from pip-installed handwriting fonts and
composed into pages inside tf.data.

  python -m fphtr_jax.main --config=configs/default.py --workdir=/tmp/fphtr
  python -m fphtr_jax.main --config=configs/default.py:batch=4 --workdir=/tmp/fphtr_b4

The text after the colon is the config argument (configs/variants.py): the
keys of variants.common_keys().
"""

import ml_collections

from configs import variants

# IAM's character set (79 symbols) plus the line separator used by forms.
IAM_CHARSET = " !\"#&'()*+,-./0123456789:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

VARIANTS = variants.Variants(variants.common_keys())


def get_config(arg=None):
  config = ml_collections.ConfigDict()

  # --- Model -----------------------------------------------------------------
  config.model = ml_collections.ConfigDict()
  config.model.encoder = "resnet18"  # resnet18 | resnet34 | resnet50
  config.model.encoder_width = 64  # channels of the first stage (64 = torchvision)
  # (height, width) stride of the last ResNet stage: (2, 2) = torchvision, 32 px
  # per feature cell; (2, 1) halves the cell width for finer columns.
  config.model.encoder_last_stride = (2, 2)
  config.model.d_model = 260
  config.model.num_layers = 6
  config.model.num_heads = 4
  config.model.mlp_dim = 1024
  config.model.dropout_rate = 0.1
  config.model.pre_norm = False
  config.model.dtype = "float32"  # compute dtype: float32 | bfloat16

  # --- Data ------------------------------------------------------------------
  config.data = ml_collections.ConfigDict()
  config.data.source = "embedded"  # embedded handwriting fonts
  config.data.level = "form"  # form | line | word
  config.data.image_height = 512
  config.data.image_width = 512
  config.data.max_len = 320  # tokens, including <SOS> and <EOS>
  config.data.charset = IAM_CHARSET + "\n"
  # Composition, in pixels of the canvas.
  config.data.word_height = 32
  config.data.words_per_line = (4, 9)
  config.data.words_per_form = (7, 40)
  # Curriculum: over the first curriculum_steps steps, the most words on a
  # training page grow linearly from words_per_line's low end (one line) to
  # words_per_form's high end; 0 = pages as words_per_form from the start.
  config.data.curriculum_steps = 0
  # Share of training pages written as a single line of words_per_line words,
  # so that a model of pages also learns where a one-line page ends.
  config.data.single_line_pages = 0.0
  config.data.single_word_pages = 0.0  # and of pages of a single word
  # Page layout, (lo, hi) in pixels at a word height of 40 px (IAM at half
  # resolution: the reference recipe's full-resolution numbers halved); scaled
  # by word_height / 40. Page margins also shrink to at most 1/8 of the canvas.
  config.data.word_gap = (10, 24)
  config.data.line_width = (750, 999)  # lines also break at the canvas edge
  config.data.line_gap = (12, 49)
  config.data.page_margin = (50, 99)
  # Pages laid out on a canvas this tall (pixels; 0 = image_height), then
  # fitted onto the image: a page with more lines than the image holds at
  # word_height is written smaller, shrunk by up to image_height / layout_height.
  config.data.layout_height = 0
  # 0, or each page's height drawn in [layout_height_min, layout_height]: its
  # lines stop at that height, so that pages of every line count fill the
  # canvas once fitted, a short page at full size, a long one smaller.
  config.data.layout_height_min = 0
  # And this wide (pixels; 0 = image_width): a page's lines still break at
  # line_width, but a lone line (single_line_pages) runs to this width, so a
  # long one is fitted onto the image smaller, as a real line scan is.
  config.data.layout_width = 0
  # Uneven lines (0 = off): each gap between lines is line_gap times a factor
  # drawn in [1 - line_gap_jitter, 1 + line_gap_jitter] (at most 1); each line
  # slopes by up to line_tilt degrees (at most 10) and wanders along a slow
  # sine of up to line_tilt / 10 word heights.
  config.data.line_gap_jitter = 0.0
  config.data.line_tilt = 0.0
  # Share of the words struck through with a pen stroke (at most 0.5), as a
  # writer crosses out a mistake: on the page, not in the target text.
  config.data.crossed_out = 0.0
  # Chance that a page's line ends after a word, before it is full (a paragraph's
  # last line, a list's item); lone lines never break.
  config.data.short_lines = 0.0
  config.data.augment = True
  # Largest random rotation, degrees; also limited by the room around the text.
  config.data.max_rotation = 2.0
  # Random scale of the text on training pages, (lo, hi); below 1 also reads
  # text smaller than data.word_height (a wide page shrunk to fit the canvas).
  config.data.scale_range = (0.9, 1.1)
  # Share of training pages given the look of a scan of real writing (ink
  # from pencil to pen, varying strokes, ruled or grey paper, uneven light,
  # bleed-through, blur, JPEG): augment.scan_look.
  config.data.scan_look = 0.0
  # Embedded handwriting source. Unset = the pip-installed fonts / word list.
  # font_paths: TTF/OTF files or folders, comma-separated ("hershey:NAME" for
  # a Hershey stroke font, "fontpkg:NAME" for a pip-installed fontpkg family);
  # extra_fonts: more of the same, added to font_paths or the default fonts;
  # text_file: any UTF-8 text, split into words.
  config.data.font_paths = ml_collections.config_dict.placeholder(str)
  config.data.extra_fonts = ml_collections.config_dict.placeholder(str)
  config.data.text_file = ml_collections.config_dict.placeholder(str)
  # Where word-image banks are cached; unset = ~/.cache/fphtr_jax.
  config.data.cache_dir = ml_collections.config_dict.placeholder(str)
  config.data.bank_size = 20000  # pre-rendered word images
  # Embedded handwriting source: writers, held-out fonts, text checks.
  config.data.heldout_fonts = ()  # font file stems kept for the eval split
  config.data.words_per_writer = (200, 400)  # >= the most words on a form
  # The same for the training bank only (unset = words_per_writer): fewer
  # words each, more writers, so more styles of each font; eval keeps its own.
  config.data.train_words_per_writer = ml_collections.config_dict.placeholder(tuple)
  config.data.bank_seed = 0  # another seed renders another bank
  # Training words stray from their font's shapes (smooth random bends, and
  # letters of varied size and height): std of the bend / x-height, about 0.1
  # for a strong augmentation; 0 = the fonts exactly. Eval words never bend.
  config.data.shape_distortion = 0.0
  # A training writer's size drifts along their text, so that the words and
  # lines of a page differ in size: each word at 1 - size_drift to 1 times the
  # writer's size, slowly varying (8-40 words a cycle); 0 = one size a writer.
  config.data.size_drift = 0.0
  # And their slant: each word's shear is the writer's +- slant_drift (at most
  # 0.4; writers' own slants span -0.12 to 0.3), drifting the same way.
  config.data.slant_drift = 0.0
  config.data.skip_unknown_chars = False  # skip text_file words not in charset
  config.data.num_parallel_calls = -1  # -1 = all cores (tf.data AUTOTUNE)
  config.data.prefetch = 2
  # Image files (IAM, predict) with more pixels are refused before decoding.
  config.data.max_image_pixels = 50_000_000
  # Share of synthetic examples mixed into real ones (iam, pages); the embedded
  # source is all synthetic.
  config.data.synthetic_proba = 0.0
  # IAM source (data.source="iam", configs/iam_*.py). The unpacked IAM download
  # (xml/, ascii/, forms*/, lines/, words/); required by that source.
  config.data.iam_dir = ml_collections.config_dict.placeholder(str)
  # Where TFDS keeps the prepared dataset; unset = ~/tensorflow_datasets.
  config.data.iam_tfds_dir = ml_collections.config_dict.placeholder(str)
  config.data.iam_scale = 0.5  # of IAM's 300 dpi scans
  config.data.iam_split = "aachen"  # aachen (shipped id lists) | random (by form, seeded)
  config.data.iam_split_seed = 0  # random split only
  config.data.iam_split_fractions = (0.8, 0.1, 0.1)  # train, validation, test; random only
  config.data.iam_skip_err = False  # drop words and lines whose segmentation is "err"
  config.data.iam_bad_image = "skip"  # skip (warn and count) | error
  # Pages source (data.source="pages", docs/pages.md): a folder of PAGE-XML, ALTO,
  # or images with a .gt.txt/.txt beside them, read recursively; required by it.
  # data.charset="auto" takes the characters of its training split.
  config.data.pages_dir = ml_collections.config_dict.placeholder(str)
  # Where TFDS keeps the prepared dataset; unset = ~/tensorflow_datasets.
  config.data.pages_tfds_dir = ml_collections.config_dict.placeholder(str)
  config.data.pages_scale = 1.0  # of the page images, before fitting to the canvas
  # A folder with train.txt, validation.txt, test.txt (page ids, one a line, #
  # comments); unset = a seeded random split by page by data.split_fractions.
  config.data.pages_split_dir = ml_collections.config_dict.placeholder(str)
  config.data.pages_split_seed = 0
  # Train on the first N pages of the training split only (a few-shot run, or
  # a curve of CER against pages); unset = all of them.
  config.data.pages_train_limit = ml_collections.config_dict.placeholder(int)
  config.data.split_fractions = (0.8, 0.1, 0.1)  # train, validation, test
  config.data.unicode_normalization = "NFC"  # of the pages' texts: none | NFC | NFD
  config.data.pages_bad_record = "skip"  # skip (warn and count) | error

  # --- Training --------------------------------------------------------------
  config.train = ml_collections.ConfigDict()
  config.train.seed = 1337
  # JAX PRNG implementation; "unsafe_rbg" compiles much faster on CPU.
  config.train.rng_impl = "threefry2x32"
  config.train.num_steps = 100_000
  config.train.batch_size = 8  # global, across all devices and processes
  # Micro-batches per step (batch_size / grad_accum_steps examples each), run
  # one after another with their gradients summed: same step, less memory.
  config.train.grad_accum_steps = 1
  config.train.optimizer = "adam"  # adam | adamw
  config.train.learning_rate = 2e-4
  config.train.weight_decay = 0.0  # adamw only
  config.train.schedule = "constant"  # constant | cosine
  config.train.warmup_steps = 0
  config.train.grad_clip_norm = 0.0  # 0 = no clipping
  config.train.label_smoothing = 0.0
  # Guided cross-attention (synthetic data only): each target token's
  # attention, averaged over heads, is pulled towards where the page shows
  # that character: loss -log(attention mass under a Gaussian of
  # attention_sigma feature cells around it), averaged over the decoder
  # layers, times attention_loss_weight (0 = off). Training only.
  config.train.attention_loss_weight = 0.0
  config.train.attention_sigma = 1.0
  config.train.log_every_steps = 10
  # Steps with a non-finite loss, gradient or parameter are skipped; more than
  # this many in a row stop the run (checked every log_every_steps).
  config.train.max_skipped_steps = 20
  # Fine-tuning (docs/training.md): a new run starts from a trained run's
  # parameters: its workdir (newest intact checkpoint), WORKDIR:best,
  # WORKDIR:STEP or a checkpoint folder. Its vocabulary comes first, then the
  # characters of data.charset it lacks. Not read once the workdir has checkpoints.
  config.train.init_from = ml_collections.config_dict.placeholder(str)
  # Parameter groups kept fixed: () | ("encoder",) | ("decoder",). A frozen
  # encoder also keeps its BatchNorm statistics (it runs in inference mode).
  config.train.freeze = ()

  # --- Evaluation ------------------------------------------------------------
  config.eval = ml_collections.ConfigDict()
  config.eval.every_steps = 1000
  config.eval.num_examples = 64
  config.eval.batch_size = 8
  config.eval.num_images = 4  # pages drawn to TensorBoard with their text

  # --- Decoding (evaluate.py, predict.py) ------------------------------------
  config.decode = ml_collections.ConfigDict()
  config.decode.beam_size = 1  # 1 = greedy search (with the KV cache)
  # Beam search ranks finished hypotheses by log-prob / ((5 + length) / 6)^alpha
  # (GNMT); 0 ranks by plain log-probability, GNMT and t5x use 0.6.
  config.decode.length_penalty = 0.0
  config.decode.max_len = 0  # tokens, <SOS> included; 0 = data.max_len

  # --- Checkpoints -----------------------------------------------------------
  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every_steps = 200
  config.checkpoint.max_to_keep = 3
  config.checkpoint.async_save = True

  # --- Device mesh -----------------------------------------------------------
  # Mesh axis sizes, over the devices of all processes; -1 takes the devices
  # left over. The default is pure data parallelism.
  config.mesh = ml_collections.ConfigDict()
  # "" | "fsdp" | "tensor_parallel": also split parameters (fphtr_jax/sharding.py,
  # MESH_PRESETS). A preset sets the mesh sizes too, unless they are changed
  # from the default below (e.g. --config.mesh.data=2 --config.mesh.fsdp=4).
  config.mesh.preset = ""
  config.mesh.data = -1
  config.mesh.fsdp = 1
  config.mesh.tensor = 1
  # Logical axis name -> mesh axis (or None = replicated), tried in order; a
  # rule whose mesh axis an array already uses is skipped. A dimension its
  # mesh axes do not divide is an error naming the parameter.
  config.mesh.rules = (
    ("batch", ("data", "fsdp")),
    ("embed", None),
    ("mlp", None),
    ("heads", None),
    ("kv", None),
    ("vocab", None),
    ("conv_in", None),
    ("conv_out", None),
    ("conv_height", None),
    ("conv_width", None),
    ("height", None),
    ("width", None),
    ("length", None),
  )

  return VARIANTS.apply(config, arg)
