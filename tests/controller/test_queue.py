"""Queueing and limits end to end: a real sshd, the real agent, a git daemon.

An install into the gated node holds its ComfyUI home until the test creates
``<home>/release``, so "busy" lasts exactly as long as each test needs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from controller.sandbox.comfy import ComfyHome
from tests.controller.conftest import (
    AppFactory,
    NodeRepos,
    comfy_home,
    install_body,
    make_settings,
    poll,
    start_install,
    wait_final,
    wait_for,
)
from tests.support.sshd import SshServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


async def queue_install(client: Any, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post("/ssh/install-custom-nodes", json={**body, "queue": True})
    payload = await response.json()
    assert response.status == 202, payload
    return dict(payload)


def running(status: int, body: dict[str, Any]) -> bool:
    return status == 200 and body.get("state") == "running_install_scripts"


async def test_a_queue_of_three_runs_in_order_across_a_controller_restart(
    make_client: AppFactory,
    tmp_path: Path,
    client_key: Path,
    sshd: SshServer,
    home: ComfyHome,
    node_repos: NodeRepos,
) -> None:
    settings = make_settings(tmp_path, client_key)
    first_controller = await make_client(settings)
    conn = sshd.connection_string()
    holder = await start_install(first_controller, install_body(conn, home, [node_repos.gated.url]))
    await wait_for(first_controller, holder, running)

    second = await queue_install(first_controller, install_body(conn, home, [node_repos.plain.url]))
    third = await queue_install(first_controller, install_body(conn, home, [node_repos.second.url]))
    assert second["state"] == "queued" and second["queue_position"] == 1
    assert second["queued_reason"] == "home_busy"
    assert third["state"] == "queued" and third["queue_position"] == 2

    # Queued reads with the seed shape through every progress endpoint.
    status, seed = await poll(first_controller, second["task_id"])
    assert status == 200
    assert seed["in_progress"] is True and seed["completed"] is False
    assert seed["state"] == "queued" and seed["current_status"] == "queued"
    assert seed["queue_position"] == 1
    rest = await first_controller.get(f"/api/tasks/{third['task_id']}")
    assert rest.status == 200
    assert (await rest.json())["queue_position"] == 2
    events = await first_controller.get(f"/api/tasks/{third['task_id']}/events")
    first_event = ""
    while "data:" not in first_event:  # past the "retry:" preamble
        first_event = (await events.content.readuntil(b"\n\n")).decode()
    events.close()
    streamed = json.loads(first_event.split("data: ", 1)[1])
    assert streamed["state"] == "queued" and streamed["queue_position"] == 2

    # Without "queue" a busy home is still a 409 naming the task that holds it.
    refused = await first_controller.post(
        "/ssh/install-custom-nodes", json=install_body(conn, home, [node_repos.plain.url])
    )
    assert refused.status == 409
    assert (await refused.json())["task_id"] == holder

    await first_controller.close()  # the controller goes away; the queue stays on disk
    controller = await make_client(settings)
    _, still = await poll(controller, third["task_id"])
    assert still["state"] == "queued" and still["queue_position"] == 2

    (home.root / "release").write_text("go")
    first = await wait_final(controller, holder, timeout=120)
    middle = await wait_final(controller, second["task_id"], timeout=120)
    last = await wait_final(controller, third["task_id"], timeout=120)
    assert [first["state"], middle["state"], last["state"]] == ["completed"] * 3
    # In order: each started (by the agent's clock) after the one before it ended.
    assert first["finished_at"] <= middle["started_at"]
    assert middle["finished_at"] <= last["started_at"]
    assert (home.custom_nodes / "ComfyUI-Plain" / "__init__.py").is_file()
    assert (home.custom_nodes / "ComfyUI-Second" / "__init__.py").is_file()


async def test_a_queued_install_can_be_cancelled_and_never_runs(
    client: Any, sshd: SshServer, home: ComfyHome, node_repos: NodeRepos
) -> None:
    conn = sshd.connection_string()
    holder = await start_install(client, install_body(conn, home, [node_repos.gated.url]))
    queued = await queue_install(client, install_body(conn, home, [node_repos.plain.url]))
    behind = await queue_install(client, install_body(conn, home, [node_repos.second.url]))
    response = await client.post(f"/api/tasks/{queued['task_id']}/cancel")
    body = await response.json()
    assert response.status == 200, body
    assert body["state"] == "cancelled" and body["error_code"] == "cancelled"
    assert [n["status"] for n in body["nodes"]] == ["cancelled"]
    _, moved_up = await wait_for(
        client, behind["task_id"], lambda _s, b: b.get("queue_position") == 1
    )
    assert moved_up["state"] == "queued"

    (home.root / "release").write_text("go")
    assert (await wait_final(client, holder, timeout=120))["state"] == "completed"
    assert (await wait_final(client, behind["task_id"], timeout=120))["state"] == "completed"
    _, after = await poll(client, queued["task_id"])
    assert after["state"] == "cancelled"
    assert not (home.custom_nodes / "ComfyUI-Plain").exists()


async def test_limits_turn_starts_into_queued_tasks_or_429(
    make_client: AppFactory,
    tmp_path: Path,
    client_key: Path,
    sshd: SshServer,
    sshd_b: SshServer,
    node_repos: NodeRepos,
) -> None:
    settings = make_settings(tmp_path, client_key, max_running=2, max_running_per_host=2)
    client = await make_client(settings)
    homes = {name: comfy_home(tmp_path / name / "ComfyUI") for name in ("a1", "a2", "a3", "b")}
    conn_a, conn_b = sshd.connection_string(), sshd_b.connection_string()
    gated = [node_repos.gated.url]
    first = await start_install(client, install_body(conn_a, homes["a1"], gated))
    second = await start_install(client, install_body(conn_a, homes["a2"], gated))

    # A third install on host A: its per-host limit (and the controller's) is reached.
    body_a3 = install_body(conn_a, homes["a3"], gated)
    refused = await client.post("/ssh/install-custom-nodes", json=body_a3)
    payload = await refused.json()
    assert refused.status == 429, payload
    assert payload["error"] == "too_many_tasks" and "max_running_per_host" in payload["message"]
    assert int(refused.headers["Retry-After"]) > 0
    per_host = await queue_install(client, body_a3)
    assert per_host["state"] == "queued" and per_host["queued_reason"] == "max_running_per_host"

    # Host B is idle, but the controller-wide limit of two is reached.
    body_b = install_body(conn_b, homes["b"], [node_repos.second.url])
    refused = await client.post("/ssh/install-custom-nodes", json=body_b)
    assert refused.status == 429
    assert "max_running is reached" in (await refused.json())["message"]
    overall = await queue_install(client, body_b)
    assert overall["state"] == "queued" and overall["queued_reason"] == "max_running"

    # One slot frees: the oldest queued task takes it; the other keeps waiting.
    (homes["a1"].root / "release").write_text("go")
    assert (await wait_final(client, first, timeout=120))["state"] == "completed"
    await wait_for(client, per_host["task_id"], running, timeout=120)
    _, waiting = await poll(client, overall["task_id"])
    assert waiting["state"] == "queued" and waiting["queued_reason"] == "max_running"
    assert waiting["queue_position"] == 1
    for name in ("a2", "a3"):
        (homes[name].root / "release").write_text("go")
    for task_id in (second, per_host["task_id"], overall["task_id"]):
        assert (await wait_final(client, task_id, timeout=120))["state"] == "completed"
