"""Stopping cleanly: SIGTERM or Ctrl-C become a request to save and stop."""

import signal

from absl import logging


class StopRequest:
  """Turns SIGTERM/SIGINT into a request to stop at the next step boundary.

  The loop then saves a checkpoint of the finished step and exits cleanly,
  instead of dying mid-step and losing everything since the last save.
  """

  def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
    self.signals = signals
    self.signal_name = None
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    if self.signal_name is not None:  # A second signal: stop right away.
      raise KeyboardInterrupt
    self.signal_name = signal.Signals(signum).name
    logging.warning(
      "%s received: saving a checkpoint after this step, then stopping "
      "(send it again to stop at once).",
      self.signal_name,
    )

  def __enter__(self):
    for sig in self.signals:
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  @property
  def requested(self) -> bool:
    return self.signal_name is not None
