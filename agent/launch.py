"""Starting the worker process: detached for ``start``, a plain child for ``run``/``install``.

The worker's argv always names the task id, so ``status`` can tell this task's
worker from an unrelated process that got the same pid later.
"""

import os
import subprocess
import sys
import zipimport
from pathlib import Path
from typing import List, Optional

import agent
from agent.bundle import Bundle, bundle
from agent.liveness import TASK_ENV
from agent.statedir import StateDir

# Runs the agent from a checkout without touching PYTHONPATH (which would leak
# into pip and install.py): argv[1] is the directory holding the packages.
_FROM_SOURCE = (
    "import sys; sys.path.insert(0, sys.argv.pop(1)); from agent.cli import main; sys.exit(main())"
)


def archive_path() -> Optional[str]:
    """The .pyz this agent runs from, or None when it runs from a checkout."""
    loader = getattr(agent, "__loader__", None)
    if isinstance(loader, zipimport.zipimporter):
        return str(loader.archive)
    return None


def running_bundle() -> Bundle:
    """The bundle this process runs from (or would be built from its source)."""
    archive = archive_path()
    if archive is not None:
        return Bundle(Path(archive).read_bytes())
    return bundle()


def agent_argv() -> List[str]:
    """The command that runs this same agent in a new process."""
    archive = archive_path()
    if archive is not None:
        return [sys.executable, archive]
    root = str(Path(agent.__file__).resolve().parent.parent)
    return [sys.executable, "-c", _FROM_SOURCE, root]


def worker_argv(state: StateDir, task_id: str, lock_fd: int) -> List[str]:
    return [
        *agent_argv(),
        "--state-dir",
        str(state.root),
        "worker",
        "--task-id",
        task_id,
        "--lock-fd",
        str(lock_fd),
    ]


def spawn_worker(
    state: StateDir, task_id: str, lock_fd: int, *, detached: bool
) -> "subprocess.Popen[bytes]":
    """Start the worker holding ``lock_fd`` (the same open file, so the same flock).

    Detached: a new session with no terminal and stdio away from the caller, so
    it survives the SSH session and the sshd that started ``start``.
    """
    paths = state.task(task_id)
    env = dict(os.environ)
    env.pop(TASK_ENV, None)  # only the worker's own children carry a task's mark
    with open(paths.log, "ab") as log:
        return subprocess.Popen(
            worker_argv(state, task_id, lock_fd),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd=str(paths.dir),
            pass_fds=(lock_fd,),
            env=env,
            start_new_session=detached,
        )
