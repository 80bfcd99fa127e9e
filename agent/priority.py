"""Lower the worker's CPU and I/O priority, so a ComfyUI serving on the same
machine stays responsive while git, pip/uv and install.py run.

The worker lowers itself before it starts any child: niceness and the I/O
priority are inherited across fork, so every git, pip, uv and install.py process
(and whatever they start) runs lower too, with no window where a grandchild
escapes. The I/O priority uses the ``ioprio_set`` syscall where its number is
known, else the ``ionice`` binary when present; neither is fatal when missing.
"""

import ctypes
import os
import platform
import shutil
import subprocess
from typing import List, Optional

#: Niceness added to the worker (``nice -n 10``).
NICENESS = 10
#: ``ionice -c 2 -n 7``: best-effort class, lowest level. Not the idle class,
#: which can starve an install completely on a busy disk.
IOPRIO_CLASS_BEST_EFFORT = 2
IOPRIO_LEVEL = 7
_IOPRIO_CLASS_SHIFT = 13
_IOPRIO_WHO_PROCESS = 1
_IOPRIO_SET = {
    "x86_64": 251,
    "amd64": 251,
    "i386": 289,
    "i686": 289,
    "aarch64": 30,
    "arm64": 30,
    "riscv64": 30,
    "armv7l": 314,
    "ppc64le": 273,
    "ppc64": 273,
    "s390x": 282,
}
#: The niceness before :func:`lower` (None: never lowered). A ComfyUI the worker
#: restarts gets it back, so the server does not run at the install's priority.
original_nice: Optional[int] = None


def lower() -> List[str]:
    """Lower this process's priorities; returns what was done, for the task's log."""
    global original_nice
    done: List[str] = []
    try:
        original_nice = os.getpriority(os.PRIO_PROCESS, 0)
        os.setpriority(os.PRIO_PROCESS, 0, min(19, os.getpriority(os.PRIO_PROCESS, 0) + NICENESS))
        done.append(f"nice {os.getpriority(os.PRIO_PROCESS, 0)}")
    except (AttributeError, OSError) as exc:
        done.append(f"nice unchanged ({exc})")
    if _ioprio_syscall() or _ionice_binary():
        done.append(f"io best-effort/{IOPRIO_LEVEL}")
    else:
        done.append("io priority unchanged")
    return done


def _ioprio_syscall() -> bool:
    number = _IOPRIO_SET.get(platform.machine().lower())
    if number is None or os.uname().sysname != "Linux":
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        value = (IOPRIO_CLASS_BEST_EFFORT << _IOPRIO_CLASS_SHIFT) | IOPRIO_LEVEL
        return int(libc.syscall(number, _IOPRIO_WHO_PROCESS, 0, value)) == 0
    except (OSError, AttributeError):
        return False


def _ionice_binary() -> bool:
    ionice = shutil.which("ionice")
    if ionice is None:
        return False
    argv = [ionice, "-c", str(IOPRIO_CLASS_BEST_EFFORT), "-n", str(IOPRIO_LEVEL)]
    argv += ["-p", str(os.getpid())]
    try:
        result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0
