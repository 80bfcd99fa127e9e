"""Processes a test run started, found through /proc (Linux; no psutil), and a
finalizer that ends a child whatever the test's outcome.

No pytest here: tests/conftest.py's leak check and the fixtures use it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_PROC = Path("/proc")


@dataclass(frozen=True)
class Proc:
    pid: int
    why: str
    cmdline: str


def _read(pid: int, name: str) -> bytes:
    try:
        return (_PROC / str(pid) / name).read_bytes()
    except OSError:  # gone, or not ours to read
        return b""


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) from /proc/<pid>/stat, or None when the process is gone."""
    raw = _read(pid, "stat").decode(errors="replace")
    if not raw:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    fields = raw[raw.rfind(")") + 2 :].split()
    return fields[0], int(fields[1])


def _pids() -> list[int]:
    return [int(entry.name) for entry in _PROC.iterdir() if entry.name.isdigit()]


def leftover_processes(root_pid: int, marker: tuple[str, str], path: Path | None) -> list[Proc]:
    """Live processes (zombies excluded) that descend from ``root_pid``, carry the
    ``NAME=value`` ``marker`` in their environment, or name ``path`` in their argv."""
    parents: dict[int, int] = {}
    for pid in _pids():
        stat = _stat(pid)
        if stat is not None and stat[0] not in ("Z", "X"):
            parents[pid] = stat[1]
    me = os.getpid()
    name, value = marker
    needle = f"{name}={value}".encode() if value else None
    path_bytes = (str(path).rstrip("/") + "/").encode() if path is not None else None
    found: list[Proc] = []
    for pid in parents:
        if pid == me:
            continue
        why = ""
        ancestor = parents.get(pid, 0)
        while ancestor > 1:
            if ancestor == root_pid:
                why = "child of pytest"
                break
            ancestor = parents.get(ancestor, 0)
        argv = _read(pid, "cmdline")
        if not why and path_bytes is not None and _cwd_under(pid, path_bytes):
            why = "works in the run's temp dir"
        if not why and needle is not None and needle in _read(pid, "environ").split(b"\0"):
            why = f"carries {name}"
        if not why and path_bytes is not None and path_bytes in argv:
            why = "names the run's temp dir"
        if why:
            cmdline = argv.replace(b"\0", b" ").decode(errors="replace").strip()
            found.append(Proc(pid, why, cmdline[:300]))
    return found


def _cwd_under(pid: int, path_bytes: bytes) -> bool:
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd").encode()
    except OSError:
        return False
    return (cwd + b"/").startswith(path_bytes)


def processes_under(path: Path) -> list[int]:
    """Processes that name ``path`` in their argv or work inside it: the agent
    workers a test's controller started there (state dirs are under it), their
    pip and install.py children (their cwd is the test's ComfyUI home), git.
    Direct children of this process are left out: their fixtures own them."""
    me = os.getpid()
    path_bytes = (str(path).rstrip("/") + "/").encode()
    found = []
    for pid in _pids():
        stat = _stat(pid)
        if pid == me or stat is None or stat[0] in ("Z", "X") or stat[1] == me:
            continue
        if path_bytes in _read(pid, "cmdline") or _cwd_under(pid, path_bytes):
            found.append(pid)
    return found


def end_processes_under(path: Path, grace: float = 10.0) -> list[int]:
    """SIGTERM what :func:`processes_under` finds (an agent worker then cancels its
    children), SIGKILL what is still there after ``grace``; returns the pids found.

    The finalizer for tests whose installs may still run (detached workers
    outlive the controller by design)."""
    found = processes_under(path)
    for pid in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and set(found) & set(processes_under(path)):
        time.sleep(0.1)
    for pid in set(found) | set(processes_under(path)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return found


def end_process(proc: subprocess.Popen[bytes] | subprocess.Popen[str], grace: float = 5.0) -> None:
    """Terminate ``proc`` (and its process group when it leads one), then kill it."""
    if proc.poll() is None:
        group = _own_group(proc.pid)
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(proc.pid, signal.SIGTERM)
            else:
                proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                if group:
                    os.killpg(proc.pid, signal.SIGKILL)
                else:
                    proc.kill()
            proc.wait(grace)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def _own_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


@contextlib.contextmanager
def ended(proc: subprocess.Popen[bytes] | subprocess.Popen[str]) -> Iterator[None]:
    """``with ended(Popen(...)):`` - the child is ended on the way out, pass or fail."""
    try:
        yield
    finally:
        end_process(proc)
