"""``POST /api/ready``, the restart flags of ``nodeferry install`` and the live view's
ready line (#22). The real ComfyUI's tier is tests/realworld/test_restart.py; here a
stand-in server answers /object_info on this machine (``local``)."""

from __future__ import annotations

import argparse
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from controller.cli import display
from controller.cli.install_flags import bare_flags, install_options
from controller.cli.main import build_parser
from controller.client import AsyncClient
from controller.common.config import Settings
from controller.common.errors import InvalidRequest
from controller.core.ready import workflow_classes
from controller.sandbox.comfy import ComfyHome
from tests.agent.test_restart import FAKE_MAIN, start_server
from tests.support import comfy_server
from tests.support.sshd import free_port

pytestmark = pytest.mark.timeout(60)


def test_workflow_classes_leave_out_what_the_frontend_draws() -> None:
    ui = {
        "nodes": [
            {"id": 1, "type": "KSampler"},
            {"id": 2, "type": "Note"},
            {"id": 3, "type": "Seed (rgthree)"},
            {"id": 4, "type": "KSampler"},
            {"id": 5, "type": "Reroute"},
        ]
    }
    assert workflow_classes(ui) == ["KSampler", "Seed (rgthree)"]
    assert workflow_classes({"3": {"class_type": "VAEDecode", "inputs": {}}}) == ["VAEDecode"]
    with pytest.raises(InvalidRequest) as caught:
        workflow_classes({"nodes": [{"id": 1}]})
    assert caught.value.field == "workflow.nodes.0.type"


async def test_ready_asks_the_running_server_and_says_what_it_lacks(
    client: TestClient[Any, Any], home: ComfyHome, settings: Settings
) -> None:
    (home.root / "main.py").write_text(FAKE_MAIN)
    (home.root / "mode").write_text("serve")
    port = free_port()
    server = start_server(home, port)
    try:
        (pid,) = comfy_server.server_pids(home.root)
        body = {"ssh_connection": "local", "ui_home": str(home.root)}
        flow = {"nodes": [{"id": 1, "type": "KSampler"}, {"id": 2, "type": "Nope"}]}
        response = await client.post("/api/ready", json={**body, "workflow": flow})
        answer = await response.json()
        assert response.status == 200, answer
        assert answer["can_run"] is False
        assert answer["ready"]["missing"] == ["Nope"] and answer["ready"]["pid"] == pid
        assert answer["ready"]["port"] == port and answer["ready"]["restarted_by"] is None
        response = await client.post("/api/ready", json=body)
        answer = await response.json()
        assert answer["can_run"] is True and answer["ready"]["classes"] == 1
        # The Python client says the same.
        async with AsyncClient(str(client.make_url("")), token=settings.token) as api:
            answer = await api.ready("local", str(home.root), flow, timeout=10)
        assert answer["can_run"] is False and answer["ready"]["missing"] == ["Nope"]
        assert comfy_server.server_pids(home.root) == {
            pid: comfy_server.server_pids(home.root)[pid]
        }
    finally:
        comfy_server.end_servers(home.root)
        server.wait(timeout=10)
    # Nothing runs there now: an answer, not an error.
    response = await client.post("/api/ready", json=body)
    answer = await response.json()
    assert response.status == 200 and answer["can_run"] is False
    assert answer["ready"]["note"] == "no running ComfyUI found for this home"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"timeout": 0}, "timeout"),
        ({"workflow": "KSampler"}, "workflow"),
        ({"workflow": {"nodes": [{"id": 1}]}}, "workflow.nodes.0.type"),
        ({"ui_home": "/w; id"}, "ui_home"),
        ({"restart": "auto"}, "restart"),
    ],
)
async def test_a_bad_ready_request_is_a_400_naming_the_field(
    client: TestClient[Any, Any], home: ComfyHome, changes: dict[str, Any], field: str
) -> None:
    body = {"ssh_connection": "local", "ui_home": str(home.root), **changes}
    response = await client.post("/api/ready", json=body)
    answer = await response.json()
    assert response.status == 400 and answer["error"] == "invalid_request", answer
    assert field in answer["message"]


def _install_args(*words: str) -> argparse.Namespace:
    return build_parser().parse_args(bare_flags(["install", "--ui-home", "/w", *words]))


def _restart_options(args: argparse.Namespace) -> dict[str, object]:
    return {k: v for k, v in install_options(args).items() if k != "ui_home"}


def test_the_restart_flags_become_start_fields() -> None:
    args = _install_args("--restart", "https://h/a/b")
    assert args.nodes == ["https://h/a/b"] and _restart_options(args) == {"restart": "auto"}
    args = _install_args("--restart=never", "--ready-check", "--ready-timeout", "30", "x")
    assert _restart_options(args) == {"restart": "never", "ready_check": True, "ready_timeout": 30}
    args = _install_args("--restart-command", "/opt/start.sh --port '81 90'", "x")
    assert _restart_options(args) == {"restart": {"command": ["/opt/start.sh", "--port", "81 90"]}}
    assert _restart_options(_install_args("x")) == {}


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["--restart=always"], "invalid choice: 'always'"),
        (["--restart-command", "  "], "--restart-command: is empty"),
        (["--restart-command", "'unclosed"], "--restart-command: cannot split it"),
        (["--restart", "--restart-command", "/opt/start.sh"], "not allowed with argument"),
    ],
)
def test_bad_restart_flags_are_refused_by_name(
    words: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        _install_args(*words, "x")
    assert message in capsys.readouterr().err


def test_the_live_view_says_how_comfyui_came_back() -> None:
    ready = {
        "restarted_by": "supervisor",
        "service": "comfyui",
        "pid": 42,
        "classes": 812,
        "missing": ["X", "Y"],
        "seconds": 14.25,
    }
    line = display.ready_line(ready)
    assert (
        line
        == "ComfyUI: restarted by supervisor (comfyui), pid 42, 812 classes, missing X, Y (14.2s)"
    )
    assert display.ready_line({"note": "no running ComfyUI found for this home"}).endswith(
        "no running ComfyUI found for this home"
    )
    doc = {"state": "completed", "success": False, "error": "lacks X", "ready": ready}
    assert "lacks X" in display.summary(doc).plain
    changes = display.ChangeLog()
    assert "state: restarting" in changes.lines({"state": "restarting"})
    assert line in changes.lines({"state": "completed", "ready": ready})
