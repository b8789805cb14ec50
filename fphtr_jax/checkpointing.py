"""Orbax checkpoints: the latest N for resuming, and the best by validation CER.

Layout of a workdir:
  config.json           the resolved config of the run
  vocab.json            the tokenizer
  checkpoints/<step>/   state (params, batch_stats, opt_state, step), vocab, config
  best/<step>/          the state with the lowest validation CER so far, vocab, summary

Each checkpoint carries the vocabulary and the config, so it can be decoded
on its own. Saves are asynchronous; Orbax writes into a temporary folder and
renames it when complete, so an interrupted save never hides the previous one.

A checkpoint that cannot be read (a truncated or missing file, unreadable
vocabulary or config) is damaged: restoring the newest skips it with one
warning and takes the newest intact one instead; an explicitly requested step
that is damaged is an error. Damaged checkpoints are never deleted: the next
save of the run that found them renames them to `<step>.damaged`, next to
them, where Orbax neither lists nor deletes them.
"""

import gc
import json
import logging as std_logging
import os
import re
import sys
import traceback
from typing import Any, Callable

from absl import logging
from etils import epath
import jax
import orbax.checkpoint as ocp
import tensorstore as ts

from fphtr_jax import tokenizer as tokenizer_lib

CHECKPOINT_DIR = "checkpoints"
BEST_DIR = "best"
DAMAGED_SUFFIX = ".damaged"


class DamagedCheckpointError(OSError):
  """A requested checkpoint, or every checkpoint of a folder, cannot be read."""


class UnusableCheckpointError(ValueError):
  """Raised by a `read_first_intact` reader for an intact checkpoint it cannot use: no fallback."""


def _manager(
  directory: str, max_to_keep: int, async_save: bool, read_only: bool = False
) -> ocp.CheckpointManager:
  if read_only:
    # Reading only: nothing is created, cleaned up or deleted (a temporary
    # folder may be a save in progress of a run still training), and nothing
    # is asynchronous. (Orbax's own read_only option warns on every use.)
    options = ocp.CheckpointManagerOptions(
      max_to_keep=None, create=False, enable_async_checkpointing=False
    )
    return ocp.CheckpointManager(directory, options=options)
  # A save is written to a temporary folder and renamed when complete, so a run
  # killed mid-save leaves the previous checkpoints intact; the leftover
  # temporary folder is removed when the next run opens the manager.
  options = ocp.CheckpointManagerOptions(
    max_to_keep=max_to_keep,
    create=True,
    enable_async_checkpointing=async_save,
    cleanup_tmp_directories=True,
  )
  return ocp.CheckpointManager(directory, options=options)


def abstract_like(state, shardings):
  """ShapeDtypeStructs with shardings: tells Orbax where to put restored arrays."""
  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings
  )


def describe_error(error: BaseException, max_chars: int = 320) -> str:
  """`Type: first line` of the error's root cause (Orbax wraps TensorStore's errors).

  A long line keeps its start and its end, where TensorStore says what went
  wrong ("... File too large").
  """
  for _ in range(10):
    if error.__cause__ is None:
      break
    error = error.__cause__
  message = error.args[0] if isinstance(error, KeyError) and error.args else error
  # TensorStore appends the JSON spec of the array it was writing: long, and no help here.
  message = re.sub(r"\s*\[tensorstore_spec='.*?'\]", "", str(message), flags=re.DOTALL)
  lines = message.strip().splitlines()
  text = f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")
  if len(text) <= max_chars:
    return text
  head = max_chars // 3
  return f"{text[:head]} ... {text[len(text) - (max_chars - head - 5) :]}"


# --- Orbax's noise after a failed read or write ----------------------------------------------
#
# Orbax runs each read or write in an event loop of its own and closes it as
# soon as the first array fails; TensorStore then delivers the other arrays'
# results to the closed loop from its threads. Each reports an unraisable
# "RuntimeError: Event loop is closed" with its traceback, and each future
# whose error nobody read logs "Future exception was never retrieved": hundreds
# of lines, interleaved with and after the message that explains the failure.
# Only those two are dropped; anything else is reported as before.

