"""Is a task's worker still running? Asked by ``status``, ``list`` and ``cancel``.

A pid alone is not enough: after a reboot or a long time the same pid may belong
to another process. The worker counts as alive only when the pid exists, its
``/proc/<pid>/cmdline`` names the task id, and the machine's boot id is the one
the worker recorded.
"""

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import List, Optional

BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> Optional[str]:
    try:
        return BOOT_ID_FILE.read_text().strip() or None
    except OSError:
        return None


def cmdline(pid: int) -> Optional[List[str]]:
    """The argv of ``pid``; None when /proc cannot tell (no such process, no /proc)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def worker_alive(pid: Optional[int], task_id: str, recorded_boot_id: Optional[str]) -> bool:
    if pid is None or pid <= 0:
        return False
    current_boot = boot_id()
    if recorded_boot_id and current_boot and recorded_boot_id != current_boot:
        return False
    if not pid_exists(pid):
        return False
    if not Path("/proc/self/cmdline").exists():
        return True  # no /proc (not Linux): the pid check is all we have
    argv = cmdline(pid)
    # A zombie has an empty cmdline: it is dead, only not reaped yet.
    return argv is not None and task_id in argv


TASK_ENV = "NODEFERRY_TASK_ID"


def task_processes(task_id: str) -> List[int]:
    """Processes whose environment names ``task_id``: everything a worker started.

    The worker puts ``NODEFERRY_TASK_ID`` in its children's environment, which
    their own children inherit, so they can be found (and stopped) even after the
    worker died and they were reparented away from it.
    """
    marker = f"{TASK_ENV}={task_id}".encode()
    found: List[int] = []
    proc = Path("/proc")
    for entry in proc.iterdir() if proc.is_dir() else ():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def end_task_processes(task_id: str, wait: float = 2.0) -> List[int]:
    """SIGKILL every process marked with ``task_id`` (each group it leads as a
    whole) and wait up to ``wait`` seconds for them to go; returns those left.

    For a task whose worker died: what it started (install.py, pip, their own
    children) lives on, reparented away from it, and would keep writing into the
    ComfyUI home beside the next install.
    """
    deadline = time.monotonic() + wait
    while True:
        found = task_processes(task_id)
        if not found or time.monotonic() > deadline:
            return found
        for pid in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if os.getpgid(pid) == pid:
                    os.killpg(pid, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)


def descendants(pid: int) -> List[int]:
    """Every process below ``pid`` in the process tree, read from /proc."""
    children: dict[int, List[int]] = {}
    proc = Path("/proc")
    for entry in proc.iterdir() if proc.is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces and parentheses; fields follow the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) < 2:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: List[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found
