"""What the command lines share: mistakes as one sentence, and quiet libraries.

The tools parse their flags with `parse_flags_with_config_file` (training:
`--config=FILE`) or `parse_flags_with_run_config` (evaluate and predict: the
config saved in `--workdir`), passed to `app.run(main, flags_parser=...)`. A
mistake on the command line ends the program before any work, with one line
on stderr that names the flag, field, file or value and says what would be
right, and exit status 2 (USAGE_ERROR): an unknown flag or config field, an
override of the wrong type, a config file that is missing or fails to load,
a value out of range, a workdir or an output folder that cannot be used.
What is wrong inside a run's workdir (a damaged config.json or checkpoint)
is one line too, with exit status 1.
"""

import difflib
import functools
import importlib.machinery
import importlib.util
import logging as std_logging
import os
import re
import sys
import tempfile
import traceback
from typing import NoReturn

from absl import flags, logging
import ml_collections
from ml_collections import config_flags

FLAGS = flags.FLAGS
USAGE_ERROR = 2
CONFIG_FLAG = "config"
HELP_FLAGS = ("--help", "-h", "--helpshort", "--helpfull", "--helpxml", "-?")


class CommandLineError(Exception):
  """A mistake on the command line; its message is one sentence that names it.

  `status`: the exit status, USAGE_ERROR for a mistake in the flags, 1 for
  what is wrong in a run's workdir (a damaged config or checkpoint).
  """

  def __init__(self, message: str, status: int = USAGE_ERROR):
    super().__init__(message)
    self.status = status


def fail(message: str, status: int = USAGE_ERROR) -> NoReturn:
  """Writes `error: <message>` to stderr and exits with `status`."""
  sys.stdout.flush()
  sys.stderr.write(f"error: {message}\n")
  sys.stderr.flush()
  sys.exit(status)


# --- Logging -----------------------------------------------------------------------------------


class QuietLibraries(std_logging.Filter):
  """Keeps the console readable: Orbax logs dozens of INFO lines per checkpoint.

  Its warnings and errors still show; --verbosity=1 shows everything.
  """

  def filter(self, record):
    if "/orbax/" not in record.pathname or logging.get_verbosity() > 0:
      return True
    if record.levelno >= std_logging.ERROR:
      return True
    # Opening checkpoints read-only (evaluate, predict) is on purpose, not a warning.
    return record.levelno >= std_logging.WARNING and not str(record.msg).startswith(
      "Given directory is read only"
    )


_QUIET_LIBRARIES = QuietLibraries()


def quiet_libraries():
  """Adds QuietLibraries to absl's log handler (once)."""
  logging.get_absl_handler().addFilter(_QUIET_LIBRARIES)


# --- Flags -------------------------------------------------------------------------------------


def flag_value(argv: list[str], name: str) -> str | None:
  """The last value of --name on the command line (`--name=V` or `--name V`), else None."""
  value = None
  for index, arg in enumerate(argv):
    if arg.startswith((f"--{name}=", f"-{name}=")):
      value = arg.split("=", 1)[1]
    elif arg in (f"--{name}", f"-{name}") and index + 1 < len(argv):
      value = argv[index + 1]
  return value


def config_overrides(argv: list[str], name: str = CONFIG_FLAG) -> list[str]:
  """The field paths of the --config.section.field overrides on the command line."""
  paths = []
  for arg in argv:
    match = re.match(rf"^--?(?:no)?{name}\.([^=]+)", arg)
    if match and match.group(1) not in paths:
      paths.append(match.group(1))
  return paths


_KINDS = {
  int: "an integer",
  float: "a number",
  bool: "True or False",
  str: "a string",
  tuple: "a tuple, e.g. '(1, 2)'",
  list: "a list, e.g. '[1, 2]'",
}


def _expected(parser: flags.ArgumentParser) -> str:
  """What a flag's parser accepts, in words."""
  if isinstance(parser, flags.EnumParser):
    return "one of " + ", ".join(parser.enum_values)
  kind = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "string": "a string",
  }.get(parser.flag_type())
  return kind or f"a value of type {parser.flag_type()}"


def _config_field_expected(config, path: str) -> str | None:
  holder, _, field = path.rpartition(".")
  try:
    section = config
    for part in holder.split(".") if holder else ():
      section = section[part]
    kind = section.get_type(field)
  except (KeyError, AttributeError, TypeError, IndexError):
    return None
  if isinstance(kind, type) and issubclass(kind, ml_collections.ConfigDict):
    return f"its fields one at a time (config.{path} is a section), e.g. --config.{path}.FIELD=V"
  return _KINDS.get(kind)


