"""One install per ComfyUI home: an exclusive ``flock`` on a file keyed by its real path.

The lock lives on the open file description, so a worker that inherits the
descriptor (``pass_fds``) keeps holding it after the process that took it has
exited, and the kernel releases it when the worker dies, however it dies.
"""

import fcntl
import hashlib
import os
from pathlib import Path
from typing import Optional

from agent import liveness
from agent.errors import Conflict


def lock_path(locks_dir: Path, ui_home: str) -> Path:
    real = str(Path(ui_home).expanduser().resolve())
    digest = hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest()
    return locks_dir / f"{digest}.lock"


def acquire(locks_dir: Path, ui_home: str, task_id: str) -> int:
    """Take the lock for ``ui_home`` and record ``task_id`` in it; returns the descriptor.

    Raises :class:`Conflict` naming the holder when another install has it.
    """
    path = lock_path(locks_dir, ui_home)
    # No O_TRUNC: truncating before holding the lock would erase the holder's id.
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        raise Conflict(holder, ui_home) from None
    except BaseException:
        os.close(fd)
        raise
    previous = _read_holder(fd)
    # The flock is free when the previous worker died, but what it started may
    # still run in this home: the home stays busy until those are gone.
    if previous and previous != task_id and liveness.end_task_processes(previous):
        os.close(fd)
        raise Conflict(previous, ui_home)
    os.ftruncate(fd, 0)
    os.pwrite(fd, task_id.encode("ascii"), 0)
    return fd


def holder(locks_dir: Path, ui_home: str) -> Optional[str]:
    """The task id recorded in the lock file (held or not), if any."""
    try:
        fd = os.open(lock_path(locks_dir, ui_home), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return _read_holder(fd)
    finally:
        os.close(fd)


def _read_holder(fd: int) -> Optional[str]:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return text or None
