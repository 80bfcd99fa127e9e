"""A retry installs the way the original was asked to (issue #27): started with
every option at a value other than its default, failed on one node, retried by
``auto_retry`` and by hand, and each retry's ``spec.json`` on the instance is
the original's field by field, but for the nodes (what failed) and the task id.
The same for the members of a fleet that reproduces a lock. Real sshd, real
agent, real git daemons; the failing node's server is down, then back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.common.config import Settings
from controller.sandbox.comfy import NODE_INIT
from controller.sandbox.gitserver import GitServer, Repo
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
from tests.controller.test_fleet import wait_fleet
from tests.support.options import non_default
from tests.support.sshd import SshServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

#: What a retry sets itself, or names anew.
NOT_CARRIED = {"task_id", "nodes", "lock"}


@pytest.fixture
def flaky_server(tmp_path: Path) -> Iterator[GitServer]:
    with GitServer(tmp_path / "flaky-gitd") as server:
        yield server


def spec_on_instance(settings: Settings, task_id: str) -> dict[str, Any]:
    path = Path(settings.remote_state_dir) / "tasks" / task_id / "spec.json"
    spec: dict[str, Any] = json.loads(path.read_text())
    return spec


def assert_same_request(original: dict[str, Any], retry: dict[str, Any]) -> None:
    """Field by field, every field of the original spec but the nodes and the id."""
    assert set(retry) == set(original)
    for name in sorted(set(original) - NOT_CARRIED):
        assert retry[name] == original[name], f"the retry changed {name}"


async def retried_by(client: Any, task_id: str) -> str:
    _, body = await wait_for(
        client, task_id, lambda _s, b: b.get("retried_by") is not None, timeout=120
    )
    return str(body["retried_by"])


def flaky_repo(server: GitServer) -> tuple[Repo, int]:
    repo = server.add_repo("ComfyUI-Flaky", {"__init__.py": NODE_INIT})
    port = server.port
    server.halt()
    return repo, port


async def test_a_retry_by_hand_and_by_auto_retry_carries_every_option(
    make_client: AppFactory,
    tmp_path: Path,
    client_key: Path,
    sshd: SshServer,
    node_repos: NodeRepos,
    flaky_server: GitServer,
) -> None:
    settings = make_settings(tmp_path, client_key, auto_retry_backoff=0.2)
    client = await make_client(settings)
    home = comfy_home(tmp_path / "ComfyUI")
    flaky, port = flaky_repo(flaky_server)
    options = non_default(auto_retry=1)
    body = install_body(sshd.connection_string(), home, [node_repos.plain.url, flaky.url])
    first_id = await start_install(client, {**body, **options})
    first = await wait_final(client, first_id, timeout=120)
    assert [n["error_code"] for n in first["nodes"]] == [None, "network"], first["nodes"]

    # auto_retry: 1 retries the network failure once, by itself; it fails again.
    auto_id = await retried_by(client, first_id)
    auto = await wait_final(client, auto_id, timeout=120)
    assert [n["name"] for n in auto["nodes"]] == ["ComfyUI-Flaky"]
    assert auto["state"] == "completed" and auto["failed"] == 1 and auto["attempt"] == 2

    # By hand, once the server is back: it installs.
    flaky_server.start(port)
    response = await client.post(f"/api/tasks/{auto_id}/retry", json={})
    answer = await response.json()
    assert response.status == 202, answer
    manual = await wait_final(client, answer["task_id"], timeout=120)
    assert manual["success"] is True and manual["attempt"] == 3

    original = spec_on_instance(settings, first_id)
    for name, value in options.items():  # the original itself had every option
        assert original.get(name, value) == value, name
    for task_id in (auto_id, manual["task_id"]):
        spec = spec_on_instance(settings, task_id)
        assert_same_request(original, spec)
        assert spec["nodes"] == [{"url": flaky.url, "ref": None, "name": None}]
    # A retry sets its own queue and countdown: auto_retry's ran out, and the
    # retry by hand asked for none.
    _, manual_task = await poll(client, manual["task_id"])
    assert manual_task["retry_of"] == auto_id


async def test_a_fleet_members_retries_carry_every_option_and_the_lock(
    make_client: AppFactory,
    tmp_path: Path,
    client_key: Path,
    sshd: SshServer,
    sshd_b: SshServer,
    node_repos: NodeRepos,
    flaky_server: GitServer,
) -> None:
    settings = make_settings(tmp_path, client_key, auto_retry_backoff=0.2)
    client = await make_client(settings)
    homes = [comfy_home(tmp_path / f"comfy-{i}") for i in range(2)]
    flaky, port = flaky_repo(flaky_server)
    lock: dict[str, Any] = {
        "schema": 1,
        "created_at": "2026-01-01T00:00:00.000Z",
        "ui_home": "/ComfyUI",
        "nodes": [
            {"name": repo.name, "url": repo.url, "commit": repo.head}
            for repo in (node_repos.plain, flaky)
        ],
        "packages": {"nodeferry-pinned-example": "1.0"},
    }
    options = non_default(auto_retry=1)
    response = await client.post(
        "/api/fleet",
        json={
            **options,
            "targets": [
                {"ssh_connection": server.connection_string(), "ui_home": str(home.root)}
                for server, home in zip((sshd, sshd_b), homes, strict=True)
            ],
            "lock": lock,
        },
    )
    started = await response.json()
    assert response.status == 202, started
    fleet = await wait_fleet(client, started["fleet_id"])
    members = [member["task_id"] for member in fleet["per_instance"]]
    assert all(member["failed"] == 1 for member in fleet["per_instance"]), fleet

    autos = [await retried_by(client, task_id) for task_id in members]
    for auto_id in autos:
        await wait_final(client, auto_id, timeout=120)
    flaky_server.start(port)
    response = await client.post(f"/api/tasks/{autos[1]}/retry", json={"queue": True})
    assert response.status == 202, await response.json()
    manual_id = (await response.json())["task_id"]
    manual = await wait_final(client, manual_id, timeout=120)
    assert manual["success"] is True, manual

    flaky_node = {"name": flaky.name, "url": flaky.url, "commit": flaky.head}
    for member, auto_id, home in zip(members, autos, homes, strict=True):
        original = spec_on_instance(settings, member)
        assert original["lock"]["nodes"] == sorted(lock["nodes"], key=lambda n: n["name"].lower())
        retries = [auto_id] + ([manual_id] if auto_id == autos[1] else [])
        for task_id in retries:
            spec = spec_on_instance(settings, task_id)
            assert_same_request(original, spec)
            # The lock, narrowed to what failed: its versions still hold.
            assert spec["lock"]["nodes"] == [flaky_node]
            assert spec["lock"]["packages"] == original["lock"]["packages"]
            assert {k: v for k, v in spec["lock"].items() if k != "nodes"} == {
                k: v for k, v in original["lock"].items() if k != "nodes"
            }
            assert spec["ui_home"] == str(home.root)
