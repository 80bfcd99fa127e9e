"""Fixtures with real parts for the controller: sshd instances on loopback, a git
daemon serving generated node repos, fake ComfyUI homes, and the app under test
talking HTTP through aiohttp's test client."""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from controller.api.app import create_app
from controller.common.config import Settings
from controller.sandbox.comfy import NODE_INIT, ComfyHome, make_comfy_home
from controller.sandbox.gitserver import GitServer, Repo
from tests.support import nodedb
from tests.support.postgres import PostgresServer, find_bin_dir
from tests.support.procs import end_processes_under
from tests.support.sshd import SshServer, make_key

FINAL_STATES = {"completed", "failed", "cancelled", "lost"}

#: install.py that sleeps as many seconds as ``<ui_home>/sleep_seconds`` says
#: (cwd is the node's directory), so each test picks how long an install lasts.
SLEEP_INSTALL_PY = """\
import time
from pathlib import Path
time.sleep(float(Path("../../sleep_seconds").read_text()))
Path("slept.marker").write_text("done")
"""

#: install.py that waits until ``<ui_home>/release`` exists (at most two minutes),
#: so a test holds an install in ``running_install_scripts`` for exactly as long
#: as it needs, whatever the machine's load.
GATED_INSTALL_PY = """\
import sys
import tempfile
import time
from pathlib import Path
deadline = time.monotonic() + 120
while not Path("../../release").exists():
    if time.monotonic() > deadline:
        sys.exit("never released")
    time.sleep(0.05)
Path("released.marker").write_text("done")
"""


@dataclass
class NodeRepos:
    plain: Repo
    second: Repo
    sleeper: Repo
    gated: Repo
    urls: list[str] = field(default_factory=list)


@pytest.fixture(scope="session")
def git_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitServer]:
    with GitServer(tmp_path_factory.mktemp("controller-gitd")) as server:
        yield server


@pytest.fixture(scope="session")
def node_repos(git_server: GitServer) -> NodeRepos:
    return NodeRepos(
        plain=git_server.add_repo("ComfyUI-Plain", {"__init__.py": "NODE_CLASS_MAPPINGS = {}\n"}),
        second=git_server.add_repo("ComfyUI-Second", {"__init__.py": NODE_INIT}),
        sleeper=git_server.add_repo(
            "ComfyUI-Sleeper", {"__init__.py": NODE_INIT, "install.py": SLEEP_INSTALL_PY}
        ),
        gated=git_server.add_repo(
            "ComfyUI-Gated", {"__init__.py": NODE_INIT, "install.py": GATED_INSTALL_PY}
        ),
    )


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session (each test makes its own database)."""
    if find_bin_dir() is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed; .ci/run installs the postgresql package")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    # Not under pytest's basetemp: another pytest run resets its root to 0700,
    # and the server runs as the postgres user, who must reach its data dir.
    with PostgresServer(Path(tempfile.mkdtemp(prefix="nodeferry-pg-"))) as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The registry's database, once per engine: SQLite in the test's folder, or a
    fresh database on the session's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.sqlite3'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.url()


@pytest.fixture(scope="session")
def node_db_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ComfyUI-Manager 4.3's real node database files, from the cached wheel."""
    return nodedb.ready(tmp_path_factory.mktemp("node-db"))


@pytest.fixture(scope="session")
def client_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_key(tmp_path_factory.mktemp("client-key") / "id_ed25519")


@pytest.fixture
def sshd(tmp_path: Path, client_key: Path) -> Iterator[SshServer]:
    server = SshServer(tmp_path / "sshd-a", client_key=client_key)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sshd_b(tmp_path: Path, client_key: Path) -> Iterator[SshServer]:
    server = SshServer(tmp_path / "sshd-b", client_key=client_key)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def comfy_home(root: Path, sleep_seconds: float = 0.0) -> ComfyHome:
    """A fake ComfyUI (no venv: install.py runs with the controller's interpreter)."""
    home = make_comfy_home(root, with_venv=False)
    (home.root / "sleep_seconds").write_text(str(sleep_seconds))
    return home


