"""One training run per workdir: the lock file that says which process owns it.

`WORKDIR/.lock` holds the owner's host, PID and start time (JSON). The
trainer takes it before it writes or deletes anything in the workdir (opening
the checkpoint managers deletes unfinished saves, so a second trainer would
destroy the first one's save in progress) and removes it when it exits.
A lock whose process is gone (same host, PID not running) is taken over with
a warning; a lock of another host is honoured, since its PID cannot be
checked from here.
"""

import contextlib
import datetime
import json
import os
import socket
import time

from absl import logging

LOCK_FILE = ".lock"


class WorkdirInUseError(RuntimeError):
  """Another live run owns the workdir."""


def check_workdir(workdir: str):
  """Raises ValueError when `workdir` cannot be a workdir: it is a file."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(
      f"--workdir={workdir} is a file, not a folder; pass a new folder, or the workdir of "
      "the run to resume."
    )


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Someone else's process: alive.
    return True
  return True


def _missing_folders(path: str) -> list[str]:
  """`path` and those of its parents that do not exist, innermost first."""
  missing = []
  path = os.path.abspath(path)
  while not os.path.exists(path):
    missing.append(path)
    parent = os.path.dirname(path)
    if parent == path:
      break
    path = parent
  return missing


class WorkdirLock:
  """Owns `workdir` while entered: takes WORKDIR/.lock on enter, removes it on exit.

  With take=False (processes other than 0 of a multi-process run) it does
  nothing. On exit it also removes the folders it created, and those created
  in the workdir since, when they are still empty, so that a run that failed
  at its start leaves no empty workdir behind. `release` may be called more
  than once, from any thread (the stop-at-once path calls it before exiting).
  """

  def __init__(self, workdir: str, take: bool = True):
    self.workdir = os.path.abspath(workdir)
    self.path = os.path.join(self.workdir, LOCK_FILE)
    self.take = take
    self._record = None
    self._created = []  # Folders this lock created: the workdir and missing parents.
    self._existing = set()  # The workdir's entries when the lock was taken.

  def _owner_text(self, owner: dict) -> str:
    host, pid = owner.get("host"), owner.get("pid")
    where = "this host" if host == socket.gethostname() else f"host {host}"
    return f"PID {pid} on {where}, started {owner.get('started', 'at an unknown time')}"

  def _read(self) -> dict | None:
    """The lock's owner; None when the file is gone. Waits out a lock being written."""
    for _ in range(20):
      try:
        with open(self.path) as f:
          text = f.read()
      except FileNotFoundError:
        return None
      try:
        owner = json.loads(text)
        if isinstance(owner, dict) and isinstance(owner.get("pid"), int):
          return owner
      except json.JSONDecodeError:
        pass
      time.sleep(0.05)  # Created but not written yet by its owner: look again.
    raise WorkdirInUseError(
      f"The lock file {self.path} exists but does not name its owner; if no other run uses "
      "this workdir, delete it and run again."
    )

  def _try_create(self) -> bool:
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w") as f:
      json.dump(self._record, f)
      f.flush()
      os.fsync(f.fileno())
    return True

  def acquire(self):
    if not self.take:
      return
    check_workdir(self.workdir)
    self._created = _missing_folders(self.workdir)
    try:
      os.makedirs(self.workdir, exist_ok=True)
    except OSError as error:
      raise ValueError(
        f"Cannot create --workdir={self.workdir}: {error.strerror}; pass a folder you can write to."
      ) from error
    self._existing = set(os.listdir(self.workdir))
    self._record = {
      "host": socket.gethostname(),
      "pid": os.getpid(),
      "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    try:
      self._take()
    except BaseException:
      self._record = None  # Not ours: `release` must leave the file alone.
      raise

  def _take(self):
    for _ in range(5):  # Another process may take over the same stale lock at once.
      if self._try_create():
        return
      owner = self._read()
      if owner is None:  # Released between the two looks.
        continue
      same_host = owner.get("host") == socket.gethostname()
      if same_host and owner["pid"] != os.getpid() and not _pid_alive(owner["pid"]):
        logging.warning(
          "Taking over %s: its run (%s) is no longer running.", self.path, self._owner_text(owner)
        )
        if self._read() == owner:
          with contextlib.suppress(FileNotFoundError):
            os.remove(self.path)
        continue
      if same_host:
        raise WorkdirInUseError(
          f"{self.workdir} is in use by another training run ({self._owner_text(owner)}); "
          f"stop that run first or pass another --workdir (if PID {owner['pid']} is not a "
          f"training run, delete {self.path})."
        )
      raise WorkdirInUseError(
        f"{self.workdir} is in use by a training run on another machine "
        f"({self._owner_text(owner)}); stop that run first, or, if it is known to be dead, "
        f"delete {self.path} and run again."
      )
    raise WorkdirInUseError(
      f"Could not take the lock file {self.path}: other runs keep taking it; make sure only "
      "one run uses this workdir."
    )

  def release(self):
    """Removes the lock (if still this run's) and the empty folders this run created."""
    if self._record is None:
      return
    record, self._record = self._record, None
    try:
      with open(self.path) as f:
        ours = json.load(f) == record
    except (OSError, ValueError):
      ours = False
    if not ours:  # Taken over (its file was deleted): the workdir is no longer ours to tidy.
      return
    with contextlib.suppress(FileNotFoundError):
      os.remove(self.path)
    self._cleanup()

  def _cleanup(self):
    """Removes the still empty folders created since `acquire` (never a file)."""
    try:
      new = set(os.listdir(self.workdir)) - self._existing
    except OSError:
      new = set()
    for name in sorted(new):
      path = os.path.join(self.workdir, name)
      if os.path.isdir(path) and not os.path.islink(path):
        _rmdir_if_empty(path)
    for path in self._created:  # Innermost first; stops at the first one that is not empty.
      if not _rmdir_if_empty(path):
        break
    self._created = []

  def __enter__(self):
    self.acquire()
    return self

  def __exit__(self, *exc):
    self.release()


def _rmdir_if_empty(path: str) -> bool:
  try:
    os.rmdir(path)
  except FileNotFoundError:
    return True
  except OSError:  # Not empty (or not ours to remove): keep it.
    return False
  return True
