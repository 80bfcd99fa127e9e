"""End to end through HTTP: the controller, a real sshd, the real agent, a real git
daemon, a fake ComfyUI home."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from controller.common.config import Settings
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
from tests.support.sshd import SshServer, make_key

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

IN_PROGRESS_KEYS = {
    "success",
    "in_progress",
    "task_id",
    "state",
    "total_nodes",
    "processed",
    "current_node",
    "current_status",
    "successful",
    "failed",
    "skipped",
    "has_requirements",
    "requirements_status",
    "nodes",
    "started_at",
    "updated_at",
}
FINISHED_KEYS = IN_PROGRESS_KEYS | {
    "completed",
    "successful_clones",
    "failed_clones",
    "exit_code",
    "error",
}


async def test_install_from_starting_to_completed_with_seed_shapes(
    client: Any, sshd: SshServer, home: ComfyHome, node_repos: NodeRepos
) -> None:
    (home.root / "sleep_seconds").write_text("2")
    body = install_body(
        sshd.connection_string(), home, [node_repos.plain.url, node_repos.sleeper.url]
    )
    began = time.monotonic()
    response = await client.post("/ssh/install-custom-nodes", json=body)
    elapsed = time.monotonic() - began
    payload = await response.json()
    assert response.status == 202
    # The 202 does not wait for the install (which lasts 2 s at the least); how fast
    # it comes is measured in tests/bench, not bounded tightly here.
    assert elapsed < 30
    assert payload["success"] is True
    assert payload["message"] == "Installation started in background"
    task_id = payload["task_id"]

    status, first = await poll(client, task_id)
    assert status == 200
    assert first["state"] == "starting"
    assert first["in_progress"] is True
    assert first["total_nodes"] == 2

    _, running = await wait_for(
        client, task_id, lambda s, b: b["state"] == "running_install_scripts"
    )
    assert set(running) >= IN_PROGRESS_KEYS
    assert running["success"] is True and running["in_progress"] is True
    assert running["completed"] is False
    assert running["current_node"] == "ComfyUI-Sleeper"
    assert [n["name"] for n in running["nodes"]] == ["ComfyUI-Plain", "ComfyUI-Sleeper"]

    final = await wait_final(client, task_id)
    assert set(final) >= FINISHED_KEYS
    assert final["state"] == "completed"
    assert final["in_progress"] is False and final["completed"] is True
    assert final["success"] is True
    assert final["successful_clones"] == 2 and final["failed_clones"] == 0
    assert final["exit_code"] == 0 and final["error"] is None
    assert final["stale"] is False
    assert {n["commit"] for n in final["nodes"]} == {
        node_repos.plain.head,
        node_repos.sleeper.head,
    }
    assert (home.custom_nodes / "ComfyUI-Sleeper" / "slept.marker").exists()

    # The REST companions see the same task.
    one = await (await client.get(f"/api/tasks/{task_id}")).json()
    assert one["state"] == "completed" and one["task_id"] == task_id
    listing = await (await client.get("/api/tasks")).json()
    assert [t["task_id"] for t in listing["tasks"]] == [task_id]
    assert listing["tasks"][0]["target"] == f"root@127.0.0.1:{sshd.port}"
    short = await (await client.get("/api/tasks", params={"prefix": task_id[:6]})).json()
    assert [t["task_id"] for t in short["tasks"]] == [task_id]
    other = "0" if task_id[0] != "0" else "1"
    none = await (await client.get("/api/tasks", params={"prefix": other * 6})).json()
    assert none["tasks"] == []
    log = await (await client.get(f"/api/tasks/{task_id}/log?offset=0")).json()
    assert "git" in log["data"] and log["eof"] is True
    assert log["next_offset"] == len(log["data"].encode())
    tail = await (await client.get(f"/api/tasks/{task_id}/log?offset={log['next_offset']}")).json()
    assert tail == {
        "success": True,
        "data": "",
        "next_offset": log["next_offset"],
        "eof": True,
        "notes": [],
    }
    health = await (await client.get("/healthz")).json()
    assert health["stats"]["uploads"] == 1


async def test_log_reads_in_pieces(
    client: Any, sshd: SshServer, home: ComfyHome, node_repos: NodeRepos
) -> None:
    task_id = await start_install(
        client, install_body(sshd.connection_string(), home, [node_repos.plain.url])
    )
    await wait_final(client, task_id)
    pieces, offset = [], 0
    while True:
        chunk = await (
            await client.get(f"/api/tasks/{task_id}/log?offset={offset}&limit=100")
        ).json()
        assert chunk["next_offset"] - offset <= 100
        pieces.append(chunk["data"])
        offset = chunk["next_offset"]
        if chunk["eof"]:
            break
    whole = await (await client.get(f"/api/tasks/{task_id}/log")).json()
    assert "".join(pieces) == whole["data"]
    bad = await client.get(f"/api/tasks/{task_id}/log?offset=-5")
    assert bad.status == 400
    assert (await bad.json())["error"] == "invalid_request"


async def test_two_instances_install_at_once(
    client: Any,
    sshd: SshServer,
    sshd_b: SshServer,
    tmp_path: Path,
    node_repos: NodeRepos,
) -> None:
    home_a = comfy_home(tmp_path / "a" / "ComfyUI")
    home_b = comfy_home(tmp_path / "b" / "ComfyUI")
    nodes = [node_repos.plain.url, node_repos.gated.url]
    task_a, task_b = await asyncio.gather(
        start_install(client, install_body(sshd.connection_string(), home_a, nodes)),
        start_install(client, install_body(sshd_b.connection_string(), home_b, nodes)),
    )
    # They run at the same time: each holds in its install.py (gated on a file this
    # test controls) while the other gets there too, however loaded the machine.
    for task_id in (task_a, task_b):
        await wait_for(client, task_id, lambda s, b: b["state"] == "running_install_scripts")
    for task_id in (task_a, task_b):
        _, running = await poll(client, task_id)
        assert running["state"] == "running_install_scripts"
        assert running["nodes"][1]["status"] == "running_install_script"
    for home in (home_a, home_b):
        (home.root / "release").write_text("go")
    final_a, final_b = await asyncio.gather(wait_final(client, task_a), wait_final(client, task_b))
    assert final_a["state"] == final_b["state"] == "completed"
    assert final_a["target"] != final_b["target"]
    for home in (home_a, home_b):
        assert home.node_dirs() == ["ComfyUI-Gated", "ComfyUI-Plain"]


async def test_second_start_on_same_home_is_409(
    client: Any, sshd: SshServer, home: ComfyHome, tmp_path: Path, node_repos: NodeRepos
) -> None:
    (home.root / "sleep_seconds").write_text("3")
    first = await start_install(
        client, install_body(sshd.connection_string(), home, [node_repos.sleeper.url])
    )
    again = install_body(
        f"ssh -p {sshd.port} root@127.0.0.1",
        home,
        [node_repos.plain.url],
        ui_home=str(home.root) + "/",
    )
    response = await client.post("/ssh/install-custom-nodes", json=again)
    body = await response.json()
    assert response.status == 409
    assert body["success"] is False and body["error"] == "conflict"
    assert body["task_id"] == first
    assert str(home.root) in body["message"]
    # Another ComfyUI on the same instance is fine.
    other = comfy_home(tmp_path / "Other")
    other_id = await start_install(
        client, install_body(sshd.connection_string(), other, [node_repos.plain.url])
    )
    assert (await wait_final(client, other_id))["state"] == "completed"
    assert (await wait_final(client, first))["state"] == "completed"
    # Once the first finished, the home is free again.
    third = await start_install(
        client, install_body(sshd.connection_string(), home, [node_repos.sleeper.url])
    )
    final = await wait_final(client, third)
    assert final["state"] == "completed"
    assert [n["status"] for n in final["nodes"]] == ["skipped"]


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_unreachable_host_still_202_fast_then_failed(
    make_client: AppFactory,
    tmp_path: Path,
    client_key: Path,
    home: ComfyHome,
    node_repos: NodeRepos,
) -> None:
    client = await make_client(make_settings(tmp_path, client_key, connect_timeout=5.0))
    # A port nothing listens on, and one that accepts but never sends an SSH banner.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        ports = {"silent": silent.getsockname()[1], "refused": _unused_port()}
        tasks = {}
        for kind, port in ports.items():
            other_home = comfy_home(tmp_path / kind)
            tasks[kind] = await start_install(
                client, install_body(f"root@127.0.0.1:{port}", other_home, [node_repos.plain.url])
            )
            if kind == "silent":
                # The 202 came before the connection attempt ended: the silent
                # host is still being tried (only the connect timeout ends it).
                _, first = await poll(client, tasks["silent"])
                assert first.get("state") == "starting", first
        refused = await wait_final(client, tasks["refused"], timeout=60)
        silent_final = await wait_final(client, tasks["silent"], timeout=60)
    finally:
        silent.close()
    for final in (refused, silent_final):
        assert final["state"] == "failed"
        assert final["error_code"] == "start_failed"
        assert final["success"] is False and final["completed"] is True
    assert "cannot connect" in refused["error"] and "refused" in refused["error"].lower()
    assert "handshake" in silent_final["error"] or "timed out" in silent_final["error"]


async def test_wrong_key_is_an_auth_error(
    make_client: AppFactory, tmp_path: Path, sshd: SshServer, home: ComfyHome, node_repos: NodeRepos
) -> None:
    stranger = make_key(tmp_path / "stranger_key")
    client = await make_client(make_settings(tmp_path, stranger))
    task_id = await start_install(
        client, install_body(sshd.connection_string(), home, [node_repos.plain.url])
    )
    final = await wait_final(client, task_id)
    assert final["state"] == "failed" and final["error_code"] == "start_failed"
    assert "authentication as root@127.0.0.1" in final["error"]
    assert "authorized_keys" in final["error"]
    assert sshd.session_count() == 0


async def test_changed_host_key_is_refused_until_forgotten(
    make_client: AppFactory,
    settings: Settings,
    tmp_path: Path,
    client_key: Path,
    sshd: SshServer,
    home: ComfyHome,
    node_repos: NodeRepos,
) -> None:
    client = await make_client(settings)
    first = await start_install(
        client, install_body(sshd.connection_string(), home, [node_repos.plain.url])
    )
    assert (await wait_final(client, first))["state"] == "completed"
    assert f"[127.0.0.1]:{sshd.port}" in settings.known_hosts_path.read_text()

    # The "instance" is replaced: same address, new host key. A fresh controller
    # (no pooled connection) must refuse it.
    sshd.stop()
    impostor = SshServer(tmp_path / "impostor", port=sshd.port, client_key=client_key)
    impostor.start()
    try:
        await client.close()
        client = await make_client(settings)
        second = await start_install(
            client, install_body(impostor.connection_string(), home, [node_repos.second.url])
        )
        final = await wait_final(client, second)
        assert final["state"] == "failed"
        assert "has changed" in final["error"]
        assert f"nodeferry hosts forget 127.0.0.1:{sshd.port}" in final["error"]
        assert impostor.session_count() == 0
        assert not (home.custom_nodes / "ComfyUI-Second").exists()

        import os

        from controller.cli.main import main

        os.environ["NODEFERRY_KNOWN_HOSTS"] = str(settings.known_hosts_path)
        try:
            assert main(["hosts", "forget", f"127.0.0.1:{sshd.port}"]) == 0
        finally:
            del os.environ["NODEFERRY_KNOWN_HOSTS"]
        third = await start_install(
            client, install_body(impostor.connection_string(), home, [node_repos.second.url])
        )
        assert (await wait_final(client, third))["state"] == "completed"
    finally:
        impostor.stop()


async def test_cancel_a_running_install(
    client: Any, sshd: SshServer, home: ComfyHome, node_repos: NodeRepos
) -> None:
    (home.root / "sleep_seconds").write_text("120")
    task_id = await start_install(
        client, install_body(sshd.connection_string(), home, [node_repos.sleeper.url])
    )
    await wait_for(client, task_id, lambda s, b: b["state"] == "running_install_scripts")
    began = time.monotonic()
    response = await client.post(f"/api/tasks/{task_id}/cancel")
    body = await response.json()
    assert response.status == 200, body
    assert body["state"] == "cancelled"
    assert body["in_progress"] is False and body["success"] is False
    assert time.monotonic() - began < 10
    final = await wait_final(client, task_id)
    assert final["state"] == "cancelled"
    assert not (home.custom_nodes / "ComfyUI-Sleeper" / "slept.marker").exists()
    # Cancelling a finished task answers its final document again.
    again = await client.post(f"/api/tasks/{task_id}/cancel")
    assert again.status == 200 and (await again.json())["state"] == "cancelled"


async def test_unknown_task_is_404(client: Any) -> None:
    response = await client.post(
        "/ssh/install-custom-nodes/progress",
        json={"task_id": "3f2b8e0a-5c1d-4e7f-9a2b-1c3d5e7f9a2b"},
    )
    body = await response.json()
    assert response.status == 404
    assert body["in_progress"] is False and body["success"] is False
    assert body["error"] == "unknown_task"
    for path in ("/api/tasks/3f2b8e0a-5c1d-4e7f-9a2b-1c3d5e7f9a2b",):
        assert (await client.get(path)).status == 404
    cancel = await client.post("/api/tasks/3f2b8e0a-5c1d-4e7f-9a2b-1c3d5e7f9a2b/cancel")
    assert cancel.status == 404


async def test_progress_names_the_wrong_machine(
    client: Any, sshd: SshServer, home: ComfyHome, node_repos: NodeRepos
) -> None:
    task_id = await start_install(
        client, install_body(sshd.connection_string(), home, [node_repos.plain.url])
    )
    same = await client.post(
        "/ssh/install-custom-nodes/progress",
        json={"task_id": task_id, "ssh_connection": f"root@127.0.0.1:{sshd.port}"},
    )
    assert same.status == 200
    other = await client.post(
        "/ssh/install-custom-nodes/progress",
        json={"task_id": task_id, "ssh_connection": "root@10.9.9.9 -p 22"},
    )
    body = await other.json()
    assert other.status == 400 and body["field"] == "ssh_connection"
    await wait_final(client, task_id)


async def test_bundle_uploaded_once_and_again_when_removed(
    client: Any, settings: Settings, sshd: SshServer, tmp_path: Path, node_repos: NodeRepos
) -> None:
    agent_dir = Path(settings.remote_state_dir) / "agent"
    first = await start_install(
        client,
        install_body(sshd.connection_string(), comfy_home(tmp_path / "h1"), [node_repos.plain.url]),
    )
    assert (await wait_final(client, first))["state"] == "completed"
    bundles = list(agent_dir.glob("*.pyz"))
    assert len(bundles) == 1
    second = await start_install(
        client,
        install_body(sshd.connection_string(), comfy_home(tmp_path / "h2"), [node_repos.plain.url]),
    )
    assert (await wait_final(client, second))["state"] == "completed"
    health = await (await client.get("/healthz")).json()
    assert health["stats"]["uploads"] == 1
    # Someone wiped the bundle on the instance: the controller notices and re-uploads.
    bundles[0].unlink()
    third = await start_install(
        client,
        install_body(sshd.connection_string(), comfy_home(tmp_path / "h3"), [node_repos.plain.url]),
    )
    assert (await wait_final(client, third))["state"] == "completed"
    health = await (await client.get("/healthz")).json()
    assert health["stats"]["uploads"] == 2
    assert bundles[0].exists()


async def test_no_python_on_the_instance(
    make_client: AppFactory,
    tmp_path: Path,
    client_key: Path,
    sshd: SshServer,
    home: ComfyHome,
    node_repos: NodeRepos,
) -> None:
    client = await make_client(make_settings(tmp_path, client_key, remote_python="python3.999"))
    task_id = await start_install(
        client, install_body(sshd.connection_string(), home, [node_repos.plain.url])
    )
    final = await wait_final(client, task_id)
    assert final["state"] == "failed" and final["error_code"] == "start_failed"
    assert "'python3.999' was not found" in final["error"]
    assert home.node_dirs() == []


async def test_concurrent_starts_to_one_silent_host_fail_together(
    make_client: AppFactory,
    tmp_path: Path,
    client_key: Path,
    node_repos: NodeRepos,
) -> None:
    # Five starts to one host that accepts TCP and never sends an SSH banner. They
    # share one connection attempt: all fail when it times out, not one after
    # another, and each says what happened to which host.
    connect_timeout = 5.0
    client = await make_client(make_settings(tmp_path, client_key, connect_timeout=connect_timeout))
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    silent.settimeout(0.1)
    port = silent.getsockname()[1]
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def count_connections() -> None:
        # Accepting changes nothing for the client (the kernel completed the TCP
        # handshake already); it counts the connection attempts that reach the host.
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                accepted.append(silent.accept()[0])

    counter = threading.Thread(target=count_connections, daemon=True)
    counter.start()
    try:
        # All five POSTs at once, so they all arrive while one attempt is under way.
        tasks = await asyncio.gather(
            *(
                start_install(
                    client,
                    install_body(
                        f"root@127.0.0.1:{port}",
                        comfy_home(tmp_path / f"home-{i}"),
                        [node_repos.plain.url],
                    ),
                )
                for i in range(5)
            )
        )
        finals = await asyncio.gather(*(wait_final(client, t, timeout=90) for t in tasks))
    finally:
        stop.set()
        counter.join(10)
        silent.close()
        for conn in accepted:
            conn.close()
    # One shared attempt, not five one after another: one connection reached the host
    # (the wall-clock gain of sharing is measured in tests/bench).
    assert len(accepted) == 1, len(accepted)
    messages = {final["error"] for final in finals}
    assert len(messages) == 1, messages
    (message,) = messages
    for final in finals:
        assert final["state"] == "failed" and final["error_code"] == "start_failed"
    assert f"127.0.0.1:{port}" in message
    assert "timed out" in message and f"{connect_timeout:g} s" in message
    assert "No existing session" not in message
