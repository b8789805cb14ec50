"""Stopping cleanly: SIGTERM or Ctrl-C become a request to save and stop.

Python runs its signal handlers in the main thread between two bytecodes, so a
handler waits for as long as the main thread is inside XLA (a compilation
can take minutes). The signals are therefore read by a watcher thread, from
the wakeup file descriptor that the interpreter writes each signal number to
the moment it arrives; that thread can stop the process at once.
"""

import os
import signal
import socket
import sys
import threading
from typing import Callable

from absl import logging


class StopRequest:
  """Turns SIGTERM/SIGINT into a request to stop at the next step boundary.

  The loop then saves a checkpoint of the finished step and exits cleanly,
  instead of dying mid-step and losing everything since the last save. When
  there is nothing to save (no step finished since the last checkpoint, or
  none at all yet, and no save is being written) the process exits at once,
  with status 0 like a run stopped at a step boundary. A second signal exits
  at once whatever is running, with status 128 + the signal's number (130 for
  SIGINT, 143 for SIGTERM): a save cut off that way leaves the previous
  checkpoints intact, as Orbax renames a save into place only when complete.

  The loop reports its progress with `finished(step)` and `saved(step)`;
  `watch_saves` gives a callable that is True while a save is being written,
  and `at_exit` functions to call before exiting at once (they must not take
  locks the main thread may hold). Enter it in the main thread.
  """

  def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
    self.signals = tuple(signals)
    self.signal_name = None
    self._previous = {}
    self._previous_wakeup = -1
    self._sockets = None
    self._watcher = None
    self._finished = None  # The last step trained (dispatched) and the last one saved.
    self._saved = None
    self._saving = lambda: False
    self._at_exit = []

  def finished(self, step: int):
    """Step `step` was trained: stopping now would lose it unless it is saved."""
    self._finished = step

  def saved(self, step: int):
    """A checkpoint of `step` exists or is being written (see `watch_saves`)."""
    self._saved = step

  def watch_saves(self, saving: Callable[[], bool]):
    self._saving = saving

  def at_exit(self, function: Callable[[], None]):
    self._at_exit.append(function)

  def _nothing_to_save(self) -> bool:
    try:
      saving = self._saving()
    except Exception:  # pylint: disable=broad-except
      saving = True  # Cannot tell: take the safe path and save at the step boundary.
    return self._finished == self._saved and not saving

  def _exit_now(self, status: int):
    for function in self._at_exit:
      try:
        function()
      except Exception as error:  # pylint: disable=broad-except
        logging.warning("While stopping: %r", error)
    logging.flush()
    for stream in (sys.stdout, sys.stderr):
      try:
        stream.flush()
      except Exception:  # pylint: disable=broad-except
        pass
    # Not sys.exit: the main thread may be inside XLA, and exiting through
    # the interpreter's shutdown from there is what crashed before.
    os._exit(status)

  def _on_signal(self, signum: int):
    name = signal.Signals(signum).name
    if self.signal_name is not None:
      logging.warning(
        "%s received again: stopping at once without saving; the complete checkpoints are "
        "intact, and the same command resumes from the newest.",
        name,
      )
      self._exit_now(128 + signum)
    if self._nothing_to_save():
      since = (
        "before any training step finished"
        if self._saved in (None, 0)
        else f"with no step finished since the checkpoint of step {self._saved}"
      )
      logging.warning(
        "%s received %s: nothing is lost, stopping now. Run the same command again to resume.",
        name,
        since,
      )
      self._exit_now(0)
    self.signal_name = name
    logging.warning(
      "%s received: saving a checkpoint after this step, then stopping "
      "(send it again to stop at once).",
      name,
    )

  def _watch(self, receiver: socket.socket):
    while True:
      try:
        data = receiver.recv(64)
      except OSError:
        return
      if not data:  # Closed by __exit__.
        return
      for signum in data:
        if signum in self.signals:
          self._on_signal(signum)

  def __enter__(self):
    if not self.signals:
      return self
    receiver, sender = socket.socketpair()
    sender.setblocking(False)
    self._sockets = (receiver, sender)
    self._watcher = threading.Thread(
      target=self._watch, args=(receiver,), name="stop-request", daemon=True
    )
    self._watcher.start()
    self._previous_wakeup = signal.set_wakeup_fd(sender.fileno(), warn_on_full_buffer=False)
    for sig in self.signals:
      # The watcher thread acts; a Python handler must still be set so that
      # the interpreter catches the signal and writes it to the wakeup fd.
      self._previous[sig] = signal.signal(sig, lambda signum, frame: None)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}
    if self._sockets is not None:
      signal.set_wakeup_fd(self._previous_wakeup)
      receiver, sender = self._sockets
      sender.close()  # The watcher's recv then returns b"" (or fails) and it ends.
      self._watcher.join(timeout=5)
      receiver.close()
      self._sockets = self._watcher = None

  @property
  def requested(self) -> bool:
    return self.signal_name is not None
