"""Config arguments: variants of a config named after its file, `--config=FILE:ARG`.

ml_collections' config flag passes the text after the colon to the file's
`get_config(arg)`; every config of configs/ reads it with `Variants.apply`:

  --config=configs/cpu_fullpage.py:batch=8,fonts=sans
  --config=configs/fullpage.py:iam_forms,short,bf16,wide_hands

The grammar: items separated by commas, applied left to right (a later item
wins). An item is `key=value`, a key the config declares, its value parsed as
the type of the field it sets (int, float, bool: true/false, str; a key with
choices takes one of their names), or a bare word naming a variant the config
declares, which stands for a few items or field values. Values cannot hold
commas; fields holding tuples or lists are set by named variants or by
`--config.section.field=value` flags, which still apply on top.

A config may also declare named sweeps, `get_sweep(arg)`: lists of points,
each point a dict of the same keys (a named variant as `name=True`);
`python -m fphtr_jax.sweep` trains them (docs/experiments/README.md).
"""

import dataclasses
import re
from typing import Any, Mapping

import ml_collections

# What a value may hold: no item separator, no key separator, no spaces.
_VALUE = re.compile(r"[^,=\s]+")
_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0")


class ConfigArgumentError(ValueError):
  """A config argument that cannot be applied; the message names the item and what is allowed."""


