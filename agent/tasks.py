"""Reading and managing tasks on this instance: status, cancel, list, cleanup."""

import contextlib
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from agent import git as gitmod
from agent import liveness
from agent.errors import UnknownTask, UnreadableProgress
from agent.progress_file import ProgressWriter, read_progress
from agent.statedir import StateDir, TaskPaths
from agent.worker import sweep_temp_dirs
from protocol import ExitCode, Progress, ProtocolError
from protocol.progress import parse_time

CANCEL_GRACE_SECONDS = 1.5
POLL_SECONDS = 0.05


def load(paths: TaskPaths) -> Progress:
    """The task's document as the worker last wrote it."""
    try:
        progress = read_progress(paths.progress)
    except ProtocolError as exc:
        # Unreadable is not missing: the task is there, a reader should keep
        # its last good document and look again, not call the task lost.
        raise UnreadableProgress(
            f"task {paths.task_id} has an unreadable progress document: {exc}"
        ) from None
    if progress is None:
        if paths.dir.is_dir():
            raise UnknownTask(f"task {paths.task_id} has no progress document (it never started)")
        raise UnknownTask(f"no task {paths.task_id} on this instance")
    return progress


def derive_lost(progress: Progress) -> Progress:
    """The document a reader should see: ``lost`` when the worker died unfinished.

    A lost task's processes are ended first: its worker is gone, so nothing else
    would stop them, and they would write into the home beside the next install.
    """
    if progress.is_final or liveness.worker_alive(progress.pid, progress.task_id, progress.boot_id):
        return progress
    left = liveness.end_task_processes(progress.task_id)
    if left:
        # Unkillable for now (uninterruptible I/O): not lost yet, ask again later.
        return progress
    progress.state = "lost"
    progress.error_code = "lost"
    progress.error = (
        f"the agent (pid {progress.pid}) died without finishing; its last update was at "
        f"{progress.updated_at}. Start the install again to finish it."
    )
    return progress


def status(paths: TaskPaths) -> Progress:
    return derive_lost(load(paths))


def cancel(paths: TaskPaths) -> Progress:
    """Stop the task's worker and everything it started; returns the final document."""
    progress = load(paths)
    if progress.is_final:
        return progress
    pid = progress.pid
    if pid is not None and liveness.worker_alive(pid, progress.task_id, progress.boot_id):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + CANCEL_GRACE_SECONDS
        while time.monotonic() < deadline:
            current = _try_load(paths)
            if current is not None and current.is_final:
                return current
            if not liveness.worker_alive(pid, progress.task_id, progress.boot_id):
                break
            time.sleep(POLL_SECONDS)
        _kill_tree(pid, progress.task_id, progress.boot_id)
    else:
        # A lost worker: what it started may still run, reparented away from it.
        _kill_tree(None, progress.task_id, progress.boot_id)
    current = _try_load(paths)
    if current is not None and current.is_final:
        return current
    # The worker is gone without a final word: write it for it.
    doc = current or progress
    custom_nodes = Path(doc.ui_home).expanduser() / "custom_nodes"
    removed = sweep_temp_dirs(custom_nodes, gitmod.temp_prefix(doc.task_id))
    writer = ProgressWriter(paths.progress, doc)
    message = "the install was cancelled"
    if removed:
        message += "; removed half-made clones: " + ", ".join(removed)
    writer.finish("cancelled", exit_code=ExitCode.CANCELLED, error=message, error_code="cancelled")
    return writer.progress


def _try_load(paths: TaskPaths) -> Optional[Progress]:
    try:
        return read_progress(paths.progress)
    except ProtocolError:
        return None


def _kill_tree(pid: Optional[int], task_id: str, boot: Optional[str]) -> None:
    """SIGKILL the worker and every process group it started, then wait for it to go."""
    targets = [pid, *liveness.descendants(pid)] if pid is not None else []
    targets += [p for p in liveness.task_processes(task_id) if p not in targets]
    for target in targets:
        try:
            if os.getpgid(target) == target:
                os.killpg(target, signal.SIGKILL)
            else:
                os.kill(target, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + 1.0
    while (
        pid is not None
        and time.monotonic() < deadline
        and liveness.worker_alive(pid, task_id, boot)
    ):
        time.sleep(POLL_SECONDS)


def list_tasks(state: StateDir) -> List[Dict[str, Any]]:
    rows = []
    for paths in state.iter_tasks():
        try:
            progress = status(paths)
        except UnknownTask:
            continue
        rows.append(
            {
                "task_id": progress.task_id,
                "state": progress.state,
                "ui_home": progress.ui_home,
                "started_at": progress.started_at,
                "updated_at": progress.updated_at,
            }
        )
    rows.sort(key=lambda row: (row["started_at"], row["task_id"]), reverse=True)
    return rows


def cleanup(state: StateDir, older_than: float) -> List[str]:
    """Remove finished tasks whose last word is older than ``older_than`` seconds."""
    cutoff = time.time() - older_than
    removed = []
    for paths in state.iter_tasks():
        try:
            progress = status(paths)
        except UnknownTask:
            continue
        if not progress.is_final:
            continue
        last = progress.finished_at or progress.updated_at
        if parse_time(last).timestamp() < cutoff:
            shutil.rmtree(paths.dir, ignore_errors=True)
            removed.append(progress.task_id)
    return removed
