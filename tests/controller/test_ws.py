"""``GET /api/ws`` against real sshd instances: one socket follows many tasks to
their final messages, a hundred subscribers of one task cost one reader, and the
socket takes the API token in its first message or in the URL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from controller.api.appkeys import STATS
from controller.sandbox.comfy import ComfyHome
from tests.controller.conftest import (
    AppFactory,
    NodeRepos,
    comfy_home,
    install_body,
    make_settings,
    start_install,
    wait_for,
)
from tests.support.sshd import SshServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]


@pytest.fixture
def sshd_c(tmp_path: Path, client_key: Path) -> Iterator[SshServer]:
    server = SshServer(tmp_path / "sshd-c", client_key=client_key)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def receive(ws: aiohttp.ClientWebSocketResponse, timeout: float = 60.0) -> dict[str, Any]:
    message = await ws.receive(timeout=timeout)
    assert message.type == aiohttp.WSMsgType.TEXT, message
    data: dict[str, Any] = message.json()
    return data


async def test_one_socket_follows_three_tasks_to_their_final_messages(
    client: Any,
    tmp_path: Path,
    sshd: SshServer,
    sshd_b: SshServer,
    sshd_c: SshServer,
    node_repos: NodeRepos,
) -> None:
    servers = [sshd, sshd_b, sshd_c]
    homes = [comfy_home(tmp_path / f"home-{i}", sleep_seconds=1.0) for i in range(3)]
    ws = await client.ws_connect("/api/ws")
    assert (await receive(ws))["type"] == "ready"
    await ws.send_json({"op": "subscribe", "tasks": "all"})
    listed = await receive(ws)
    assert listed == {"type": "tasks", "tasks": []}
    task_ids = [
        await start_install(
            client,
            install_body(
                server.connection_string(), home, [node_repos.plain.url, node_repos.sleeper.url]
            ),
        )
        for server, home in zip(servers, homes, strict=True)
    ]
    for task_id in task_ids:
        await ws.send_json({"op": "subscribe", "task_id": task_id})
    finals: dict[str, dict[str, Any]] = {}
    progress: dict[str, list[str]] = {task_id: [] for task_id in task_ids}
    listed_ids: set[str] = set()
    while len(finals) < 3:
        message = await receive(ws)
        if message["type"] in ("progress", "final"):
            task_id = message["task_id"]
            assert task_id not in finals, "a message after the final one"
            assert message["progress"]["task_id"] == task_id
            progress[task_id].append(message["progress"]["state"])
            if message["type"] == "final":
                finals[task_id] = message["progress"]
        elif message["type"] == "task":
            listed_ids.add(message["task"]["task_id"])
        else:
            raise AssertionError(f"unexpected message {message}")
    for task_id, server, home in zip(task_ids, servers, homes, strict=True):
        final = finals[task_id]
        assert final["state"] == "completed" and final["success"] is True, final
        assert final["target"] == f"{server.user}@127.0.0.1:{server.port}"
        # Each task was followed while it ran, not only seen at its end.
        assert any(state != "completed" for state in progress[task_id]), progress[task_id]
        assert (home.custom_nodes / "ComfyUI-Sleeper" / "slept.marker").exists()
    # The task list feed announced the new tasks on the same socket.
    assert listed_ids == set(task_ids)
    # A final task answers a new subscription with its final message at once.
    await ws.send_json({"op": "subscribe", "task_id": task_ids[0]})
    again = await receive(ws)
    while again["type"] == "task":
        again = await receive(ws)
    assert again["type"] == "final" and again["task_id"] == task_ids[0]
    await ws.close()


async def test_a_hundred_subscribers_cost_one_reader(
    make_client: AppFactory,
    tmp_path: Path,
    client_key: Path,
    sshd: SshServer,
    home: ComfyHome,
    node_repos: NodeRepos,
) -> None:
    # No monitor job: every read below is caused by the subscribers.
    settings = make_settings(tmp_path, client_key, refresh_interval=0.3, monitor_interval=3600)
    client = await make_client(settings)
    (home.root / "sleep_seconds").write_text("3")
    task_id = await start_install(
        client, install_body(sshd.connection_string(), home, [node_repos.sleeper.url])
    )
    await wait_for(client, task_id, lambda s, b: b["state"] == "running_install_scripts")
    stats = client.app[STATS]

    async def subscriber() -> list[dict[str, Any]]:
        ws = await client.ws_connect("/api/ws")
        try:
            assert (await receive(ws))["type"] == "ready"
            await ws.send_json({"op": "subscribe", "task_id": task_id})
            seen = []
            while True:
                message = await receive(ws)
                seen.append(message)
                if message["type"] != "progress":
                    return seen
        finally:
            await ws.close()

    before = stats.snapshot()["remote_reads"]
    began = time.monotonic()
    runs = await asyncio.wait_for(asyncio.gather(*(subscriber() for _ in range(100))), 90)
    elapsed = time.monotonic() - began
    reads = stats.snapshot()["remote_reads"] - before
    for seen in runs:
        assert seen[-1]["type"] == "final", seen[-1]
        assert seen[-1]["progress"]["state"] == "completed"
        assert seen[0]["progress"]["state"] in ("running_install_scripts", "completed")
    # A hundred subscribers, one reader's worth of reads (one per refresh interval).
    assert 1 <= reads <= int(elapsed / settings.refresh_interval) + 2, (reads, elapsed)


async def test_the_socket_takes_the_token_and_refuses_without_it(
    make_client: AppFactory, tmp_path: Path, client_key: Path
) -> None:
    settings = make_settings(tmp_path, client_key, token="s3cret")
    # Without the bearer header the test client would otherwise send on every request.
    client = await make_client(settings, authenticated=False)

    # The token in the first message.
    ws = await client.ws_connect("/api/ws")
    await ws.send_json({"op": "auth", "token": "s3cret"})
    assert (await receive(ws)) == {"type": "ready", "auth": True}
    # Bad subscriptions are answered with errors; the socket stays usable.
    await ws.send_json({"op": "subscribe", "task_id": "../../etc"})
    bad = await receive(ws)
    assert bad["type"] == "error" and bad["error"] == "invalid_request"
    unknown = "3f1c1f8e-2b1a-4c1d-9e1f-1a2b3c4d5e6f"
    await ws.send_json({"op": "subscribe", "task_id": unknown})
    missing = await receive(ws)
    assert missing == {
        "type": "error",
        "error": "unknown_task",
        "message": f"no task {unknown} is known to this controller",
        "task_id": unknown,
    }
    await ws.send_json({"op": "subscribe", "tasks": "all"})
    assert (await receive(ws)) == {"type": "tasks", "tasks": []}
    await ws.close()

    # The token in the URL.
    ws = await client.ws_connect("/api/ws?token=s3cret")
    assert (await receive(ws))["type"] == "ready"
    await ws.close()

    # A wrong token: an error message, then the socket is closed with 4401.
    for first in ({"op": "auth", "token": "wrong"}, {"op": "subscribe", "tasks": "all"}):
        ws = await client.ws_connect("/api/ws")
        await ws.send_json(first)
        refused = await receive(ws)
        assert refused["type"] == "error" and refused["error"] == "unauthorized"
        closing = await ws.receive(timeout=10)
        assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 4401
        await ws.close()

    # Another site's page may not open it (a browser sends its Origin).
    response = await client.get(
        "/api/ws?token=s3cret",
        headers={
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Origin": "http://evil.example",
        },
    )
    assert response.status == 403
    assert "are refused" in (await response.json())["message"]