_TENSORSTORE_ERROR = re.compile(r"^[A-Z_]+: ")  # TensorStore's "NOT_FOUND: ..." errors
_UNRETRIEVED = re.compile(r"^_?\w*Future exception was never retrieved")


def _is_closed_loop_noise(unraisable) -> bool:
  if unraisable.exc_type is not RuntimeError or str(unraisable.exc_value) != (
    "Event loop is closed"
  ):
    return False
  frames = traceback.extract_tb(unraisable.exc_traceback)
  return bool(frames) and frames[0].name == "call_soon_threadsafe"


def _drop_closed_loop_noise(unraisable):
  if not _is_closed_loop_noise(unraisable):
    _PREVIOUS_UNRAISABLEHOOK[0](unraisable)


_PREVIOUS_UNRAISABLEHOOK = [sys.unraisablehook]


class _UnretrievedTensorStoreErrors(std_logging.Filter):
  """Drops asyncio's "Future exception was never retrieved" for TensorStore's errors."""

  def filter(self, record):
    error = record.exc_info[1] if record.exc_info else None
    return not (
      _UNRETRIEVED.match(str(record.msg))
      and isinstance(error, ValueError)
      and _TENSORSTORE_ERROR.match(str(error))
    )


_UNRETRIEVED_FILTER = _UnretrievedTensorStoreErrors()


def quiet_failed_operations():
  """Drops the copies of an Orbax failure that its threads print after it (see above)."""
  if sys.unraisablehook is not _drop_closed_loop_noise:
    _PREVIOUS_UNRAISABLEHOOK[0] = sys.unraisablehook
    sys.unraisablehook = _drop_closed_loop_noise
  asyncio_logger = std_logging.getLogger("asyncio")
  if _UNRETRIEVED_FILTER not in asyncio_logger.filters:
    asyncio_logger.addFilter(_UNRETRIEVED_FILTER)


# --- Damaged checkpoints -----------------------------------------------------------------------


def _file_size(path: str) -> int:
  try:
    return os.path.getsize(path)
  except FileNotFoundError:
    raise FileNotFoundError(f"{path} is missing") from None


# "<type>:<base path>:<relative path>:<offset>:<length>", as ts.ocdbt.dump writes them.
_OCDBT_LOCATION = re.compile(r"^(btreenode|value):([^:]*):([^:]+):(\d+):(\d+)$")


def check_array_files(item_dir: str):
  """Raises, naming the file, when an item's arrays lack a file or one is truncated.

  Reads only the OCDBT database's manifest and B-tree nodes, not the arrays,
  before Orbax reads them: Orbax's own failure is hundreds of lines. What it
  does not recognise (remote paths, other layouts) it leaves to Orbax.
  """
  if "://" in item_dir:
    return
  if not os.path.isdir(item_dir):
    raise FileNotFoundError(f"{item_dir} is missing")
  metadata = os.path.join(item_dir, "_METADATA")
  if not os.path.exists(metadata):
    return
  with open(metadata, encoding="utf-8") as f:
    if not json.load(f).get("use_ocdbt", False):
      return
  _file_size(os.path.join(item_dir, "manifest.ocdbt"))
  base = ts.KvStore.open(f"file://{os.path.abspath(item_dir)}/").result()
  versions = ts.ocdbt.dump(base).result().get("versions") or []
  if not versions:
    return
  latest = max(versions, key=lambda version: version.get("generation_number", 0))
  pending = [latest["root"].get("location")]
  while pending:
    match = _OCDBT_LOCATION.match(pending.pop() or "")
    if not match:
      continue
    kind, base_path, relative, offset, length = match.groups()
    path = os.path.join(item_dir, base_path, relative)
    size, end = _file_size(path), int(offset) + int(length)
    if size < end:
      raise OSError(f"{path} is truncated: {size} bytes, {end} expected")
    if kind == "btreenode":
      node = ts.ocdbt.dump(base, match.group(0)).result()
      for entry in node.get("entries", ()):
        pending += [v for v in entry.values() if isinstance(v, str) and _OCDBT_LOCATION.match(v)]


