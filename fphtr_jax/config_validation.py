"""Every check of a config, run before anything is built or written.

`validate_config` fails early, naming the field, on values that would fail
hours later. The defaults of every field are in configs/default.py (each
config file starts from it, and a saved config.json is read on top of it),
so the checks read fields directly. `check_against_checkpoint` compares a
config with the one a workdir's checkpoints were trained with.
"""

import ml_collections

from fphtr_jax import sharding
from fphtr_jax.models import resnet

SECTIONS = ("model", "data", "train", "eval", "checkpoint", "mesh", "decode")
SOURCES = ("embedded", "iam", "pages")

# Fields a checkpoint trained with other values cannot be resumed with: those
# that fix the shapes of the train state, and data.max_len (it sizes no
# parameter, only the decoding cache: reading a model may raise it).
STATE_SHAPE_FIELDS = (
  "model.encoder",
  "model.encoder_width",
  "model.d_model",
  "model.num_layers",
  "model.num_heads",
  "model.mlp_dim",
  "model.pre_norm",
  "data.max_len",
  "train.optimizer",
  "train.grad_clip_norm",
  "train.freeze",  # frozen parameters have no optimizer state
)
# The fields of a saved config that older runs lack: the value they trained with.
SAVED_DEFAULTS = {"train.freeze": ()}
# Those that fix the parameters' shapes: a train.init_from source must match them.
PARAM_SHAPE_FIELDS = tuple(f for f in STATE_SHAPE_FIELDS if f.startswith("model."))
# train.freeze names -> the top-level parameter group each keeps fixed.
FREEZE_GROUPS = {"encoder": "image_encoder", "decoder": "text_decoder"}


def require(ok: bool, field: str, value, expected: str):
  """Raises ValueError naming `field` and what would be right, unless `ok`."""
  if not ok:
    raise ValueError(f"config.{field}={value!r} is invalid: expected {expected}.")


