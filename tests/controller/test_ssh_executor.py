"""Hosts that accept TCP and never answer cannot starve a healthy one: SSH work
runs on its own threads, one job at a time for a host that has not answered."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import pytest

from controller.api.appkeys import SERVICE
from controller.sandbox.comfy import ComfyHome
from tests.bench.blackhole import Blackhole
from tests.controller.conftest import (
    AppFactory,
    NodeRepos,
    install_body,
    make_settings,
    start_install,
    wait_final,
)
from tests.support.sshd import SshServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

THREADS = 4
DEAD_HOSTS = 3
TASKS_PER_DEAD_HOST = 3


async def test_black_holes_do_not_delay_a_healthy_start(
    make_client: AppFactory,
    tmp_path: Path,
    client_key: Path,
    sshd: SshServer,
    home: ComfyHome,
    node_repos: NodeRepos,
) -> None:
    # More jobs for dead hosts (9) than SSH threads (4), and a connect timeout far
    # longer than the healthy install takes: without per-host limits every thread
    # would sit in a dead handshake.
    settings = make_settings(tmp_path, client_key, ssh_threads=THREADS, connect_timeout=90.0)
    client = await make_client(settings)
    ssh = client.app[SERVICE].tasks.ssh
    with contextlib.ExitStack() as stack:
        holes = [stack.enter_context(Blackhole()) for _ in range(DEAD_HOSTS)]
        dead_tasks: list[str] = []
        for hole in holes:
            for index in range(TASKS_PER_DEAD_HOST):
                body: dict[str, Any] = {
                    "ssh_connection": f"root@127.0.0.1 -p {hole.port}",
                    "ui_home": f"/nowhere/ComfyUI-{index}",
                    "nodes": [node_repos.plain.url],
                }
                dead_tasks.append(await start_install(client, body))
        keys = [f"root@127.0.0.1:{hole.port}" for hole in holes]
        # Every dead host holds exactly one thread, in its handshake; the rest of
        # its jobs wait without one.
        await _until(lambda: all(ssh.running(key) == 1 for key in keys), "dead connects")
        await _until(lambda: all(hole.accepted >= 1 for hole in holes), "dead handshakes")
        assert all(ssh.waiting(key) >= TASKS_PER_DEAD_HOST - 1 for key in keys)

        task_id = await start_install(
            client, install_body(sshd.connection_string(), home, [node_repos.plain.url])
        )
        final = await wait_final(client, task_id)
        assert final["state"] == "completed" and final["success"] is True

        # ... while the dead hosts are still being waited for: nothing failed yet.
        assert all(ssh.running(key) == 1 for key in keys)
        assert all(hole.accepted == 1 for hole in holes)
        for dead in dead_tasks:
            doc = await (await client.get(f"/api/tasks/{dead}")).json()
            assert doc["state"] == "starting", doc


async def _until(condition: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)