def _illegal_value(error: flags.IllegalFlagValueError, config) -> str:
  """'flag --name=value: why' -> one sentence naming the flag and what it takes."""
  match = re.match(r"flag --([^=\s]+)=(.*?): (.*)", str(error), re.DOTALL)
  if not match:
    several = re.match(r"flags (.*?): (.*)", str(error), re.DOTALL)  # a multi-flag validator
    if several:
      given = " ".join("--" + pair.strip() for pair in several.group(1).split(","))
      return f"{given} is invalid: {_first_line(several.group(2)).rstrip('.')}."
    return _first_line(str(error))
  name, value, why = match.groups()
  if name in FLAGS and FLAGS[name].value is None and "value other than None" in why:
    help_text = FLAGS[name].help.rstrip(".")
    return f"--{name} is required: {help_text[:1].lower()}{help_text[1:]}."
  if name.startswith(f"{CONFIG_FLAG}.") and config is not None:
    expected = _config_field_expected(config, name.split(".", 1)[1])
    if expected:
      return f"--{name}={value} is invalid: expected {expected}."
  if name in FLAGS:
    try:
      FLAGS[name].parser.parse(value)
    except (ValueError, TypeError):
      return f"--{name}={value} is invalid: expected {_expected(FLAGS[name].parser)}."
    # The value parses: a validator refused it, and its message says why.
    return f"--{name}={value} is invalid: {_first_line(why).rstrip('.')}."
  return f"--{name}={value} is invalid: {_first_line(why)}"


def _unrecognized(error: flags.UnrecognizedFlagError) -> str:
  name = error.flagname
  suggestions = difflib.get_close_matches(name, list(FLAGS), n=1)
  if suggestions:
    return f"--{name}: no such flag; did you mean --{suggestions[0]}?"
  return f"--{name}: no such flag; --helpfull lists the flags."


def check_overrides(config: ml_collections.ConfigDict, paths: list[str]):
  """Raises CommandLineError for an override of a field `config` does not have.

  `--config.train.num_stepz` -> "no such field; did you mean train.num_steps?"
  """
  leaves = _field_paths(config)
  for path in paths:
    parts = path.split(".")
    holder = config
    for depth, part in enumerate(parts):
      where = ".".join(parts[:depth])
      if not isinstance(holder, ml_collections.ConfigDict):
        raise CommandLineError(
          f"--config.{path}: config.{where} is {type(holder).__name__} "
          f"{holder!r}, not a section with fields."
        )
      if part not in holder:
        prefix = f"{where}." if where else ""
        close = difflib.get_close_matches(part, list(holder.keys()), n=1, cutoff=0.6)
        # A field of that name in another section is the likelier meaning.
        elsewhere = [p for p in leaves if p.rsplit(".", 1)[-1] == part]
        if elsewhere and depth == len(parts) - 1:
          suggestion = elsewhere[0]
        elif close:
          suggestion = prefix + close[0] + path[len(prefix + part) :]
        else:
          fields = ", ".join(sorted(holder.keys()))
          raise CommandLineError(
            f"--config.{path}: no such field; "
            f"{'config.' + where if where else 'the config'} has {fields}."
          )
        raise CommandLineError(f"--config.{path}: no such field; did you mean {suggestion}?")
      holder = holder[part]


def _field_paths(config, prefix: str = "") -> list[str]:
  paths = []
  for key, value in config.items():
    paths.append(prefix + key)
    if isinstance(value, ml_collections.ConfigDict):
      paths += _field_paths(value, f"{prefix}{key}.")
  return paths


def _first_line(text: str) -> str:
  lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
  return lines[0] if lines else ""


def explain_parse_error(error: Exception, argv: list[str], config) -> str:
  """One sentence for what FLAGS(argv) raised; `config`: the config being overridden.

  Raises:
    CommandLineError: an override names a field that `config` does not have.
  """
  try:
    return _explain(error, argv, config)
  except CommandLineError:
    raise
  except Exception:  # pylint: disable=broad-except
    return f"the command line cannot be parsed: {_first_line(str(error))}"


def _explain(error: Exception, argv: list[str], config) -> str:
  if isinstance(error, flags.UnrecognizedFlagError):
    return _unrecognized(error)
  if config is not None:
    check_overrides(config, config_overrides(argv))
  if isinstance(error, flags.IllegalFlagValueError):
    return _illegal_value(error, config)
  if type(error).__name__ == "FlagOrderError":  # config_flags does not export it
    found = re.search(r"Found (\S+)", str(error))
    return (
      f"{found.group(1) if found else 'an override'} comes before --{CONFIG_FLAG}=...: "
      f"give the --{CONFIG_FLAG}.section.field overrides after it."
    )
  if isinstance(error, flags.Error):
    return _first_line(str(error))
  return f"the command line cannot be parsed: {type(error).__name__}: {_first_line(str(error))}"


