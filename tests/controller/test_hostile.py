"""Hostile and malformed input: each answered 4xx with a message naming the field,
and nothing run on the instance (the instance's sshd log proves it: not one login,
not one session)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.controller.conftest import install_body, start_install, wait_final
from tests.support.comfy import ComfyHome
from tests.support.gitserver import GitServer
from tests.support.sshd import SshServer

pytestmark = pytest.mark.timeout(60)

MARKER = "/tmp/nodeferry-pwned-marker"

GOOD_URL = "https://github.com/ltdrdata/ComfyUI-Manager"


def _hostile_bodies(ssh: str, home: str) -> list[tuple[str, dict[str, Any], str]]:
    base = {"ssh_connection": ssh, "ui_home": home, "nodes": [GOOD_URL]}
    cases: list[tuple[str, dict[str, Any], str]] = []
    for ui_home in (
        f"{home}; touch {MARKER}",
        f"{home}$(touch {MARKER})",
        f"{home}`touch {MARKER}`",
        f"{home}\ntouch {MARKER}",
        f"{home}' ; touch {MARKER}; '",
        f'{home}" ; touch {MARKER}; "',
        f"{home}/../../etc",
        "../../etc",
        "/wörkspace/ComfyUI",
        "",
    ):
        cases.append(("ui_home " + repr(ui_home), {**base, "ui_home": ui_home}, "ui_home"))
    for node in (
        f"ext::sh -c touch% {MARKER}",
        f"--upload-pack=touch {MARKER}",
        f"-uhttps://x/{MARKER}",
        "file:///etc",
        "https://github.com/a/b;touch",
        "https://github.com/a/b c",
        "https://github.com/a/ünïcode",
        "https://github.com/a/b@$(touch)",
        "https://github.com/a/b\n",
        {"url": GOOD_URL, "name": "../../evil"},
        {"url": GOOD_URL, "ref": "--output=/etc/x"},
    ):
        cases.append(("node " + repr(node), {**base, "nodes": [node]}, "nodes.0"))
    cases += [
        (
            "ssh injection",
            {**base, "ssh_connection": f"root@127.0.0.1 touch {MARKER}"},
            "ssh_connection",
        ),
        (
            "ssh proxycommand",
            {**base, "ssh_connection": f"-oProxyCommand=touch {MARKER}"},
            "ssh_connection",
        ),
        ("python injection", {**base, "python": f"python3; touch {MARKER}"}, "python"),
        ("pip injection", {**base, "pip_args": [f"--index-url=x;touch {MARKER}"]}, "pip_args.0"),
        ("pip option", {**base, "pip_args": ["--target", "/etc"]}, "pip_args.0"),
        ("jobs type", {**base, "jobs": "4; touch"}, "jobs"),
        ("update type", {**base, "update": "true"}, "update"),
        ("nodes type", {**base, "nodes": "https://github.com/a/b"}, "nodes"),
        ("unknown field", {**base, "script": "touch"}, "script"),
        ("missing ui_home", {"ssh_connection": ssh, "nodes": [GOOD_URL]}, "ui_home"),
        ("too many nodes", {**base, "nodes": [f"https://h/a/n{i}" for i in range(501)]}, "nodes"),
    ]
    return cases


async def test_hostile_install_requests_run_nothing(
    client: Any, sshd: SshServer, home: ComfyHome
) -> None:
    marker = Path(MARKER)
    marker.unlink(missing_ok=True)  # noqa: ASYNC240
    for name, body, field in _hostile_bodies(sshd.connection_string(), str(home.root)):
        response = await client.post("/ssh/install-custom-nodes", json=body)
        payload = await response.json()
        assert response.status == 400, (name, payload)
        assert payload["success"] is False, name
        assert payload["error"] == "invalid_request", name
        assert payload["field"].startswith(field), (name, payload)
        assert payload["message"].startswith(payload["field"]), (name, payload)
    listing = await (await client.get("/api/tasks")).json()
    assert listing["tasks"] == []
    assert sshd.accepted_count() == 0
    assert sshd.session_count() == 0
    assert not marker.exists()  # noqa: ASYNC240
    assert home.node_dirs() == []


@pytest.mark.parametrize(
    "task_id",
    [
        "../../etc/passwd",
        "3f2b8e0a-5c1d-4e7f-9a2b-1c3d5e7f9a2b/../../x",
        "6ba7b810-9dad-11d1-80b4-00c04fd430c8",  # a UUID, but version 1
        "3F2B8E0A-5C1D-4E7F-9A2B-1C3D5E7F9A2B",
        "",
        "\u202e3f2b8e0a",
        7,
        None,
    ],
)
async def test_hostile_task_ids(client: Any, sshd: SshServer, task_id: Any) -> None:
    response = await client.post(
        "/ssh/install-custom-nodes/progress",
        json={"task_id": task_id, "ssh_connection": sshd.connection_string()},
    )
    payload = await response.json()
    assert response.status == 400, payload
    assert payload["field"] == "task_id"
    if isinstance(task_id, str) and task_id and "/" not in task_id:
        for path in (f"/api/tasks/{task_id}", f"/api/tasks/{task_id}/log"):
            answer = await client.get(path)
            assert answer.status == 400, path
            assert (await answer.json())["field"] == "task_id"
        answer = await client.post(f"/api/tasks/{task_id}/cancel")
        assert answer.status == 400
    assert sshd.accepted_count() == 0


async def test_traversal_in_the_url_path(client: Any) -> None:
    for path in ("/api/tasks/..%2F..%2Fetc%2Fpasswd", "/api/tasks/%2e%2e/log"):
        response = await client.get(path)
        assert response.status in (400, 404)
        body = await response.json()
        assert body["success"] is False


async def test_malformed_and_huge_bodies(client: Any, sshd: SshServer) -> None:
    cases = [
        (b"{not json", 400, "not valid JSON"),
        (b"", 400, "empty"),
        (b"[1, 2]", 400, "JSON object"),
        (b'"a string"', 400, "JSON object"),
        (b"\xff\xfe\x00garbage", 400, "UTF-8"),
        (json.dumps({"x": "y" * (2 * 1024 * 1024)}).encode(), 413, "larger than"),
    ]
    for raw, status, fragment in cases:
        response = await client.post(
            "/ssh/install-custom-nodes", data=raw, headers={"Content-Type": "application/json"}
        )
        payload = await response.json()
        assert response.status == status, (raw[:20], payload)
        assert payload["success"] is False
        assert fragment in payload["message"], payload
    deep = b"[" * 100000 + b"]" * 100000
    response = await client.post("/ssh/install-custom-nodes/progress", data=deep)
    assert response.status == 400
    assert sshd.accepted_count() == 0


async def test_unicode_that_is_fine_is_accepted_where_allowed(
    client: Any, sshd: SshServer, home: ComfyHome, git_server: GitServer
) -> None:
    # Directory names and URLs stay ASCII by design, and the refusal says the way
    # out: a percent-encoded URL and an ASCII name. That form is accepted, and git
    # fetches the repository whose real name is not ASCII.
    unique = uuid.uuid4().hex[:8]
    repo = git_server.add_repo(f"ComfyUI-Ünï-{unique}", {"__init__.py": ""})
    refused = await client.post(
        "/ssh/install-custom-nodes",
        json=install_body(sshd.connection_string(), home, [{"url": repo.url, "name": "Plain"}]),
    )
    payload = await refused.json()
    assert refused.status == 400
    assert payload["field"] == "nodes.0.url"
    assert "percent-encode" in payload["message"]
    named = await client.post(
        "/ssh/install-custom-nodes",
        json=install_body(
            sshd.connection_string(),
            home,
            [{"url": f"{git_server.base_url}/ComfyUI-Plain", "name": "Plain_ünï"}],
        ),
    )
    assert named.status == 400
    assert (await named.json())["field"] == "nodes.0.name"
    assert sshd.session_count() == 0

    encoded = f"{git_server.base_url}/{quote(repo.name)}"
    assert encoded.isascii()
    task_id = await start_install(
        client,
        install_body(sshd.connection_string(), home, [{"url": encoded, "name": "ComfyUI-Uni"}]),
    )
    final = await wait_final(client, task_id)
    assert final["state"] == "completed", final
    assert final["nodes"][0]["status"] == "installed"
    assert final["nodes"][0]["commit"] == repo.head
    assert (home.custom_nodes / "ComfyUI-Uni" / "__init__.py").exists()


async def test_error_bodies_for_routing(client: Any) -> None:
    missing = await client.get("/no/such/page")
    assert missing.status == 404
    assert (await missing.json())["error"] == "not_found"
    wrong_method = await client.get("/ssh/install-custom-nodes")
    assert wrong_method.status == 405
    assert (await wrong_method.json())["error"] == "method_not_allowed"
