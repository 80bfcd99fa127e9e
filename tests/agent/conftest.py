"""Fixtures with real parts for the agent's tests: a git daemon with generated repos,
a wheelhouse, a fake ComfyUI home with its own venv, and helpers to run the agent."""

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controller.sandbox.comfy import (
    NODE_INIT,
    ComfyHome,
    build_venv_template,
    isolated_pip_env,
    make_comfy_home,
)
from controller.sandbox.gitserver import GitServer, Repo
from controller.sandbox.wheels import build_wheel
from protocol import Progress

REPO_ROOT = Path(__file__).resolve().parents[2]
# The interpreter that runs the agent; set NODEFERRY_TEST_AGENT_PYTHON to run these
# tests against another one (e.g. Python 3.8, the oldest the agent supports).
AGENT_PYTHON = os.environ.get("NODEFERRY_TEST_AGENT_PYTHON") or sys.executable

SLOW_INSTALL_PY = """\
import os, sys, time
from pathlib import Path
Path("started.marker").write_text(str(os.getpid()))
time.sleep(float(os.environ.get("SLOW_INSTALL_SECONDS", "120")))
Path("finished.marker").write_text("done")
"""

INSTALL_PY = """\
import sys
from pathlib import Path
print("install.py running with", sys.executable)
Path("installed.marker").write_text(sys.executable)
"""


@dataclass
class Repos:
    plain: Repo
    with_reqs: Repo
    with_reqs2: Repo
    with_install: Repo
    with_submodule: Repo
    sub_lib: Repo
    bad_req: Repo
    wants_torch2: Repo
    slow_install: Repo
    pinned: Repo
    pinned_first: str
    missing_url: str


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wh = tmp_path_factory.mktemp("wheelhouse")
    build_wheel(wh, "torch", "1.0.0")
    build_wheel(wh, "torch", "2.0.0")
    build_wheel(wh, "tinydep", "1.0")
    build_wheel(wh, "otherdep", "2.0")
    return wh


@pytest.fixture(scope="session")
def venv_template(tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path) -> Path:
    return build_venv_template(tmp_path_factory.mktemp("venv-template") / "venv", wheelhouse)


@pytest.fixture(scope="session")
def git_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitServer]:
    with GitServer(tmp_path_factory.mktemp("gitd")) as server:
        yield server


@pytest.fixture(scope="session")
def repos(git_server: GitServer) -> Repos:
    s = git_server
    sub_lib = s.add_repo("sub-lib", {"lib.py": "VALUE = 42\n"})
    with_submodule = s.add_repo("with-submodule", {"__init__.py": NODE_INIT})
    with_submodule.add_submodule(sub_lib, "vendor/sub-lib")
    pinned = s.add_repo("pinned", {"__init__.py": NODE_INIT, "version.txt": "1\n"})
    first = pinned.head
    pinned.commit({"version.txt": "2\n"}, "second")
    return Repos(
        plain=s.add_repo("plain", {"__init__.py": "NODE_CLASS_MAPPINGS = {}\n"}),
        with_reqs=s.add_repo(
            "with-reqs", {"__init__.py": NODE_INIT, "requirements.txt": "tinydep==1.0\n"}
        ),
        with_reqs2=s.add_repo(
            "with-reqs2", {"__init__.py": NODE_INIT, "requirements.txt": "otherdep\n"}
        ),
        with_install=s.add_repo(
            "with-install", {"__init__.py": NODE_INIT, "install.py": INSTALL_PY}
        ),
        with_submodule=with_submodule,
        sub_lib=sub_lib,
        bad_req=s.add_repo(
            "bad-req",
            {"__init__.py": NODE_INIT, "requirements.txt": "no-such-package-anywhere==9.9\n"},
        ),
        wants_torch2=s.add_repo(
            "wants-torch2", {"__init__.py": NODE_INIT, "requirements.txt": "torch>=2.0\n"}
        ),
        slow_install=s.add_repo(
            "slow-install", {"__init__.py": NODE_INIT, "install.py": SLOW_INSTALL_PY}
        ),
        pinned=pinned,
        pinned_first=first,
        missing_url=s.missing_url("no-such-repo"),
    )


