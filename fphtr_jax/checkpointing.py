"""Orbax checkpoints: the latest N for resuming, and the best by validation CER.

Layout of a workdir:
  config.json           the resolved config of the run
  vocab.json            the tokenizer
  checkpoints/<step>/   state (params, batch_stats, opt_state, step), vocab, config
  best/<step>/          the state with the lowest validation CER so far, vocab, summary

Each checkpoint carries the vocabulary and the config, so it can be decoded
on its own. Saves are asynchronous; Orbax writes into a temporary folder and
renames it when complete, so an interrupted save never hides the previous one.
"""

import contextlib
import os

from absl import logging
import jax
import orbax.checkpoint as ocp

from fphtr_jax import tokenizer as tokenizer_lib

CHECKPOINT_DIR = "checkpoints"
BEST_DIR = "best"


def _manager(directory: str, max_to_keep: int, async_save: bool) -> ocp.CheckpointManager:
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


class Checkpointer:
  """Saves and restores train states, the vocabulary and the config of a run."""

  def __init__(self, workdir: str, checkpoint_config):
    workdir = os.path.abspath(workdir)
    self.latest = _manager(
      os.path.join(workdir, CHECKPOINT_DIR),
      checkpoint_config.max_to_keep,
      checkpoint_config.async_save,
    )
    self.best = _manager(os.path.join(workdir, BEST_DIR), 1, checkpoint_config.async_save)
    self.best_cer = self._read_best_cer()

  def _read_best_cer(self) -> float:
    step = self.best.latest_step()
    if step is None:
      return float("inf")
    summary = self.best.restore(step, args=ocp.args.Composite(summary=ocp.args.JsonRestore()))
    return float(summary["summary"]["cer"])

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def reached_preemption(self, step: int) -> bool:
    """True on every process once any was told to stop (SIGTERM), at the same step."""
    return self.latest.reached_preemption(step)

  @contextlib.contextmanager
  def _saving(self, what: str):
    """Turns a failed save (a full disk, say) into an error that says what is safe."""
    try:
      yield
    except Exception as error:  # pylint: disable=broad-except
      complete = self.latest.all_steps()
      raise OSError(
        f"{what} failed: {error!r}. The complete checkpoints in {self.latest.directory} "
        f"(steps {sorted(complete)}) are untouched; free space and run again to resume from "
        "the newest."
      ) from error

  def save(self, step: int, state, tokenizer, config, force: bool = False) -> bool:
    # An async save reports its error at the next save or wait.
    with self._saving(f"Saving checkpoint {step} (or finishing the one before)"):
      return self.latest.save(
        step,
        force=force,
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          vocab=ocp.args.JsonSave(tokenizer.to_json()),
          config=ocp.args.JsonSave(config.to_dict()),
        ),
      )

  def save_if_best(self, step: int, state, tokenizer, summary: dict) -> bool:
    """Keeps `state` as the best checkpoint when summary["cer"] beats the best so far."""
    if not summary["cer"] < self.best_cer:
      return False
    self.best_cer = summary["cer"]
    with self._saving(f"Saving the best checkpoint {step} (or finishing one before)"):
      return self.best.save(
        step,
        force=True,
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          vocab=ocp.args.JsonSave(tokenizer.to_json()),
          summary=ocp.args.JsonSave(summary),
        ),
      )

  def restore(self, abstract_state, step: int | None = None):
    """(train state, tokenizer) of checkpoint `step` (default: the newest).

    The state is laid out as `abstract_state` (`abstract_like`) says.
    """
    step = self.latest.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.latest.directory}.")
    restored = self.latest.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), vocab=ocp.args.JsonRestore()
      ),
    )
    return restored["state"], tokenizer_lib.Tokenizer.from_json(restored["vocab"])

  def _restore_json(self, item: str, step: int | None):
    step = self.latest.latest_step() if step is None else step
    if step is None:
      return None
    restored = self.latest.restore(step, args=ocp.args.Composite(**{item: ocp.args.JsonRestore()}))
    return restored[item]

  def restore_vocab(self, step: int | None = None) -> tokenizer_lib.Tokenizer | None:
    """The vocabulary of the latest (or `step`'s) checkpoint; None when there is none."""
    vocab = self._restore_json("vocab", step)
    return None if vocab is None else tokenizer_lib.Tokenizer.from_json(vocab)

  def restore_config(self, step: int | None = None) -> dict | None:
    """The config (as a dict) the latest (or `step`'s) checkpoint was trained with."""
    return self._restore_json("config", step)

  def wait(self):
    with self._saving("Finishing the last checkpoint"):
      self.latest.wait_until_finished()
      self.best.wait_until_finished()

  def close(self):
    self.latest.close()
    self.best.close()
    logging.info("Checkpoints closed.")
