"""The ComfyUI processes running a home, and which Python each of them runs.

The processes are :func:`agent.comfyproc.find`'s (the one reading of ``/proc``
for a home's ComfyUI); here, which interpreter each runs. Deps installed into
another interpreter than the one ComfyUI runs are "installed but won't load", so
a plan names the mismatch before an install makes it.

An interpreter is identified by its environment, not its binary: every venv's
``bin/python`` resolves to the same base executable, so two venvs are told apart
by the ``pyvenv.cfg`` beside the ``bin/`` the command was started from.
"""

import os
from pathlib import Path
from typing import Dict, List, Optional

from agent import comfyproc


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


def _which(name: str, env_path: str, cwd: str) -> Optional[str]:
    for folder in env_path.split(":"):
        candidate = Path(folder or cwd) / name
        if candidate.is_file() and os.access(str(candidate), os.X_OK):
            return str(candidate)
    return None


def _interpreter(process: comfyproc.ComfyProcess) -> Optional[str]:
    """The interpreter as ``process`` was started: argv[0] made absolute (its PATH when
    it has no slash), else what ``/proc/PID/exe`` points at."""
    first = process.argv[0]
    if "/" in first:
        python: Optional[str] = str(Path(process.cwd) / first)
    else:
        python = _which(first, process.env.get("PATH", ""), process.cwd)
    if not python:
        try:
            python = os.readlink(str(comfyproc.PROC / str(process.pid) / "exe"))
        except OSError:
            return None
    # normpath, not resolve(): a venv's bin/python is a symlink out of the venv.
    return os.path.normpath(python)


def find(ui_home: Path) -> List[Running]:
    """Every process (that this user may read) running ComfyUI from ``ui_home``."""
    found: List[Running] = []
    for process in comfyproc.find(ui_home):
        python = _interpreter(process)
        if python is not None:
            found.append(Running(process.pid, process.argv, python, identity(python)))
    return found
