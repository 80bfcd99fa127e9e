"""``POST /api/fleet`` on ten real sshd instances (separate sshd processes on
loopback, each with its own host key and port), one of them down."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.common.config import Settings
from controller.sandbox.comfy import ComfyHome
from tests.controller.conftest import AppFactory, NodeRepos, comfy_home
from tests.support.sshd import SshServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

FLEET_SIZE = 10


@pytest.fixture
def fleet_servers(tmp_path: Path, client_key: Path) -> Iterator[list[SshServer]]:
    servers: list[SshServer] = []
    try:
        for index in range(FLEET_SIZE):
            server = SshServer(tmp_path / f"sshd-{index}", client_key=client_key)
            servers.append(server)
            server.start()
        yield servers
    finally:
        for server in servers:
            with contextlib.suppress(Exception):
                server.stop()


async def wait_fleet(client: Any, fleet_id: str, timeout: float = 180.0) -> dict[str, Any]:
    async def settled() -> dict[str, Any]:
        while True:
            response = await client.get(f"/api/fleet/{fleet_id}")
            body: dict[str, Any] = await response.json()
            assert response.status == 200, body
            if body["running"] == 0:
                return body
            await asyncio.sleep(0.3)

    return await asyncio.wait_for(settled(), timeout)


async def test_a_fleet_of_ten_with_one_instance_down(
    make_client: AppFactory,
    settings: Settings,
    tmp_path: Path,
    fleet_servers: list[SshServer],
    node_repos: NodeRepos,
) -> None:
    client = await make_client(settings)
    # Every "instance" is this machine: each needs its own ComfyUI folder (the
    # per-target ui_home override), as images with different layouts would.
    homes: list[ComfyHome] = [comfy_home(tmp_path / f"comfy-{i}") for i in range(FLEET_SIZE)]
    down = fleet_servers[7]
    down.stop()
    targets: list[Any] = [
        {"ssh_connection": server.connection_string(), "ui_home": str(home.root)}
        for server, home in zip(fleet_servers, homes, strict=True)
    ]
    # The plain string form takes the request's ui_home.
    targets[0] = fleet_servers[0].connection_string()
    response = await client.post(
        "/api/fleet",
        json={
            "targets": targets,
            "ui_home": str(homes[0].root),
            "nodes": [node_repos.plain.url, node_repos.second.url],
            "python": sys.executable,
        },
    )
    started = await response.json()
    assert response.status == 202, started
    assert len(started["tasks"]) == FLEET_SIZE
    assert all(t["task_id"] for t in started["tasks"])

    fleet = await wait_fleet(client, started["fleet_id"])
    assert fleet["fleet_id"] == started["fleet_id"]
    assert (fleet["instances"], fleet["running"], fleet["completed"], fleet["failed"]) == (
        FLEET_SIZE,
        0,
        FLEET_SIZE - 1,
        1,
    )
    assert fleet["state"] == "failed" and fleet["all_succeeded"] is False
    per_instance = fleet["per_instance"]
    assert [i["task_id"] for i in per_instance] == [t["task_id"] for t in started["tasks"]]
    for index, (instance, server, home) in enumerate(
        zip(per_instance, fleet_servers, homes, strict=True)
    ):
        assert instance["target"] == f"{server.user}@127.0.0.1:{server.port}"
        assert instance["ui_home"] == str(home.root)
        if index == 7:
            assert instance["state"] == "failed" and instance["success"] is False
            assert instance["error_code"] == "start_failed", instance
            assert not (home.custom_nodes / "ComfyUI-Plain").exists()
        else:
            assert instance["state"] == "completed" and instance["success"] is True, instance
            assert (instance["total_nodes"], instance["successful"]) == (2, 2)
            assert (home.custom_nodes / "ComfyUI-Plain" / "__init__.py").exists()
            assert (home.custom_nodes / "ComfyUI-Second").is_dir()

    # The fleet is in the registry: a restarted controller still answers for it.
    await client.close()
    restarted = await make_client(settings)
    again = await restarted.get(f"/api/fleet/{started['fleet_id']}")
    assert again.status == 200
    assert (await again.json())["completed"] == FLEET_SIZE - 1


async def test_a_bad_fleet_starts_nothing(client: Any, tmp_path: Path, sshd: SshServer) -> None:
    home = comfy_home(tmp_path / "comfy")
    other = comfy_home(tmp_path / "other")
    good = {"ssh_connection": sshd.connection_string(), "ui_home": str(home.root)}
    nodes = ["https://github.com/a/b"]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"targets": [good, "root@host; rm -rf /"], "nodes": nodes}, "targets.1.ssh_connection"),
        (
            {"targets": [good, sshd.connection_string()], "nodes": nodes, "ui_home": None},
            "targets.1.ui_home",
        ),
        ({"targets": [good, {**good, "python": "x\n"}], "nodes": nodes}, "targets.1.python"),
        ({"targets": [good, {**good, "port": 22}], "nodes": nodes}, "targets.1.port"),
        ({"targets": [good, good], "nodes": nodes}, "targets.1"),
        ({"targets": [good, 7], "nodes": nodes}, "targets.1"),
        ({"targets": [], "nodes": nodes}, "targets"),
        ({"targets": [good], "nodes": ["not a url"]}, "nodes.0"),
    ]
    for body, field in cases:
        response = await client.post("/api/fleet", json={"ui_home": str(other.root), **body})
        answer = await response.json()
        assert response.status == 400, (body, answer)
        assert answer["field"] == field, (body, answer)
    tasks = await (await client.get("/api/tasks")).json()
    assert tasks["tasks"] == []
    missing = await client.get("/api/fleet/3f1c1f8e-2b1a-4c1d-9e1f-1a2b3c4d5e6f")
    assert missing.status == 404 and (await missing.json())["error"] == "unknown_fleet"
    bad = await client.get("/api/fleet/..%2F..")
    assert bad.status in (400, 404)