def validate_config(config: ml_collections.ConfigDict):
  """Fails early, naming the field, on values that would fail hours later."""
  for section in SECTIONS:
    require(section in config, section, None, "a config section")
  t, e, c, d, m = config.train, config.eval, config.checkpoint, config.data, config.model
  require(t.num_steps > 0, "train.num_steps", t.num_steps, "a positive integer")
  require(t.batch_size > 0, "train.batch_size", t.batch_size, "a positive integer")
  require(
    t.grad_accum_steps >= 1 and t.batch_size % t.grad_accum_steps == 0,
    "train.grad_accum_steps",
    t.grad_accum_steps,
    f"a divisor of train.batch_size={t.batch_size}",
  )
  require(t.learning_rate > 0, "train.learning_rate", t.learning_rate, "a positive float")
  require(t.optimizer in ("adam", "adamw"), "train.optimizer", t.optimizer, "'adam' or 'adamw'")
  require(
    t.schedule in ("constant", "cosine"), "train.schedule", t.schedule, "'constant' or 'cosine'"
  )
  require(t.warmup_steps >= 0, "train.warmup_steps", t.warmup_steps, "0 or more")
  require(t.grad_clip_norm >= 0, "train.grad_clip_norm", t.grad_clip_norm, "0 (off) or more")
  require(0 <= t.label_smoothing < 1, "train.label_smoothing", t.label_smoothing, "in [0, 1)")
  require(
    t.attention_loss_weight >= 0,
    "train.attention_loss_weight",
    t.attention_loss_weight,
    "0 (off) or more",
  )
  require(
    t.attention_sigma > 0,
    "train.attention_sigma",
    t.attention_sigma,
    "a positive number of feature cells",
  )
  if t.attention_loss_weight:
    require(
      d.source == "embedded",
      "train.attention_loss_weight",
      t.attention_loss_weight,
      "0 with data.source='iam' or 'pages' (only synthetic pages know where each character is)",
    )
  require(t.max_skipped_steps >= 0, "train.max_skipped_steps", t.max_skipped_steps, "0 or more")
  groups = " or ".join(map(repr, FREEZE_GROUPS))
  require(
    all(g in FREEZE_GROUPS for g in t.freeze) and len(set(t.freeze)) < len(FREEZE_GROUPS),
    "train.freeze",
    t.freeze,
    f"the parameter group to keep fixed, {groups} (not all: then nothing trains), "
    "e.g. --config.train.freeze=encoder; () trains every parameter",
  )
  require(
    t.init_from is None or bool(t.init_from.strip()),
    "train.init_from",
    t.init_from,
    "unset, or a trained run's workdir, WORKDIR:best, WORKDIR:STEP or a checkpoint folder",
  )
  require(t.log_every_steps > 0, "train.log_every_steps", t.log_every_steps, "a positive integer")
  require(e.every_steps > 0, "eval.every_steps", e.every_steps, "a positive integer")
  require(e.batch_size > 0, "eval.batch_size", e.batch_size, "a positive integer")
  require(e.num_examples > 0, "eval.num_examples", e.num_examples, "a positive integer")
  require(c.every_steps > 0, "checkpoint.every_steps", c.every_steps, "a positive integer")
  require(c.max_to_keep > 0, "checkpoint.max_to_keep", c.max_to_keep, "a positive integer")
  require(
    tuple(m.encoder_last_stride) in ((2, 2), (2, 1), (1, 2), (1, 1)),
    "model.encoder_last_stride",
    m.encoder_last_stride,
    "(2, 2), (2, 1), (1, 2) or (1, 1)",
  )
  for field, stride in zip(
    ("image_height", "image_width"), resnet.encoder_stride(m.encoder_last_stride)
  ):
    require(
      d[field] >= stride,
      f"data.{field}",
      d[field],
      f"at least {stride} pixels (the encoder's stride)",
    )
  require(d.curriculum_steps >= 0, "data.curriculum_steps", d.curriculum_steps, "0 or more")
  require(
    0 <= d.single_line_pages <= 1,
    "data.single_line_pages",
    d.single_line_pages,
    "a share in [0, 1]",
  )
  require(
    0 <= d.single_word_pages <= 1 - d.single_line_pages,
    "data.single_word_pages",
    d.single_word_pages,
    "a share in [0, 1 - data.single_line_pages]",
  )
  require(0 <= d.scan_look <= 1, "data.scan_look", d.scan_look, "a share in [0, 1]")
  require(
    len(d.scale_range) == 2 and 0 < d.scale_range[0] <= d.scale_range[1],
    "data.scale_range",
    d.scale_range,
    "a range (lo, hi) with 0 < lo <= hi",
  )
  require(
    d.max_image_pixels > 0,
    "data.max_image_pixels",
    d.max_image_pixels,
    "a positive number of pixels",
  )
  require(d.max_len >= 3, "data.max_len", d.max_len, "at least 3 (<SOS>, a character, <EOS>)")
  require(d.source in SOURCES, "data.source", d.source, " or ".join(map(repr, SOURCES)))
  require(0 <= d.synthetic_proba <= 1, "data.synthetic_proba", d.synthetic_proba, "in [0, 1]")
  if d.source == "iam":
    require(
      bool(d.iam_dir),
      "data.iam_dir",
      d.iam_dir,
      "the folder of your IAM download, e.g. --config.data.iam_dir=~/data/iam "
      "(configs/iam_*.py are the IAM recipes)",
    )
    require(d.level in ("word", "line", "form"), "data.level", d.level, "'word', 'line' or 'form'")
    require(0 < d.iam_scale <= 1, "data.iam_scale", d.iam_scale, "in (0, 1]")
    require(
      d.iam_split in ("aachen", "random"), "data.iam_split", d.iam_split, "'aachen' or 'random'"
    )
    require(
      d.iam_bad_image in ("skip", "error"),
      "data.iam_bad_image",
      d.iam_bad_image,
      "'skip' or 'error'",
    )
  require(
    d.charset != "auto" or d.source == "pages",
    "data.charset",
    d.charset,
    "the characters of the labels; 'auto' (the training split's) only with data.source='pages'",
  )
  if d.source == "pages":
    require(
      bool(d.pages_dir),
      "data.pages_dir",
      d.pages_dir,
      "the folder of your exported pages (PAGE-XML, ALTO, or images with .txt/.gt.txt), "
      "e.g. --config.data.pages_dir=~/data/my_export",
    )
    require(d.level in ("word", "line", "form"), "data.level", d.level, "'word', 'line' or 'form'")
    require(d.pages_scale > 0, "data.pages_scale", d.pages_scale, "a positive scale (1.0 = as is)")
    require(
      d.pages_train_limit is None or d.pages_train_limit >= 1,
      "data.pages_train_limit",
      d.pages_train_limit,
      "a number of training pages >= 1, or unset for all",
    )
    fractions = tuple(d.split_fractions)
    require(
      len(fractions) == 3 and min(fractions) >= 0 and abs(sum(fractions) - 1) < 1e-6,
      "data.split_fractions",
      fractions,
      "3 fractions (train, validation, test) >= 0 that sum to 1",
    )
    require(
      d.unicode_normalization in ("none", "NFC", "NFD"),
      "data.unicode_normalization",
      d.unicode_normalization,
      "'none', 'NFC' or 'NFD'",
    )
    require(
      d.pages_bad_record in ("skip", "error"),
      "data.pages_bad_record",
      d.pages_bad_record,
      "'skip' or 'error'",
    )
  require(
    config.mesh.preset in sharding.MESH_PRESETS,
    "mesh.preset",
    config.mesh.preset,
    " or ".join(map(repr, sharding.MESH_PRESETS)),
  )
  dec = config.decode
  require(dec.beam_size >= 1, "decode.beam_size", dec.beam_size, "1 (greedy) or more")
  require(dec.length_penalty >= 0, "decode.length_penalty", dec.length_penalty, "0 or more")
  require(
    dec.max_len == 0 or 2 <= dec.max_len <= d.max_len,
    "decode.max_len",
    dec.max_len,
    f"0 (= data.max_len) or 2 to data.max_len={d.max_len}",
  )


