"""The ComfyUI processes running a home, and which Python each of them runs.

Read from ``/proc`` (argv, cwd, environment, executable): a process is ComfyUI of
``ui_home`` when its argv runs ``main.py`` of that home (by absolute path, or
relative to a cwd that is the home). Deps installed into another interpreter than
the one ComfyUI runs are "installed but won't load", so a plan names the
mismatch before an install makes it.

An interpreter is identified by its environment, not its binary: every venv's
``bin/python`` resolves to the same base executable, so two venvs are told apart
by the ``pyvenv.cfg`` beside the ``bin/`` the command was started from.
"""

import os
from pathlib import Path
from typing import Dict, List, Optional

PROC = Path("/proc")


class Running:
    """One ComfyUI process of the home."""

    def __init__(self, pid: int, argv: List[str], python: str, identity: str) -> None:
        self.pid = pid
        self.argv = argv
        #: The interpreter as the process was started (argv[0] made absolute).
        self.python = python
        #: Its environment: the venv directory, else the resolved executable.
        self.identity = identity

    def to_dict(self) -> Dict[str, object]:
        return {"pid": self.pid, "python": self.python, "identity": self.identity}


def identity(python: str) -> str:
    """The environment ``python`` belongs to: its venv directory, else its real path."""
    path = Path(python)
    venv = path.parent.parent
    if path.parent.name == "bin" and (venv / "pyvenv.cfg").is_file():
        return os.path.realpath(str(venv))
    return os.path.realpath(str(path))


def _read(path: Path) -> Optional[bytes]:
    try:
        with open(str(path), "rb") as handle:
            return handle.read(1 << 20)
    except OSError:
        return None


def _which(name: str, env_path: str, cwd: str) -> Optional[str]:
    for folder in env_path.split(":"):
        candidate = Path(folder or cwd) / name
        if candidate.is_file() and os.access(str(candidate), os.X_OK):
            return str(candidate)
    return None


def _process(pid_dir: Path, home: str) -> Optional[Running]:
    raw = _read(pid_dir / "cmdline")
    if not raw:
        return None
    argv = [part.decode("utf-8", "replace") for part in raw.rstrip(b"\0").split(b"\0")]
    try:
        cwd = os.readlink(str(pid_dir / "cwd"))
    except OSError:
        cwd = ""
    scripts = [a for a in argv[1:] if a.endswith("main.py")]
    if not scripts:
        return None
    script = scripts[0]
    where = os.path.realpath(str(Path(cwd) / script) if cwd else script)
    if where != str(Path(home) / "main.py"):
        return None
    first = argv[0]
    if "/" in first:
        python = str(Path(cwd) / first) if cwd else first
    else:
        env = _read(pid_dir / "environ") or b""
        env_path = ""
        for entry in env.split(b"\0"):
            if entry.startswith(b"PATH="):
                env_path = entry[5:].decode("utf-8", "replace")
        python = _which(first, env_path, cwd) or ""
    if not python:
        try:
            python = os.readlink(str(pid_dir / "exe"))
        except OSError:
            return None
    # normpath, not resolve(): a venv's bin/python is a symlink out of the venv.
    python = os.path.normpath(python)
    return Running(int(pid_dir.name), argv, python, identity(python))


def find(ui_home: Path) -> List[Running]:
    """Every process (that this user may read) running ComfyUI from ``ui_home``."""
    home = os.path.realpath(str(ui_home))
    found: List[Running] = []
    try:
        entries = list(PROC.iterdir())
    except OSError:
        return found
    for entry in entries:
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        running = _process(entry, home)
        if running is not None:
            found.append(running)
    return sorted(found, key=lambda r: r.pid)
