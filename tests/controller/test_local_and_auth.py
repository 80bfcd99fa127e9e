"""The ``local`` transport (same agent, same code path, no SSH) and the API token."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import pytest

from controller.common.apitoken import discover_token
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
    client = await make_client(
        make_settings(tmp_path, client_key, token="s3cret"), authenticated=False
    )
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
    # ?token= only where a browser cannot send a header: the event stream.
    via_query = await client.get("/api/tasks?token=s3cret")
    assert via_query.status == 401
    assert "event stream" in (await via_query.json())["message"]
    stream = await client.get(f"/api/tasks/{uuid.uuid4()}/events?token=s3cret")
    assert stream.status == 404  # past the token check: the task is unknown
    # A refused request starts nothing.
    start = await client.post("/ssh/install-custom-nodes", json={"ssh_connection": "local"})
    assert start.status == 401


async def test_a_token_is_made_on_first_start_and_kept(
    make_client: AppFactory, tmp_path: Path, client_key: Path
) -> None:
    settings = make_settings(tmp_path, client_key)
    before = settings.token  # (a local: create_app sets the attribute)
    assert before is None
    client = await make_client(settings, authenticated=False)
    token_file = settings.data_dir / "token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    token = token_file.read_text().strip()
    assert settings.token == token and len(token) >= 40
    assert (await client.get("/api/tasks")).status == 401
    headers = {"Authorization": f"Bearer {token}"}
    assert (await client.get("/api/tasks", headers=headers)).status == 200
    # The next start keeps it; a client on this machine finds it in the data dir.
    again = make_settings(tmp_path, client_key)
    await make_client(again)
    assert again.token == token
    assert discover_token("http://127.0.0.1:8765", settings.data_dir) == token
    assert discover_token("http://nf.example:8765", settings.data_dir) is None


async def test_no_auth_serves_without_a_token(
    make_client: AppFactory, tmp_path: Path, client_key: Path
) -> None:
    settings = make_settings(tmp_path, client_key, no_auth=True)
    client = await make_client(settings, authenticated=False)
    assert settings.token is None and not (settings.data_dir / "token").exists()
    assert (await client.get("/api/tasks")).status == 200


async def test_local_is_refused_unless_allowed(
    make_client: AppFactory, tmp_path: Path, client_key: Path, home: ComfyHome
) -> None:
    client = await make_client(make_settings(tmp_path, client_key, allow_local=False))
    body = install_body("local", home, ["https://github.com/a/b"])
    response = await client.post("/ssh/install-custom-nodes", json=body)
    payload = await response.json()
    assert response.status == 400, payload
    assert payload["field"] == "ssh_connection" and "allow_local" in payload["message"]
    # Nor is an unknown task looked for there.
    looked = await client.post(
        "/ssh/install-custom-nodes/progress",
        json={"task_id": str(uuid.uuid4()), "ssh_connection": "local"},
    )
    assert looked.status == 404 and "allow_local" in (await looked.json())["message"]
    assert (await (await client.get("/api/tasks")).json())["tasks"] == []
    assert home.node_dirs() == []


async def test_one_home_under_any_spelling_is_one_home(
    client: Any, home: ComfyHome, node_repos: NodeRepos
) -> None:
    running = await start_install(client, install_body("local", home, [node_repos.gated.url]))
    await wait_for(client, running, lambda s, b: b["state"] == "running_install_scripts")
    plain = str(home.root)
    for spelling in ("/" + plain, f"/.{plain}/", plain.replace("/", "//"), plain + "/./"):
        body = install_body("local", home, [node_repos.plain.url])
        body["ui_home"] = spelling
        response = await client.post("/ssh/install-custom-nodes", json=body)
        payload = await response.json()
        assert response.status == 409, (spelling, payload)
        assert payload["task_id"] == running
    (home.root / "release").touch()
    final = await wait_final(client, running)
    assert final["state"] == "completed" and final["ui_home"] == plain


def test_the_access_log_never_shows_the_token(caplog: pytest.LogCaptureFixture) -> None:
    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    from controller.api.accesslog import RedactingAccessLogger

    logger = logging.getLogger("test.access")
    access = RedactingAccessLogger(logger, '%a "%r" %s')
    request = make_mocked_request("GET", "/api/tasks/abc/events?token=s3cret-token&x=1")
    with caplog.at_level(logging.INFO, logger="test.access"):
        access.log(request, web.Response(status=200), 0.01)
        access.log(make_mocked_request("GET", "/api/tasks"), web.Response(status=200), 0.01)
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 2
    assert "s3cret" not in lines[0] and "token=REDACTED" in lines[0] and "x=1" in lines[0]
    assert "GET /api/tasks HTTP" in lines[1]
