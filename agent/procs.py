"""Child processes: list argv, own process group, timeout, output streamed to the log.

Every child starts in its own session (so its process group can be killed as a
whole: git's helpers, pip's build subprocesses, whatever install.py starts) with
stdin closed, so nothing can wait for an answer from a person.
"""

import collections
import contextlib
import os
import signal
import subprocess
import threading
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence

from agent.errors import Cancelled
from agent.liveness import task_processes
from agent.tasklog import TaskLog, redact

TAIL_LINES = 15
KILL_GRACE_SECONDS = 0.5


class Result:
    def __init__(
        self, argv: Sequence[str], returncode: int, tail: List[str], seconds: float, timed_out: bool
    ) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.tail = tail
        self.seconds = seconds
        self.timed_out = timed_out

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def describe(self, what: str) -> str:
        """A node ``error``: what failed, how, and the tail of its output."""
        if self.timed_out:
            head = f"{what} timed out after {self.seconds:.0f}s"
        else:
            head = f"{what} failed with exit code {self.returncode}"
        tail = "\n".join(self.tail).strip()
        return head + (":\n" + tail if tail else "")


class Children:
    """The worker's running children, so a cancel can kill every one of them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: Dict[int, subprocess.Popen[bytes]] = {}
        self.cancelled = threading.Event()

    def add(self, proc: "subprocess.Popen[bytes]") -> None:
        with self._lock:
            self._procs[proc.pid] = proc
        if self.cancelled.is_set():
            _kill_group(proc.pid, signal.SIGKILL)

    def remove(self, proc: "subprocess.Popen[bytes]") -> None:
        with self._lock:
            self._procs.pop(proc.pid, None)

    def cancel(self) -> None:
        """Stop everything: SIGTERM each child's group, SIGKILL what is left shortly after."""
        self.cancelled.set()
        with self._lock:
            pids = list(self._procs)
        for pid in pids:
            _kill_group(pid, signal.SIGTERM)
        if pids:
            timer = threading.Timer(KILL_GRACE_SECONDS, self._kill_all)
            timer.daemon = True
            timer.start()

    def _kill_all(self) -> None:
        with self._lock:
            pids = list(self._procs)
        for pid in pids:
            _kill_group(pid, signal.SIGKILL)

    def check(self) -> None:
        if self.cancelled.is_set():
            raise Cancelled()

    def sleep(self, seconds: float) -> None:
        """Sleep unless cancelled (then raise at once)."""
        if self.cancelled.wait(seconds):
            raise Cancelled()


def kill_task_processes(task_id: str) -> List[int]:
    """SIGKILL whatever still runs with this task's mark, e.g. daemons an install.py forked."""
    found = task_processes(task_id)
    for pid in found:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return found


def _kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def run(
    argv: Sequence[str],
    *,
    log: TaskLog,
    prefix: Optional[str],
    children: Children,
    timeout: float,
    cwd: Optional[str] = None,
    env: Optional[Mapping[str, str]] = None,
    collect: Optional[List[str]] = None,
    on_line: Optional[Callable[[str], None]] = None,
) -> Result:
    """Run ``argv`` to completion, streaming its output into the log line by line.

    ``collect``, when given, receives every output line (not only the tail).

    Raises :class:`Cancelled` when the install is cancelled before or while it runs.
    """
    children.check()
    log.command(prefix, argv, cwd)
    started = time.monotonic()
    proc = subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=dict(env) if env is not None else None,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        close_fds=True,
    )
    children.add(proc)
    timed_out = threading.Event()

    def on_timeout() -> None:
        timed_out.set()
        _kill_group(proc.pid, signal.SIGTERM)
        time.sleep(KILL_GRACE_SECONDS)
        _kill_group(proc.pid, signal.SIGKILL)

    timer = threading.Timer(timeout, on_timeout)
    timer.daemon = True
    timer.start()
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    try:
        if proc.stdout is None:  # started with stdout=PIPE above
            raise RuntimeError("the child has no stdout pipe")
        for raw in proc.stdout:
            text = raw.decode("utf-8", "replace").rstrip("\r\n")
            # pip and git redraw progress with \r; keep the last state of the line.
            text = text.rsplit("\r", 1)[-1]
            tail.append(redact(text))  # the tail ends up in the progress document
            if collect is not None:
                collect.append(text)
            log.line(prefix, text)
            if on_line is not None:
                on_line(redact(text))
        returncode = proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            _kill_group(proc.pid, signal.SIGKILL)
            proc.wait()
        # The leader is gone; make sure nothing it left behind in its group lingers.
        _kill_group(proc.pid, signal.SIGKILL)
        children.remove(proc)
        if proc.stdout is not None:
            proc.stdout.close()
    seconds = time.monotonic() - started
    result = Result(argv, returncode, list(tail), seconds, timed_out.is_set())
    if result.timed_out:
        log.line(prefix, f"timed out after {seconds:.1f}s (limit {timeout:.0f}s)")
    else:
        log.line(prefix, f"exit {returncode} after {seconds:.2f}s")
    if children.cancelled.is_set() and not result.ok:
        raise Cancelled()
    return result
