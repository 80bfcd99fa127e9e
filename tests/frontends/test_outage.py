"""``wait`` through a real outage: the controller drives the agent over SSH to a real
sshd, the sshd goes away mid-install (the controller answers 503 / stale), comes
back, and both a streaming and a polling waiter carry on to the final document."""

from __future__ import annotations

import contextlib
import threading
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from controller.api.app import create_app
from controller.client import Client
from controller.common.config import Settings
from tests.frontends.conftest import DemoWorld, serve_in_thread, wait_until
from tests.support.procs import end_processes_under
from tests.support.sshd import SshServer, make_key

pytestmark = pytest.mark.slow


class Waiter(threading.Thread):
    def __init__(self, url: str, token: str, task_id: str, *, stream: bool) -> None:
        super().__init__(daemon=True)
        self.client = Client(url, token=token, retries=2, retry_delay=0.1)
        self.client._async.events_supported = stream
        self.task_id = task_id
        self.docs: list[dict[str, Any]] = []
        self.final: dict[str, Any] | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.final = self.client.wait(
                self.task_id, on_progress=self.docs.append, timeout=120, poll_interval=0.3
            )
        except BaseException as exc:
            self.error = exc
        finally:
            self.client.close()

    def saw(self, predicate: Any) -> bool:
        return any(predicate(doc) for doc in list(self.docs))


@pytest.mark.timeout(150)
def test_wait_survives_the_instance_going_away(world: DemoWorld, tmp_path: Path) -> None:
    key = make_key(tmp_path / "client_key")
    # The node's install.py runs for minutes: whatever happens, its worker (detached,
    # state under tmp_path) and install.py (cwd under tmp_path) end with the test.
    with contextlib.ExitStack() as stack:
        stack.callback(end_processes_under, tmp_path)
        sshd = stack.enter_context(SshServer(tmp_path / "sshd", client_key=key))
        settings = Settings(
            data_dir=tmp_path / "data",
            ssh_keys=[key],
            use_ssh_agent=False,
            remote_state_dir=str(tmp_path / "remote-state"),
            local_state_dir=tmp_path / "local-state",
            connect_timeout=3.0,
            command_timeout=30.0,
            refresh_interval=0.2,
            monitor_interval=1.0,
        ).validate()
        with serve_in_thread(create_app(settings), settings) as controller:
            with Client(controller.url, token=controller.token) as client:
                task_id = client.start(
                    sshd.connection_string(),
                    str(world.new_ui_home(tmp_path)),
                    [world.slow_node()],
                    python=str(world.sandbox.python),
                )
            waiters = [
                Waiter(controller.url, controller.token, task_id, stream=True),
                Waiter(controller.url, controller.token, task_id, stream=False),
            ]
            for waiter in waiters:
                waiter.start()
            for waiter in waiters:
                wait_until(
                    partial(waiter.saw, lambda d: d["state"] == "running_install_scripts"),
                    60,
                    "the install to run",
                )
            sshd.stop(drop_sessions=True)
            for waiter in waiters:
                wait_until(partial(waiter.saw, lambda d: d.get("stale")), 30, "a stale view")
                assert waiter.is_alive() and waiter.error is None
            sshd.start()
            with Client(controller.url, token=controller.token) as client:
                wait_until(
                    lambda: not client.progress(task_id, allow_stale=True)["stale"],
                    30,
                    "the controller to reach the instance again",
                )
                assert client.cancel(task_id)["state"] == "cancelled"
            for waiter in waiters:
                waiter.join(30)
                assert waiter.error is None, waiter.error
                assert waiter.final is not None and waiter.final["state"] == "cancelled"
                stale_at = next(i for i, d in enumerate(waiter.docs) if d.get("stale"))
                assert any(not d.get("stale") for d in waiter.docs[stale_at:])
