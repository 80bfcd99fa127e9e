"""The controller's data dir: private to its user from creation, and tightened at start.

It holds the task database (its WAL carries pip index passwords and node URLs
with credentials while they are masked nowhere else), the API token and the
known-hosts file. The directory is 0700 and every file in it 0600:

- ``nodeferry serve`` sets the process umask to 077, so whatever the controller
  creates there (the database with its ``-wal``/``-shm``, caches, the node
  database copy) is private from its first byte, with no chmod window;
- ``prepare`` makes the directory 0700 and creates the database file 0600 before
  SQLite opens it (SQLite gives ``-wal`` and ``-shm`` the database file's mode), so
  an in-process app (tests, the demo) gets the same without touching the umask;
- a data dir left by an older version (0755, files 0644) is tightened at start.

Agent processes the ``local`` transport starts get the umask the controller
started with, so a local install makes its node folders as ``git clone`` would.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE_UMASK = 0o077
DIR_MODE = 0o700
FILE_MODE = 0o600

_inherited_umask: int | None = None


def use_private_umask() -> None:
    """Make every file the process creates private to its user (``serve``)."""
    global _inherited_umask
    previous = os.umask(PRIVATE_UMASK)
    if _inherited_umask is None:
        _inherited_umask = previous


def inherited_umask() -> int:
    """The umask the process had before :func:`use_private_umask` (for children)."""
    if _inherited_umask is not None:
        return _inherited_umask
    current = os.umask(0)
    os.umask(current)
    return current


def prepare(data_dir: Path, database: Path | None = None) -> None:
    """Create ``data_dir`` 0700 (and ``database`` 0600), tightening what exists."""
    data_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    tighten(data_dir)
    if database is not None and database.parent == data_dir:
        try:
            fd = os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
        except FileExistsError:
            pass
        else:
            os.close(fd)  # an empty file is an empty SQLite database


def tighten(data_dir: Path) -> None:
    """Directories 0700 and files 0600 under ``data_dir`` (ours only; links untouched)."""
    uid = os.getuid()
    for path in [data_dir, *data_dir.rglob("*")]:
        try:
            info = path.lstat()
        except OSError:
            continue
        if info.st_uid != uid or stat.S_ISLNK(info.st_mode):
            continue
        wanted = DIR_MODE if stat.S_ISDIR(info.st_mode) else FILE_MODE
        if stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode):
            current = stat.S_IMODE(info.st_mode)
            if current & ~wanted:
                path.chmod(current & wanted)