def read_json_item(manager: ocp.CheckpointManager, step: int, item: str):
  """The JSON item (vocab, config, summary) of checkpoint `step`; the error names its folder."""
  try:
    return manager.restore(step, args=ocp.args.Composite(**{item: ocp.args.JsonRestore()}))[item]
  except Exception as error:  # pylint: disable=broad-except
    reason = describe_error(error)
  raise ValueError(f"{os.path.join(_step_dir(manager, step), item)} cannot be read: {reason}")


def _step_dir(manager: ocp.CheckpointManager, step: int) -> str:
  return os.path.join(str(manager.directory), str(step))


def read_first_intact(
  manager: ocp.CheckpointManager,
  read: Callable[[int], Any],
  step: int | None = None,
  damaged: dict[tuple[str, int], str] | None = None,
  advice: str | None = None,
) -> tuple[int, Any] | None:
  """(step, read(step)) of the newest checkpoint of `manager` that `read` reads; None if none.

  A checkpoint whose read raises is damaged: it is skipped with one warning
  (once per step when `damaged`, a dict shared between calls, remembers it)
  and the next older one is tried. With `step`, only that checkpoint is read
  and a damaged one is an error. `advice` ends the errors' message: what to
  do instead.

  Raises:
    FileNotFoundError: `step` is not one of the manager's steps.
    DamagedCheckpointError: `step`, or every checkpoint, cannot be read.
  """
  quiet_failed_operations()
  directory = str(manager.directory)
  damaged = {} if damaged is None else damaged
  steps = sorted(manager.all_steps(), reverse=True)
  if step is not None and step not in steps:
    raise FileNotFoundError(
      f"No checkpoint of step {step} in {directory}; it has steps {sorted(steps)}."
    )
  candidates = [step] if step is not None else steps
  for index, candidate in enumerate(candidates):
    reason = damaged.get((directory, candidate))
    if reason is None:
      try:
        return candidate, read(candidate)
      except UnusableCheckpointError:
        raise
      except Exception as error:  # pylint: disable=broad-except
        reason = describe_error(error)
      # The error's traceback holds Orbax's pending operations: freed now, they end quietly.
      gc.collect()
      damaged[(directory, candidate)] = reason
      if step is None and index + 1 < len(candidates):
        logging.warning(
          "Checkpoint %d in %s is damaged (%s); falling back to step %d.",
          candidate,
          directory,
          reason,
          candidates[index + 1],
        )
    if step is not None:
      advice = advice or f"restore another of its steps {sorted(steps)}, or the newest intact one"
      raise DamagedCheckpointError(
        f"Checkpoint {step} in {directory} is damaged ({reason}); {advice}."
      )
  if not candidates:
    return None
  last = candidates[-1]
  reason = damaged[(directory, last)]
  if len(candidates) == 1:
    what = f"its only checkpoint, step {last}, is damaged ({reason})"
  else:
    what = f"steps {candidates} are all damaged (step {last}: {reason})"
  advice = advice or "restore them from a backup, or move the folder away to start afresh"
  raise DamagedCheckpointError(f"No intact checkpoint in {directory}: {what}; {advice}.")


def _check_config(config):
  """A checkpoint's saved config: a dict with the sections that fix the model."""
  if not (
    isinstance(config, dict) and all(isinstance(config.get(s), dict) for s in ("model", "data"))
  ):
    raise ValueError("the saved config has no model and data sections")