def check_mesh(config: ml_collections.ConfigDict, mesh):
  """The global batches divide over the mesh's data-parallel devices."""
  t = config.train
  sharding.check_batch_size(t.batch_size, mesh, "train.batch_size")
  sharding.check_batch_size(config.eval.batch_size, mesh, "eval.batch_size")
  sharding.check_batch_size(
    t.batch_size // t.grad_accum_steps, mesh, "train.batch_size / train.grad_accum_steps"
  )


def check_against_checkpoint(
  config: ml_collections.ConfigDict, saved: dict | None, workdir: str, fields=STATE_SHAPE_FIELDS
):
  """Raises ValueError naming every one of `fields` that differs from `saved`.

  `saved`: the config (a dict) the workdir's checkpoints were trained with,
  or None when there is no checkpoint yet. `fields`: STATE_SHAPE_FIELDS to
  resume training, PARAM_SHAPE_FIELDS to read the parameters alone (so a
  model can be scored with a longer data.max_len than it trained with).
  """
  if saved is None:
    return
  differ = [
    f"{field}={new!r} (checkpoint: {old!r})"
    for field, new, old in state_shape_differences(config, saved, fields)
  ]
  if differ:
    raise ValueError(
      f"The checkpoints in {workdir} were trained with another model: "
      f"{', '.join(differ)}. Use another --workdir, or the checkpoint's values."
    )


def state_shape_differences(
  config: ml_collections.ConfigDict, saved: dict, fields=STATE_SHAPE_FIELDS
) -> list[tuple[str, object, object]]:
  """(field, config's value, saved value) of each of `fields` that differs from `saved`.

  `saved`: a saved config (a dict, as config.json holds it: lists for tuples);
  a field it lacks counts as SAVED_DEFAULTS says.
  """
  as_value = lambda v: tuple(v) if isinstance(v, (list, tuple)) else v
  differ = []
  for field in fields:
    section, name = field.split(".")
    old = saved.get(section, {}).get(name, SAVED_DEFAULTS.get(field))
    new = config[section].get(name)
    if as_value(old) != as_value(new):
      differ.append((field, new, old))
  return differ