# --- Config files (training) -------------------------------------------------------------------


def _location(error: BaseException, skip: int = 0) -> str:
  """' (file, line N)' of the innermost frame of `error` in the project, or ''."""
  library = os.path.dirname(os.__file__)
  frames = [
    frame
    for frame in traceback.extract_tb(error.__traceback__)[skip:]
    if "site-packages" not in frame.filename
    and not frame.filename.startswith(library)
    and not frame.filename.startswith("<frozen")
  ]
  if not frames:
    return ""
  filename = frames[-1].filename
  if not os.path.isabs(filename) or filename.startswith(os.getcwd() + os.sep):
    filename = os.path.relpath(filename)
  return f" ({filename}, line {frames[-1].lineno})"


def _describe(error: BaseException, skip: int = 0) -> str:
  message = _first_line(str(error))
  return f"{type(error).__name__}{': ' + message if message else ''}{_location(error, skip)}"


def check_config_path(argument: str):
  """Raises CommandLineError unless the file of --config=FILE[:ARG] is a readable file."""
  path = argument.split(":", 1)[0]
  if not path:
    raise CommandLineError("--config is empty: give a config file, e.g. --config=configs/tiny.py.")
  if os.path.isdir(path):
    raise CommandLineError(
      f"--config={argument} is a folder: give one of its config files, "
      f"e.g. --config={os.path.join(path, _some_config(path))}."
    )
  if not os.path.exists(path):
    folder = os.path.dirname(path) or "."
    names = (
      sorted(n for n in os.listdir(folder) if n.endswith(".py")) if os.path.isdir(folder) else []
    )
    close = difflib.get_close_matches(os.path.basename(path), names, n=1)
    hint = f"did you mean {os.path.join(os.path.dirname(path), close[0])}?" if close else ""
    raise CommandLineError(
      f"--config={argument}: no such file; {hint or 'give a config file, e.g. configs/tiny.py.'}"
    )
  if not os.access(path, os.R_OK):
    raise CommandLineError(f"--config={argument}: the file cannot be read (permission denied).")


def _some_config(folder: str) -> str:
  names = sorted(n for n in os.listdir(folder) if n.endswith(".py") and not n.startswith("_"))
  return "default.py" if "default.py" in names else (names[0] if names else "CONFIG.py")


def load_config_file(argument: str) -> ml_collections.ConfigDict:
  """The config of --config=FILE[:ARG], loaded as ml_collections does.

  Raises:
    CommandLineError: naming the file, when it is missing, fails to import,
      has no get_config(), or its get_config() raises or returns no ConfigDict.
  """
  check_config_path(argument)
  path, has_arg, arg = argument.partition(":")
  loader = importlib.machinery.SourceFileLoader("_fphtr_config_file", path)
  module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
  sys.modules[loader.name] = module  # as while importing: dataclasses in the file look it up
  try:
    loader.exec_module(module)
  except Exception as error:  # whatever the file raises
    raise CommandLineError(
      f"--config={argument}: loading {path} raised {_describe(error, skip=1)}."
    ) from None
  finally:
    sys.modules.pop(loader.name, None)
  get_config = getattr(module, "get_config", None)
  if not callable(get_config):
    raise CommandLineError(
      f"--config={argument}: {path} has no get_config() function; a config file "
      "defines get_config() returning an ml_collections.ConfigDict, like configs/tiny.py."
    )
  from configs import variants  # pylint: disable=g-import-not-at-top

  try:
    config = get_config(*([arg] if has_arg else []))
  except variants.ConfigArgumentError as error:  # names the item and what is allowed
    raise CommandLineError(f"--config={argument}: {error}") from None
  except Exception as error:  # whatever get_config raises
    raise CommandLineError(
      f"--config={argument}: get_config() of {path} raised {_describe(error, skip=1)}."
    ) from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise CommandLineError(
      f"--config={argument}: get_config() of {path} returned {type(config).__name__}, "
      "not an ml_collections.ConfigDict (a missing return statement?)."
    )
  return config


def _flags_parser(parse):
  """An absl flags parser (for `app.run(main, flags_parser=...)`) from `parse`.

  Quiets the libraries' logs; a CommandLineError of `parse` is one line on
  stderr and its exit status.
  """

  @functools.wraps(parse)
  def parser(argv: list[str]) -> list[str]:
    quiet_libraries()
    try:
      return parse(argv)
    except CommandLineError as error:
      fail(str(error), error.status)

  return parser