def _complete_steps(manager: ocp.CheckpointManager) -> list[int]:
  """The finalized steps on disk (the manager's own list may hold a failed save)."""
  try:
    return sorted(ocp.utils.checkpoint_steps(manager.directory))
  except Exception:  # pylint: disable=broad-except
    return sorted(manager.all_steps())


class Checkpointer:
  """Saves and restores train states, the vocabulary and the config of a run.

  `read_only` (evaluate, predict; `checkpoint_config` is then not needed):
  reads only, and nothing in the workdir is created, cleaned up or changed.
  """

  def __init__(self, workdir: str, checkpoint_config=None, read_only: bool = False):
    quiet_failed_operations()
    workdir = os.path.abspath(workdir)
    self.read_only = read_only
    if read_only:
      max_to_keep, async_save = None, False
    else:
      max_to_keep, async_save = checkpoint_config.max_to_keep, checkpoint_config.async_save
    self.latest = _manager(
      os.path.join(workdir, CHECKPOINT_DIR), max_to_keep, async_save, read_only
    )
    self.best = _manager(os.path.join(workdir, BEST_DIR), 1, async_save, read_only)
    # (directory, step) -> why that checkpoint cannot be read.
    self.damaged: dict[tuple[str, int], str] = {}
    # The step `restore` restored the train state from.
    self.restored_step: int | None = None
    self._json: dict[int, tuple[tokenizer_lib.Tokenizer, dict]] = {}
    self.best_cer = float("inf") if read_only else self._read_best_cer()

  def _read_best_cer(self) -> float:
    def read(step):
      return float(read_json_item(self.best, step, "summary")["cer"])

    try:
      found = read_first_intact(
        self.best, read, damaged=self.damaged, advice="the next better evaluation replaces it"
      )
    except DamagedCheckpointError as error:
      # Not needed to resume: the next evaluation saves a new best checkpoint.
      logging.warning("%s", error)
      return float("inf")
    return float("inf") if found is None else found[1]

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def reached_preemption(self, step: int) -> bool:
    """True on every process once any was told to stop (SIGTERM), at the same step."""
    return self.latest.reached_preemption(step)

  def _saving(self, what: str, save: Callable[[], Any]):
    """Runs `save`; a failed save (a full disk, say) becomes an error that says what is safe.

    The error is raised without Orbax's traceback chained to it: that one is
    hundreds of lines, and the message names its cause.
    """
    try:
      return save()
    except Exception as error:  # pylint: disable=broad-except
      reason = describe_error(error)
    gc.collect()  # the error's traceback holds Orbax's pending operations
    kept = f"The complete checkpoints in {self.latest.directory} (steps "
    kept += f"{_complete_steps(self.latest)}) are untouched"
    if best := _complete_steps(self.best):
      kept += f", and so is the best one in {self.best.directory} (steps {best})"
    raise OSError(f"{what} failed: {reason}. {kept}; free space and run again to resume.")

  def _set_aside_damaged(self, manager: ocp.CheckpointManager, step: int):
    """Renames the damaged checkpoints found in `manager`'s folder to <step>.damaged.

    Before saving `step`: a damaged checkpoint of that step would block the
    save, and one that Orbax still lists would be deleted in turn, as the
    oldest, by `max_to_keep`.
    """
    directory = str(manager.directory)
    stale = sorted(s for (d, s) in self.damaged if d == directory and s in manager.all_steps())
    if not stale:
      return
    manager.wait_until_finished()
    for s in stale:
      source = epath.Path(directory) / str(s)
      target = source.parent / f"{s}{DAMAGED_SUFFIX}"
      count = 1
      while target.exists():
        target = source.parent / f"{s}{DAMAGED_SUFFIX}.{count}"
        count += 1
      if jax.process_index() == 0:
        source.rename(target)
        logging.warning("Moved the damaged checkpoint %d to %s (saving step %d).", s, target, step)
      del self.damaged[(directory, s)]
      self._json.pop(s, None)
    if jax.process_count() > 1:
      ocp.multihost.sync_global_processes(f"fphtr_set_aside_damaged_{step}")
    manager.reload()

  def save(self, step: int, state, tokenizer, config, force: bool = False) -> bool:
    def write():
      self._set_aside_damaged(self.latest, step)
      return self.latest.save(
        step,
        force=force,
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          vocab=ocp.args.JsonSave(tokenizer.to_json()),
          config=ocp.args.JsonSave(config.to_dict()),
        ),
      )

    # An async save reports its error at the next save or wait.
    return self._saving(f"Saving checkpoint {step} (or finishing the one before)", write)

  def save_if_best(self, step: int, state, tokenizer, summary: dict) -> bool:
    """Keeps `state` as the best checkpoint when summary["cer"] beats the best so far."""
    if not summary["cer"] < self.best_cer:
      return False
    self.best_cer = summary["cer"]

    def write():
      self._set_aside_damaged(self.best, step)
      if step in self.best.all_steps():  # resumed from before a best checkpoint
        return False
      return self.best.save(
        step,
        force=True,
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          vocab=ocp.args.JsonSave(tokenizer.to_json()),
          summary=ocp.args.JsonSave(summary),
        ),
      )

    return self._saving(f"Saving the best checkpoint {step} (or finishing one before)", write)

  def restore(self, abstract_state, step: int | None = None):
    """(train state, tokenizer) of checkpoint `step`, or of the newest intact one.

    The state is laid out as `abstract_state` (`abstract_like`) says. A
    damaged newest checkpoint is skipped with a warning; `restored_step` then
    says which step the state comes from (the state's own step).

    Raises:
      FileNotFoundError: there is no checkpoint, or none of `step`.
      DamagedCheckpointError: `step`, or every checkpoint, cannot be read.
    """

    def read(step):
      tokenizer, _ = self.read_json(step)
      restored = self.latest.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
      )
      return restored["state"], tokenizer

    found = read_first_intact(self.latest, read, step, self.damaged)
    if found is None:
      raise FileNotFoundError(f"No checkpoint in {self.latest.directory}.")
    self.restored_step, (state, tokenizer) = found
    return state, tokenizer

  def read_json(self, step: int) -> tuple[tokenizer_lib.Tokenizer, dict]:
    """(vocabulary, config) of checkpoint `step`; raises when the checkpoint is damaged.

    Its array files are checked too, so that `restore_vocab` and
    `restore_config` read the checkpoint that `restore` restores.
    """
    if step not in self._json:
      check_array_files(os.path.join(_step_dir(self.latest, step), "state"))
      vocab = read_json_item(self.latest, step, "vocab")
      config = read_json_item(self.latest, step, "config")
      _check_config(config)
      self._json[step] = tokenizer_lib.Tokenizer.from_json(vocab), config
    return self._json[step]

  def _restore_json(self, step: int | None) -> tuple[tokenizer_lib.Tokenizer, dict] | None:
    """(vocabulary, config) of checkpoint `step`, or of the newest intact one; None if none."""
    found = read_first_intact(self.latest, self.read_json, step, self.damaged)
    return None if found is None else found[1]

  def restore_vocab(self, step: int | None = None) -> tokenizer_lib.Tokenizer | None:
    """The vocabulary of the newest intact (or `step`'s) checkpoint; None when there is none."""
    items = self._restore_json(step)
    return None if items is None else items[0]

  def restore_config(self, step: int | None = None) -> dict | None:
    """The config (as a dict) the newest intact (or `step`'s) checkpoint was trained with."""
    items = self._restore_json(step)
    return None if items is None else items[1]

  def wait(self):
    def wait():
      self.latest.wait_until_finished()
      self.best.wait_until_finished()

    self._saving("Finishing the last checkpoint", wait)

  def close(self):
    """Closes both managers (the second even when closing the first fails)."""
    try:
      self.latest.close()
    finally:
      self.best.close()
    logging.info("Checkpoints closed.")