@pytest.fixture
def comfy(tmp_path: Path, venv_template: Path) -> ComfyHome:
    return make_comfy_home(tmp_path / "ComfyUI", venv_template=venv_template)


@pytest.fixture
def bare_comfy(tmp_path: Path) -> ComfyHome:
    """A ComfyUI home without a venv: enough where no requirement is installed."""
    return make_comfy_home(tmp_path / "ComfyUI", with_venv=False)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


class Agent:
    """Runs ``python -m agent --state-dir …`` from the checkout, isolated from pip config."""

    def __init__(self, state_dir: Path, wheelhouse: Path, installer: str = "auto") -> None:
        self.state_dir = state_dir
        self.wheelhouse = wheelhouse
        self.env = isolated_pip_env()
        self.env["NODEFERRY_AGENT_INSTALLER"] = installer
        self.env.pop("PYTHONPATH", None)

    @property
    def pip_args(self) -> list[str]:
        return ["--no-index", "--find-links", str(self.wheelhouse)]

    def argv(self, *args: str) -> list[str]:
        return [AGENT_PYTHON, "-m", "agent", "--state-dir", str(self.state_dir), *args]

    def run(
        self,
        *args: str,
        input: str | None = None,
        timeout: float = 120,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO_ROOT,
            env=env or self.env,
            check=False,
        )

    def json(
        self,
        *args: str,
        input: str | None = None,
        expect: int = 0,
        env: dict[str, str] | None = None,
    ) -> Any:
        result = self.run(*args, input=input, env=env)
        assert result.returncode == expect, (result.returncode, result.stdout, result.stderr)
        return json.loads(result.stdout)

    def spec(self, ui_home: Path, nodes: list[Any], **extra: Any) -> dict[str, Any]:
        from protocol.fields import new_task_id

        spec: dict[str, Any] = {
            "task_id": new_task_id(),
            "ui_home": str(ui_home),
            "nodes": nodes,
            "pip_args": self.pip_args,
        }
        spec.update(extra)
        return spec

    def start(self, spec: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = self.json("start", "--spec", "-", input=json.dumps(spec), env=env)
        return out

    def status(self, task_id: str) -> Progress:
        return Progress.from_dict(self.json("status", "--task-id", task_id))

    def wait_for(
        self, task_id: str, predicate: Callable[[Progress], bool], timeout: float = 90
    ) -> Progress:
        """Poll status until ``predicate`` holds; fails with the last document otherwise."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = self.status(task_id)
            if predicate(last):
                return last
            time.sleep(0.1)
        raise AssertionError(f"condition not met in {timeout}s; last document: {last}")

    def wait_final(self, task_id: str, timeout: float = 120) -> Progress:
        return self.wait_for(task_id, lambda p: p.is_final, timeout)


@pytest.fixture
def agent(state_dir: Path, wheelhouse: Path) -> Iterator[Agent]:
    runner = Agent(state_dir, wheelhouse)
    yield runner
    # A failed test must not leave a detached worker installing into the next one.
    tasks = state_dir / "tasks"
    for task_dir in tasks.iterdir() if tasks.is_dir() else ():
        progress = task_dir / "progress.json"
        if progress.exists() and not Progress.from_json(progress.read_text()).is_final:
            runner.run("cancel", "--task-id", task_dir.name)


def wait_until(condition: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} not met within {timeout}s")


def pid_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def temp_clone_dirs(home: ComfyHome) -> list[str]:
    return [name for name in home.node_dirs() if name.startswith(".nodeferry-")]


__all__ = ["REPO_ROOT", "Agent", "Repos", "os", "pid_running", "temp_clone_dirs", "wait_until"]
