"""Project-wide test settings. Fixtures with real parts (git daemon, sshd, venvs)
live in tests/support and are wired up by each area's conftest.

Here: the run fails if a test left a process behind. Every process a fixture or test
starts must be ended by a finalizer, pass or fail; a leftover is found three ways,
because detached agent workers and daemons leave the pytest process's tree:

- a descendant of this pytest process;
- a process whose environment carries this run's marker (``LEAK_MARKER``, set here
  and inherited by everything started without a scrubbed environment);
- a process whose command line names this run's temporary directory (what sshd's
  sessions start: sshd gives them a fresh environment, but their paths are ours).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from tests.support.procs import Proc, leftover_processes
from tests.support.python38 import find_python38

#: Inherited by every process the run starts (unless a test scrubs the environment).
LEAK_MARKER = "NF_TESTRUN_MARK"  # not NODEFERRY_*: cli_env() drops those
#: How long leftovers get to exit on their own after the last teardown (processes
#: killed by a finalizer can take a moment to be reaped on a loaded machine).
LEAK_GRACE_SECONDS = 15.0


def pytest_sessionstart(session: pytest.Session) -> None:
    os.environ[LEAK_MARKER] = uuid.uuid4().hex


def _basetemp(config: pytest.Config) -> Path | None:
    factory = getattr(config, "_tmp_path_factory", None)
    return getattr(factory, "_basetemp", None) if factory is not None else None


def _leftovers(config: pytest.Config) -> list[Proc]:
    return leftover_processes(
        root_pid=os.getpid(),
        marker=(LEAK_MARKER, os.environ.get(LEAK_MARKER, "")),
        path=_basetemp(config),
    )


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get(LEAK_MARKER) is None or session.config.option.collectonly:
        return
    deadline = time.monotonic() + LEAK_GRACE_SECONDS
    leftovers = _leftovers(session.config)
    while leftovers and time.monotonic() < deadline:
        time.sleep(0.2)
        leftovers = _leftovers(session.config)
    if not leftovers:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = [f"  pid {p.pid} ({p.why}): {p.cmdline}" for p in leftovers]
    message = "\n".join(
        ["tests left processes behind (a finalizer is missing); killed them:", *lines]
    )
    if reporter is not None:
        reporter.ensure_newline()
        reporter.write_sep("!", "leaked processes", red=True)
        reporter.write_line(message)
    else:  # pragma: no cover - pytest always has a terminal reporter here
        print(message)
    for proc in leftovers:  # by pid: only what this run started
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(proc.pid, signal.SIGKILL)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def python38() -> Path:
    """A Python 3.8 interpreter (tests/support/python38.py says where it is looked
    for). Missing on a developer's machine: the test skips. Missing under CI
    (``CI=true``): the test fails, because the agent's 3.8 promise would go untested."""
    found = find_python38()
    if found is not None:
        return found
    message = (
        "no Python 3.8 interpreter found: set NODEFERRY_PYTHON38, put python3.8 on PATH, "
        "or run `uv python install 3.8`"
    )
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)
