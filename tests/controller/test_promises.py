"""What the README promises, end to end through the controller and the real sshd:
requirements installed into the ComfyUI home's own venv over SSH, cancel while pip
runs, while the launch is still connecting and while the instance is unreachable,
a task whose files are gone reads ``lost``, and the retention rules."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from controller.api.appkeys import SERVICE
from controller.common.config import load_settings
from controller.sandbox.comfy import ComfyHome, build_venv_template, make_comfy_home
from controller.sandbox.gitserver import GitServer
from controller.sandbox.wheels import build_wheel
from tests.controller.conftest import (
    AppFactory,
    NodeRepos,
    install_body,
    make_settings,
    poll,
    start_install,
    wait_final,
    wait_for,
)
from tests.support.procs import processes_under
from tests.support.sshd import SshServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

RUNNING = "running_install_scripts"

#: install.py that imports the node's requirement: it runs with the home's venv and
#: the package is importable there, or the node fails.
IMPORTS_TINYDEP = """\
import sys
import tinydep
from pathlib import Path
Path("loaded.marker").write_text(tinydep.__version__ + " " + sys.executable)
"""


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wheels = tmp_path_factory.mktemp("controller-wheels")
    build_wheel(wheels, "torch", "1.0.0")
    build_wheel(wheels, "tinydep", "1.0")
    return wheels


@pytest.fixture(scope="module")
def venv_template(tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path) -> Path:
    return build_venv_template(tmp_path_factory.mktemp("controller-venv") / "venv", wheelhouse)


@pytest.fixture
def venv_home(tmp_path: Path, venv_template: Path) -> ComfyHome:
    """A ComfyUI home with its own venv (pip and a fake torch 1.0.0)."""
    return make_comfy_home(tmp_path / "ComfyUI", venv_template=venv_template)


def venv_body(sshd: SshServer, home: ComfyHome, nodes: list[Any], pip_args: list[str]) -> Any:
    body = install_body(sshd.connection_string(), home, nodes, pip_args=pip_args)
    del body["python"]  # the agent finds the home's venv by itself
    return body


class SlowIndex:
    """A find-links page on 127.0.0.1 whose one wheel is sent only when the test
    says so: pip (or uv) blocks downloading it for as long as the test needs."""

    def __init__(self, wheel: Path) -> None:
        self.wheel = wheel
        self.requested = threading.Event()
        self.release = threading.Event()
        index = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, head: bool) -> None:
                if self.path.rstrip("/") in ("", "/index.html"):
                    kind = "text/html"
                    body = f'<a href="/{index.wheel.name}">{index.wheel.name}</a>'.encode()
                elif self.path == f"/{index.wheel.name}":
                    kind = "application/octet-stream"
                    body = index.wheel.read_bytes()
                    if not head:
                        index.requested.set()
                        index.release.wait(120)
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    with contextlib.suppress(OSError):
                        self.wfile.write(body)

            def do_GET(self) -> None:
                self._answer(head=False)

            def do_HEAD(self) -> None:
                self._answer(head=True)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"

    def __enter__(self) -> SlowIndex:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def frozen(pid: int) -> Iterator[None]:
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def gone(path: Path, timeout: float = 30) -> bool:
    """True once no process works in ``path`` or names it (polled; False at the timeout)."""
    deadline = time.monotonic() + timeout
    while processes_under(path):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


async def test_requirements_are_installed_over_ssh_into_the_homes_venv(
    client: Any,
    sshd: SshServer,
    venv_home: ComfyHome,
    git_server: GitServer,
    wheelhouse: Path,
) -> None:
    node = git_server.add_node_repo(
        f"ComfyUI-Needs-Tinydep-{uuid.uuid4().hex[:8]}",
        requirements=["tinydep==1.0"],
        install_py=IMPORTS_TINYDEP,
    )
    body = venv_body(sshd, venv_home, [node.url], ["--no-index", "--find-links", str(wheelhouse)])
    task_id = await start_install(client, body)
    final = await wait_final(client, task_id, timeout=120)
    assert final["state"] == "completed", final
    (result,) = final["nodes"]
    assert result["status"] == "installed" and result["requirements_status"] == "done"
    assert final["requirements_status"] == "done"
    assert venv_home.installed("tinydep") == "1.0"
    assert venv_home.installed("torch") == "1.0.0"
    marker = venv_home.custom_nodes / node.name / "loaded.marker"
    version, python = marker.read_text().split(" ", 1)
    assert version == "1.0"
    assert Path(python).parent == venv_home.python.parent  # the home's venv ran it


async def test_cancel_while_pip_runs_stops_it(
    client: Any,
    sshd: SshServer,
    venv_home: ComfyHome,
    git_server: GitServer,
    tmp_path: Path,
) -> None:
    wheel = build_wheel(tmp_path / "slow-wheels", "slowdep", "1.0")
    node = git_server.add_node_repo(
        f"ComfyUI-Slow-Req-{uuid.uuid4().hex[:8]}", requirements=["slowdep==1.0"]
    )
    with SlowIndex(wheel) as index:
        body = venv_body(sshd, venv_home, [node.url], ["--no-index", "--find-links", index.url])
        task_id = await start_install(client, body)
        # The installer is downloading the wheel, and the server holds it there.
        await asyncio.get_running_loop().run_in_executor(None, index.requested.wait, 120)
        _, during = await poll(client, task_id)
        assert during["state"] == "installing_requirements", during
        assert processes_under(venv_home.root), "no installer process is running"
        cancelled = await client.post(f"/api/tasks/{task_id}/cancel")
        final = await cancelled.json()
        assert cancelled.status == 200, final
    assert final["state"] == "cancelled"
    assert final["nodes"][0]["status"] == "cancelled"
    # pip (or uv) is gone, not left finishing the install behind the cancel.
    assert await gone(venv_home.root), processes_under(venv_home.root)
    assert venv_home.installed("slowdep") is None
    assert (await wait_final(client, task_id))["state"] == "cancelled"


async def test_cancel_while_the_launch_is_in_progress(
    make_client: AppFactory,
    tmp_path: Path,
    client_key: Path,
    sshd: SshServer,
    home: ComfyHome,
    node_repos: NodeRepos,
) -> None:
    # A long connect timeout: the launch waits on the frozen sshd, not on a clock.
    client = await make_client(make_settings(tmp_path, client_key, connect_timeout=120))
    assert sshd.pid is not None
    with frozen(sshd.pid):
        task_id = await start_install(
            client, install_body(sshd.connection_string(), home, [node_repos.gated.url])
        )
        _, first = await poll(client, task_id)
        assert first["state"] == "starting"
        cancel = asyncio.ensure_future(client.post(f"/api/tasks/{task_id}/cancel"))
        done, _ = await asyncio.wait({cancel}, timeout=1.0)
        assert not done, "the cancel answered before the launch it must stop had ended"
    response = await asyncio.wait_for(cancel, 120)
    final = await response.json()
    assert response.status == 200, final
    assert final["state"] == "cancelled", final
    assert (await wait_final(client, task_id))["state"] == "cancelled"
    # The gated install.py never got past its gate, and nothing of it runs on.
    assert not (home.custom_nodes / "ComfyUI-Gated" / "released.marker").exists()
    assert await gone(home.root)


async def test_cancel_while_unreachable_is_503_and_changes_nothing(
    client: Any, sshd: SshServer, home: ComfyHome, node_repos: NodeRepos
) -> None:
    task_id = await start_install(
        client, install_body(sshd.connection_string(), home, [node_repos.gated.url])
    )
    await wait_for(client, task_id, lambda s, b: b.get("state") == RUNNING)
    sshd.stop(drop_sessions=True)
    response = await client.post(f"/api/tasks/{task_id}/cancel")
    body = await response.json()
    assert response.status == 503, body
    assert body["success"] is False and body["message"]
    # Not reported as cancelled: the install is still running on the instance.
    shown = await (await client.get(f"/api/tasks/{task_id}")).json()
    assert shown["state"] == RUNNING, shown
    assert processes_under(home.root), "the install should still run on the instance"
    sshd.start()
    response = await client.post(f"/api/tasks/{task_id}/cancel")
    final = await response.json()
    assert response.status == 200 and final["state"] == "cancelled", final
    assert await gone(home.root)
    assert not (home.custom_nodes / "ComfyUI-Gated" / "released.marker").exists()


async def test_task_files_gone_reads_lost(
    make_client: AppFactory,
    tmp_path: Path,
    client_key: Path,
    sshd: SshServer,
    home: ComfyHome,
    node_repos: NodeRepos,
) -> None:
    settings = make_settings(tmp_path, client_key)
    client = await make_client(settings)
    task_id = await start_install(
        client, install_body(sshd.connection_string(), home, [node_repos.gated.url])
    )
    _, running = await wait_for(client, task_id, lambda s, b: b.get("state") == RUNNING)
    # The instance was rebooted and its temporary files wiped: no worker, no files.
    os.killpg(running["pid"], signal.SIGKILL)
    shutil.rmtree(Path(settings.remote_state_dir) / "tasks" / task_id)
    final = await wait_final(client, task_id, timeout=60)
    assert final["state"] == "lost", final
    assert final["error_code"] == "lost"
    assert "files are gone" in final["error"]
    assert final["success"] is False and final["in_progress"] is False


async def test_retention_is_two_hours_and_unreachable_machines_keep_tasks_longer(
    make_client: AppFactory,
    tmp_path: Path,
    client_key: Path,
    sshd: SshServer,
    home: ComfyHome,
    node_repos: NodeRepos,
) -> None:
    two_hours = 2 * 3600.0
    assert load_settings(environ={}, overrides={"data_dir": tmp_path / "d"}).retention == two_hours
    settings = make_settings(tmp_path, client_key)
    assert settings.retention == two_hours  # the tests' settings keep the default
    client = await make_client(settings)
    service = client.app[SERVICE]
    task_id = await start_install(
        client, install_body(sshd.connection_string(), home, [node_repos.plain.url])
    )
    assert (await wait_final(client, task_id))["state"] == "completed"
    finished = time.time()

    async def present() -> bool:
        return (await client.get(f"/api/tasks/{task_id}")).status == 200

    # Younger than two hours: kept.
    assert await service.cleanup(now=finished + two_hours - 60) == []
    assert await present()
    # Past two hours, but the machine cannot be reached to remove its files: kept...
    sshd.stop(drop_sessions=True)
    assert await service.cleanup(now=finished + two_hours + 60) == []
    assert await present()
    # ...until twice the retention has passed: then the controller forgets it anyway.
    assert await service.cleanup(now=finished + 2 * two_hours + 60) == [task_id]
    assert not await present()