@dataclasses.dataclass(frozen=True)
class Key:
  """`key=value`: sets config field `field` (a dotted path) to the parsed value.

  `choices`: name -> field value; the key then takes only these names.
  """

  field: str
  doc: str
  choices: Mapping[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class Variant:
  """A bare word: the config argument `arg`, then the `fields` (path -> value) set directly."""

  doc: str
  arg: str = ""
  fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def common_keys() -> dict[str, Key]:
  """The keys every config takes."""
  return {
    "steps": Key("train.num_steps", "training steps"),
    "batch": Key("train.batch_size", "pages (or lines, words) a step, over all devices"),
    "lr": Key("train.learning_rate", "peak learning rate"),
    "warmup": Key("train.warmup_steps", "learning-rate warmup steps"),
    "seed": Key("train.seed", "seed of initialisation and dropout"),
    "eval_every": Key("eval.every_steps", "steps between evaluations"),
    "eval_examples": Key("eval.num_examples", "examples of each evaluation"),
    "ckpt_every": Key("checkpoint.every_steps", "steps between checkpoints"),
    "beam": Key("decode.beam_size", "beam size of the evaluations (1 = greedy)"),
    "dtype": Key(
      "model.dtype", "compute dtype", choices={"float32": "float32", "bfloat16": "bfloat16"}
    ),
  }


def _section_and_name(config: ml_collections.ConfigDict, path: str):
  *sections, name = path.split(".")
  holder = config
  for section in sections:
    holder = holder[section]
  if name not in holder:
    raise KeyError(f"the config has no field {path}")
  return holder, name


def _kind(config, path: str) -> type:
  holder, name = _section_and_name(config, path)
  return holder.get_type(name)


def _set(config, path: str, value):
  holder, name = _section_and_name(config, path)
  # A field that is a FieldReference (a schedule that follows train.num_steps)
  # is set through it, so its dependants follow.
  setattr(holder, name, value)


_KIND_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _parse(text: str, kind: type):
  """`text` as a value of type `kind`; ValueError when it is not one."""
  if kind is bool:
    if text.lower() in _TRUE:
      return True
    if text.lower() in _FALSE:
      return False
    raise ValueError(text)
  if kind is int:
    return int(text)
  if kind is float:
    return float(text)
  if kind is str:
    return text
  raise ValueError(text)


def format_value(value) -> str:
  """A value as config-argument text: the inverse of parsing it (`True` -> `true`)."""
  if isinstance(value, bool):
    return "true" if value else "false"
  text = repr(value) if isinstance(value, float) else str(value)
  if not _VALUE.fullmatch(text):
    raise ConfigArgumentError(
      f"the value {value!r} cannot be written in a config argument: values hold no "
      "commas, '=' or spaces."
    )
  return text


def _choices(key: Key) -> str:
  return f": {' | '.join(key.choices)}" if key.choices else ""


class Variants:
  """The keys and named variants a config file takes in its config argument."""

  def __init__(
    self,
    keys: Mapping[str, Key],
    variants: Mapping[str, Variant] | None = None,
    sweeps: Mapping[str, list[dict]] | None = None,
  ):
    self.keys = dict(keys)
    self.variants = dict(variants or {})
    self.sweeps = dict(sweeps or {})
    clash = set(self.keys) & set(self.variants)
    if clash:
      raise ValueError(f"names both a key and a named variant: {', '.join(sorted(clash))}")

  def format_point(self, point: Mapping[str, Any]) -> str:
    """A sweep point, {"lr": 0.001, "b8": True}, as a config argument: `lr=0.001,b8`."""
    return ",".join(
      key if key in self.variants and value is True else f"{key}={format_value(value)}"
      for key, value in point.items()
    )

  def describe(self) -> str:
    """The allowed keys and named variants, in words (for error messages)."""

    def key_text(name, key):
      return f"{name} ({key.field}{_choices(key)})"

    text = "the keys are " + ", ".join(key_text(n, k) for n, k in self.keys.items())
    if self.variants:
      text += "; the named variants are " + ", ".join(self.variants)
    return text + " (the argument help says what each does)"

  def help(self) -> str:
    """Every key and named variant with what it does, in one paragraph (the word `help`)."""

    def key_text(name, key):
      return f"{name} ({key.field}{_choices(key)}): {key.doc}"

    def variant_text(name, variant):
      items = [variant.arg] if variant.arg else []
      items += [f"{path}={value}" for path, value in variant.fields.items()]
      return f"{name}: {variant.doc} ({', '.join(items)})"

    text = "the keys: " + "; ".join(key_text(n, k) for n, k in self.keys.items())
    if self.variants:
      text += ". The named variants: "
      text += "; ".join(variant_text(n, v) for n, v in self.variants.items())
    if self.sweeps:
      text += f". The sweeps (python -m fphtr_jax.sweep): {', '.join(self.sweeps)}"
    return text + "."

  def _items(self, arg: str) -> list[str]:
    items = [item.strip() for item in arg.split(",")]
    if any(not item for item in items):
      raise ConfigArgumentError(
        f"{arg!r} has an empty item: give key=value pairs or variant names separated by "
        "single commas."
      )
    return items

  def apply(self, config: ml_collections.ConfigDict, arg: str | None):
    """Applies config argument `arg` to `config` in place, and returns it.

    Raises:
      ConfigArgumentError: an unknown key or variant (naming it and listing
        the allowed ones), or a value the key's field does not take.
    """
    if not arg:
      return config
    for item in self._items(arg):
      name, has_value, text = item.partition("=")
      name = name.strip()
      if not has_value and name == "help":
        raise ConfigArgumentError(self.help())
      if not has_value:
        self._apply_variant(config, name)
        continue
      text = text.strip()
      if name not in self.keys:
        hint = (
          f" ({name} is a named variant: give it without a value)" if name in self.variants else ""
        )
        raise ConfigArgumentError(f"unknown key {name!r}{hint}; {self.describe()}.")
      key = self.keys[name]
      if key.choices is not None:
        if text not in key.choices:
          raise ConfigArgumentError(
            f"{name} is one of {', '.join(key.choices)} ({key.field}), not {text!r}."
          )
        _set(config, key.field, key.choices[text])
        continue
      kind = _kind(config, key.field)
      try:
        value = _parse(text, kind)
      except ValueError:
        expected = _KIND_WORDS.get(kind, f"a {getattr(kind, '__name__', kind)}")
        raise ConfigArgumentError(
          f"{name} sets {key.field}, which takes {expected}, not {text!r}."
        ) from None
      _set(config, key.field, value)
    return config

  def _apply_variant(self, config, name: str):
    if name not in self.variants:
      hint = f" ({name} is a key: give it as {name}=VALUE)" if name in self.keys else ""
      raise ConfigArgumentError(f"unknown variant {name!r}{hint}; {self.describe()}.")
    variant = self.variants[name]
    self.apply(config, variant.arg)
    for path, value in variant.fields.items():
      _set(config, path, value)

  def sweep(self, arg: str | None) -> list[dict]:
    """The points of the sweeps `arg` names, each a dict of config-argument items.

    `arg` holds sweep names and `key=value` items; the items are added to
    every point (a point's own value of the same key wins). Several sweeps
    are run one after another.

    Raises:
      ConfigArgumentError: no sweep named, an unknown sweep, or an item the
        config does not take.
    """
    names, base = [], {}
    for item in self._items(arg) if arg else []:
      name, has_value, text = item.partition("=")
      if has_value:
        base[name.strip()] = text.strip()
      elif name in self.sweeps:
        names.append(name)
      elif name in self.variants:
        base[name] = True
      else:
        known = ", ".join(self.sweeps) or "none"
        raise ConfigArgumentError(f"unknown sweep {name!r}; the named sweeps are {known}.")
    if not names:
      known = ", ".join(self.sweeps) or "none"
      raise ConfigArgumentError(
        f"{arg or ''!r} names no sweep; the named sweeps are {known} "
        "(e.g. --config=FILE:NAME, with key=value items added to every point)."
      )
    points = [{**base, **point} for name in names for point in self.sweeps[name]]
    for point in points:  # every point must be a config this file builds
      for key, value in point.items():
        if key not in self.keys and not (key in self.variants and value is True):
          raise ConfigArgumentError(
            f"sweep point {point!r}: unknown key {key!r}; {self.describe()}."
          )
    return points