@_flags_parser
def parse_flags_with_config_file(argv: list[str]) -> list[str]:
  """absl flags parser for a --config=FILE flag (config_flags.DEFINE_config_file).

  Every mistake in the flags, the config file or its overrides is one line on
  stderr and exit status 2.
  """
  argument = flag_value(argv, CONFIG_FLAG)
  if argument is not None:
    check_config_path(argument)
  try:
    rest = FLAGS(argv)
  except Exception as error:  # flags.Error, or whatever the config file or an override raised
    # Loading the file again names what went wrong in it, if anything did.
    config = load_config_file(argument) if argument is not None else None
    raise CommandLineError(explain_parse_error(error, argv, config)) from None
  if argument is not None and not isinstance(FLAGS[CONFIG_FLAG].value, ml_collections.ConfigDict):
    load_config_file(argument)  # raises, naming what went wrong
    raise CommandLineError(f"--config={argument}: the file did not give a config.")
  return rest


# --- Run workdirs (evaluate, predict) ----------------------------------------------------------


def _is_remote(path: str) -> bool:
  return "://" in path


def check_run_workdir(workdir: str):
  """Raises CommandLineError unless `workdir` looks like the workdir of a training run.

  Checks only, never creates anything in it.
  """
  from fphtr_jax import checkpointing, inference  # pylint: disable=g-import-not-at-top

  if not workdir:
    raise CommandLineError("--workdir is empty: give the workdir of a training run.")
  if _is_remote(workdir):
    return
  if not os.path.exists(workdir):
    raise CommandLineError(
      f"--workdir={workdir}: no such folder; give the workdir of a training run."
    )
  if not os.path.isdir(workdir):
    raise CommandLineError(
      f"--workdir={workdir} is a file, not a folder; give the workdir of a training run."
    )
  has_config = os.path.isfile(os.path.join(workdir, inference.CONFIG_FILENAME))
  if not has_config and not os.path.isdir(os.path.join(workdir, checkpointing.CHECKPOINT_DIR)):
    raise CommandLineError(
      f"--workdir={workdir} has no {inference.CONFIG_FILENAME} and no "
      f"{checkpointing.CHECKPOINT_DIR}/ folder: it is not the workdir of a training run."
    )


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The saved config of the run in `workdir` (inference.load_config), or CommandLineError."""
  from fphtr_jax import inference  # pylint: disable=g-import-not-at-top

  check_run_workdir(workdir)
  try:
    return inference.load_config(workdir)
  except (ValueError, OSError) as error:  # config.json or the checkpoints: the message says which
    raise CommandLineError(str(error), status=1) from None
  except Exception as error:  # pylint: disable=broad-except
    raise CommandLineError(
      f"--workdir={workdir}: the run's config cannot be read: {_describe(error)}.", status=1
    ) from None


def load_model_config(model_dir: str) -> ml_collections.ConfigDict:
  """The config of the exported model in `model_dir`, or CommandLineError."""
  from fphtr_jax import inference  # pylint: disable=g-import-not-at-top

  if not os.path.isdir(model_dir):
    raise CommandLineError(f"--model={model_dir}: no such folder; give an exported model folder.")
  if not inference.is_model_dir(model_dir):
    raise CommandLineError(
      f"--model={model_dir} has no {inference.WEIGHTS_FILENAME}: it is not a model folder "
      "(python -m fphtr_jax.export writes them; a training run's workdir goes to --workdir)."
    )
  try:
    return inference.load_config(model_dir)
  except (ValueError, OSError) as error:
    raise CommandLineError(str(error), status=1) from None


@_flags_parser
def parse_flags_with_run_config(argv: list[str]) -> list[str]:
  """absl flags parser: --config is the saved config of --workdir's run, then parses.

  So `--config.decode.beam_size=4` overrides a field of the run's own config,
  checked against that field's type. Mistakes are one line on stderr and exit
  status 2.
  """
  workdir, model = flag_value(argv, "workdir"), flag_value(argv, "model")
  asks_help = any(arg in HELP_FLAGS for arg in argv[1:])
  if workdir is not None and model is not None:
    raise CommandLineError(
      "--workdir and --model both name a model: give one, a training run's workdir or an "
      "exported model folder."
    )
  if workdir is None and model is None and not asks_help:
    raise CommandLineError(
      "--workdir is required: the workdir of a training run (or --model=DIR, an exported model)."
    )
  # Without a workdir an empty config is enough to print the help.
  if model is not None:
    config = load_model_config(model)
  else:
    config = ml_collections.ConfigDict() if workdir is None else load_run_config(workdir)
  try:
    config_flags.DEFINE_config_dict(
      CONFIG_FLAG,
      config,
      "The run's saved config; override fields with --config.section.field=value.",
    )
    return FLAGS(argv)
  except Exception as error:  # flags.Error, or an override of a field the config lacks
    raise CommandLineError(explain_parse_error(error, argv, config)) from None


# --- Checks before the work --------------------------------------------------------------------


def check_config(config: ml_collections.ConfigDict, word_bank: bool = True):
  """The config's checks (config_validation, the model's) as CommandLineError.

  `word_bank`: whether the tool renders synthetic pages, so data.text_file
  must be a readable file too.
  """
  from fphtr_jax import config_validation  # pylint: disable=g-import-not-at-top
  from fphtr_jax.models import fphtr  # pylint: disable=g-import-not-at-top

  try:
    config_validation.validate_config(config)
    # Building the module (no weights) checks the model fields it depends on.
    fphtr.create_model(config.model, vocab_size=4, max_len=config.data.max_len)
  except ValueError as error:
    raise CommandLineError(str(error)) from None
  text_file = config.data.get("text_file")
  if word_bank and text_file and not _is_remote(text_file):
    from input_pipeline.wordbank import text  # pylint: disable=g-import-not-at-top

    try:
      text.check_text_file(text_file)
    except ValueError as error:
      raise CommandLineError(str(error)) from None


def check_checkpoint(workdir: str, checkpoint: str):
  """Raises CommandLineError unless --checkpoint is valid and the run has such checkpoints.

  Whether the step exists is left to inference.restore_run, which lists them.
  """
  from fphtr_jax import checkpointing, inference  # pylint: disable=g-import-not-at-top

  try:
    which, _ = inference.parse_checkpoint(checkpoint)
  except ValueError as error:
    raise CommandLineError(str(error)) from None
  if _is_remote(workdir):
    return
  folder = checkpointing.BEST_DIR if which == "best" else checkpointing.CHECKPOINT_DIR
  if not os.path.isdir(os.path.join(workdir, folder)):
    why = " (the run has not been evaluated yet)" if which == "best" else ""
    raise CommandLineError(
      f"--checkpoint={checkpoint}: {workdir} has no {folder}/ folder{why}; "
      "its checkpoints are written by training."
    )


def make_writable_dir(path: str, flag: str):
  """Creates folder `path` if needed and tries writing in it, before any work.

  Raises:
    CommandLineError: naming `flag`, when `path` is a file, is under a file,
      or cannot be created or written.
  """
  if _is_remote(path):
    return
  if os.path.exists(path) and not os.path.isdir(path):
    raise CommandLineError(f"--{flag}={path} is a file; give a folder (it is made if missing).")
  try:
    os.makedirs(path, exist_ok=True)
    with tempfile.TemporaryFile(dir=path):
      pass
  except OSError as error:
    raise CommandLineError(f"--{flag}={path} cannot be written: {_os_reason(error, path)}.")


def check_writable_dir(path: str, flag: str | None = None, hint: str = ""):
  """Raises CommandLineError unless folder `path` can be written, or made and written.

  Creates nothing: for folders made only once there is something to write.
  The message names --`flag` (or the path itself) and ends with `hint`.
  """
  if _is_remote(path):
    return
  name = f"--{flag}={path}" if flag else path
  if os.path.exists(path) and not os.path.isdir(path):
    raise CommandLineError(f"{name} is a file, not a folder{hint}.")
  existing = path
  while not os.path.exists(existing):
    parent = os.path.dirname(existing) or "."
    if parent == existing:
      break
    existing = parent
  if not os.path.isdir(existing):
    raise CommandLineError(f"{name} cannot be made: {existing} is a file{hint}.")
  if not os.access(existing, os.W_OK | os.X_OK):
    what = "it is not writable" if existing == path else f"{existing} is not writable"
    raise CommandLineError(f"{name} cannot be written: {what}{hint}.")


def _os_reason(error: OSError, path: str) -> str:
  """Why an OSError happened, in words: 'permission denied', 'x is a file'."""
  if isinstance(error, (NotADirectoryError, FileExistsError)):
    parent = path
    while parent and not os.path.exists(parent):
      parent = os.path.dirname(parent)
    if parent and not os.path.isdir(parent):
      return f"{parent} is a file"
  return (error.strerror or str(error)).lower()
