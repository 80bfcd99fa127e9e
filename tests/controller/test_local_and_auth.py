"""The ``local`` transport (same agent, same code path, no SSH) and the API token."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from controller.sandbox.comfy import ComfyHome
from tests.controller.conftest import (
    AppFactory,
    NodeRepos,
    install_body,
    make_settings,
    start_install,
    wait_final,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


async def test_local_transport_installs_and_cancels(
    client: Any, tmp_path: Path, home: ComfyHome, node_repos: NodeRepos
) -> None:
    task_id = await start_install(
        client, install_body("local", home, [node_repos.plain.url, node_repos.second.url])
    )
    final = await wait_final(client, task_id)
    assert final["state"] == "completed" and final["success"] is True
    assert final["target"] == "local"
    assert home.node_dirs() == ["ComfyUI-Plain", "ComfyUI-Second"]
    # The agent ran from the bundle in the configured local state dir.
    local_state = tmp_path / "local-state"
    assert list((local_state / "agent").glob("*.pyz"))
    assert (local_state / "tasks" / task_id / "progress.json").exists()
    log = await (await client.get(f"/api/tasks/{task_id}/log")).json()
    assert "ComfyUI-Second" in log["data"]

    (home.root / "sleep_seconds").write_text("120")
    slow = await start_install(client, install_body("local", home, [node_repos.sleeper.url]))
    await wait_for(client, slow, lambda s, b: b["state"] == "running_install_scripts")
    cancelled = await (await client.post(f"/api/tasks/{slow}/cancel")).json()
    assert cancelled["state"] == "cancelled"


async def test_token_is_required_except_for_healthz_and_the_page(
    make_client: AppFactory, tmp_path: Path, client_key: Path
) -> None:
    client = await make_client(make_settings(tmp_path, client_key, token="s3cret"))
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/")).status == 200
    assert (await client.get("/static/app.js")).status == 200
    # The public prefix serves the page's files only, never the package around them.
    assert (await client.get("/static/%2e%2e/registry.py")).status in (401, 403, 404)
    denied = await client.get("/api/tasks")
    assert denied.status == 401
    assert (await denied.json())["error"] == "unauthorized"
    wrong = await client.get("/api/tasks", headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401
    ok = await client.get("/api/tasks", headers={"Authorization": "Bearer s3cret"})
    assert ok.status == 200
    via_query = await client.get("/api/tasks?token=s3cret")
    assert via_query.status == 200
    # A refused request starts nothing.
    start = await client.post("/ssh/install-custom-nodes", json={"ssh_connection": "local"})
    assert start.status == 401
