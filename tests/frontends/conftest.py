"""Real parts for the frontends' tests: the demo sandbox (ComfyUI folder with a venv, a
wheelhouse, sample nodes behind a real ``git daemon`` on 127.0.0.1) and a real
controller (``create_app``, ``local`` transport, the real agent) served from a
background thread so blocking clients, subprocesses and a browser can all use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from controller.api.app import create_app
from controller.api.appkeys import STATS
from controller.api.events import HEARTBEAT
from controller.client import Client, ClientError
from controller.common.config import Settings, load_settings
from controller.common.stats import Stats
from controller.sandbox import playground as sandboxes
from protocol import FINAL_STATES
from tests.support.procs import end_processes_under

#: A node whose install.py works for a long time: something to watch and cancel.
SLOW_NODE = sandboxes.SampleNode(
    "ComfyUI-Slow", "an install.py that takes minutes", install_script=True, install_seconds=300
)
REFRESH_INTERVAL = 0.2
HEARTBEAT_SECONDS = 0.5


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


@dataclass
class DemoWorld:
    sandbox: sandboxes.Sandbox
    git_url: str

    def nodes(self) -> list[str]:
        return self.sandbox.node_refs(self.git_url)

    def slow_node(self) -> str:
        return f"{self.git_url}/{SLOW_NODE.name}.git"

    def new_ui_home(self, base: Path) -> Path:
        """A fresh ComfyUI folder; it shares the sandbox's venv through ``python``."""
        home = base / "ComfyUI"
        (home / "custom_nodes").mkdir(parents=True)
        (home / "main.py").write_text("# ComfyUI stand-in\n")
        return home


@pytest.fixture(scope="session")
def isolated_pip() -> Iterator[None]:
    """The agent (a child of the controller) installs from the wheelhouse only."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("PIP_")}
    for name in saved:
        del os.environ[name]
    os.environ["PIP_CONFIG_FILE"] = os.devnull
    yield
    os.environ.pop("PIP_CONFIG_FILE", None)
    os.environ.update(saved)


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory, isolated_pip: None) -> Iterator[DemoWorld]:
    sandbox = sandboxes.build(tmp_path_factory.mktemp("world") / "sandbox")
    work = sandbox.root / "work"
    sandboxes.build_repo(SLOW_NODE, work, sandbox.repos)
    with sandboxes.git_daemon(sandbox.repos) as git_url:
        yield DemoWorld(sandbox, git_url)


@dataclass
class RunningController:
    url: str
    app: web.Application
    settings: Settings
    loop: asyncio.AbstractEventLoop

    @property
    def stats(self) -> Stats:
        return self.app[STATS]

    @property
    def token(self) -> str:
        assert self.settings.token, "create_app makes a token"
        return self.settings.token


def controller_settings(base: Path) -> Settings:
    return load_settings(
        environ={},
        overrides={
            "data_dir": base / "data",
            "local_state_dir": base / "agent-state",
            "refresh_interval": REFRESH_INTERVAL,
            # The sandbox installs on this machine.
            "allow_local": True,
        },
    )


@contextlib.contextmanager
def serve_in_thread(app: web.Application, settings: Settings) -> Iterator[RunningController]:
    """Serve ``app`` on a free loopback port from a thread with its own event loop."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="controller", daemon=True)
    thread.start()
    runner = web.AppRunner(app, handle_signals=False, access_log=None)

    async def start() -> tuple[str, int]:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        return host, port

    # Everything runs on the thread's loop, so this works where a loop already
    # runs in the calling thread (Playwright's sync API has one).
    host, port = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    try:
        yield RunningController(f"http://{host}:{port}", app, settings, loop)
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture(scope="session")
def controller(
    tmp_path_factory: pytest.TempPathFactory, world: DemoWorld
) -> Iterator[RunningController]:
    base = tmp_path_factory.mktemp("controller")
    settings = controller_settings(base)
    app = create_app(settings)
    app[HEARTBEAT] = HEARTBEAT_SECONDS
    try:
        with serve_in_thread(app, settings) as running:
            try:
                yield running
            finally:
                cancel_unfinished(running.url, running.token)
    finally:
        # What a cancel could not reach: the workers' state lives under ``base``.
        end_processes_under(base)


def cancel_unfinished(url: str, token: str) -> None:
    """No agent worker outlives the tests (slow installs run for minutes)."""
    with Client(url, token=token) as client:
        for task in client.tasks():
            if task["state"] not in FINAL_STATES:
                with contextlib.suppress(ClientError):
                    client.cancel(task["task_id"])


@pytest.fixture
def terminal() -> Iterator[Callable[[list[str], dict[str, str]], Any]]:
    """Opens ``test_cli.Terminal`` s (commands in a pseudo-terminal) that are closed
    at teardown with everything they started, pass or fail."""
    from tests.frontends.test_cli import Terminal

    opened: list[Terminal] = []

    def open_terminal(args: list[str], env: dict[str, str]) -> Terminal:
        opened.append(Terminal(args, env))
        return opened[-1]

    yield open_terminal
    for term in opened:
        term.close()
