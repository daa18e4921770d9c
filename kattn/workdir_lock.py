"""One run per workdir: an exclusive lock that dies with its process.

`hold(workdir)` takes an advisory `flock` on `WORKDIR/lock` and writes the
holder's host and pid into it, for the message a second run gets. The
kernel releases the lock when the holder exits, however it exits (SIGKILL
included), so a lock left by a dead process is never taken for a live one:
the file stays, but nobody holds it, and the next run takes it at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from typing import Iterator

LOCK_NAME = "lock"


class WorkdirLocked(RuntimeError):
  """Another live process holds the workdir."""


def _holder(fd: int) -> str:
  os.lseek(fd, 0, os.SEEK_SET)
  text = os.read(fd, 4096).decode("utf-8", "replace")
  try:
    holder = json.loads(text)
    return (
        f"pid {holder['pid']} on {holder['host']}, since"
        f" {holder['started']}"
    )
  except (ValueError, KeyError, TypeError):
    # The holder is between taking the lock and writing its name.
    return "a process that is just starting"


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[str]:
  """Holds `workdir`'s lock for the `with` block; fails at once if taken.

  Args:
    workdir: an existing folder.

  Yields:
    The lock file's path.

  Raises:
    WorkdirLocked: another live process holds the lock; the message names it.

  Examples:
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> with hold(folder):
    ...   try:
    ...     with hold(folder):
    ...       pass
    ...   except WorkdirLocked as error:
    ...     print("refused")
    refused
  """
  path = os.path.join(workdir, LOCK_NAME)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise WorkdirLocked(
          f"--workdir {workdir} is in use by another run ({_holder(fd)});"
          " wait for it to end, stop it, or use another --workdir."
      ) from None
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps({
        "host": socket.gethostname(), "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }).encode())
    try:
      yield path
    finally:
      os.ftruncate(fd, 0)
      fcntl.flock(fd, fcntl.LOCK_UN)
  finally:
    os.close(fd)