@pytest.fixture
def home(tmp_path: Path) -> ComfyHome:
    return comfy_home(tmp_path / "ComfyUI")


@pytest.fixture
def settings(tmp_path: Path, client_key: Path) -> Settings:
    return make_settings(tmp_path, client_key)


def make_settings(tmp_path: Path, client_key: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "controller-data",
        "ssh_keys": [client_key],
        "use_ssh_agent": False,
        "known_hosts": tmp_path / "controller-data" / "known_hosts",
        "remote_state_dir": str(tmp_path / "remote-state"),
        "local_state_dir": tmp_path / "local-state",
        "connect_timeout": 5.0,
        "command_timeout": 30.0,
        "refresh_interval": 0.2,
        "monitor_interval": 1.0,
        "cleanup_interval": 3600.0,
        # Never the machine's own ~/.ssh/config: tests that need one write their own.
        "ssh_config": None,
        # Most tests install with "local" (no sshd needed); test_local_and_auth
        # shows it is refused without this.
        "allow_local": True,
    }
    values.update(overrides)
    return Settings(**values).validate()


AppFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


@pytest.fixture
async def make_client(tmp_path: Path) -> AsyncIterator[AppFactory]:
    """Start a controller app for ``settings``; all are closed at the end of the test,
    and the agent workers they started (detached: they outlive a controller by
    design) are ended, pass or fail.

    The client sends the controller's token (made in its data dir on start)
    unless ``authenticated=False``.
    """
    clients: list[TestClient[web.Request, web.Application]] = []

    async def start(
        settings: Settings, *, authenticated: bool = True
    ) -> TestClient[web.Request, web.Application]:
        app = create_app(settings)
        headers = {"Authorization": f"Bearer {settings.token}"} if authenticated else {}
        client = TestClient(TestServer(app), headers=headers)
        await client.start_server()
        clients.append(client)
        return client

    try:
        yield start
    finally:
        for client in clients:
            await client.close()
        await asyncio.get_running_loop().run_in_executor(None, end_processes_under, tmp_path)


@pytest.fixture
async def client(
    make_client: AppFactory, settings: Settings
) -> TestClient[web.Request, web.Application]:
    return await make_client(settings)


def install_body(
    ssh_connection: str, home: ComfyHome, nodes: list[Any], **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "ssh_connection": ssh_connection,
        "ui_home": str(home.root),
        "nodes": nodes,
        # install.py runs with this interpreter; the fake home has no venv.
        "python": sys.executable,
    }
    body.update(extra)
    return body


async def start_install(client: TestClient[Any, Any], body: dict[str, Any]) -> str:
    response = await client.post("/ssh/install-custom-nodes", json=body)
    payload = await response.json()
    assert response.status == 202, payload
    return str(payload["task_id"])


async def poll(client: TestClient[Any, Any], task_id: str) -> tuple[int, dict[str, Any]]:
    response = await client.post("/ssh/install-custom-nodes/progress", json={"task_id": task_id})
    return response.status, await response.json()


async def wait_for(
    client: TestClient[Any, Any],
    task_id: str,
    condition: Callable[[int, dict[str, Any]], bool],
    timeout: float = 60.0,
    interval: float = 0.1,
) -> tuple[int, dict[str, Any]]:
    """Poll the progress endpoint until ``condition(status, body)`` holds."""
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while True:
        status, body = await poll(client, task_id)
        state = f"{status}:{body.get('state')}"
        if not seen or seen[-1] != state:
            seen.append(state)
        if condition(status, body):
            return status, body
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached in {timeout} s; saw {seen}; last {body}")
        await asyncio.sleep(interval)


async def wait_final(
    client: TestClient[Any, Any], task_id: str, timeout: float = 60.0
) -> dict[str, Any]:
    _, body = await wait_for(
        client, task_id, lambda status, b: status == 200 and b.get("state") in FINAL_STATES, timeout
    )
    return body
