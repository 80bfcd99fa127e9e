"""A corrupt progress document on a real instance (sshd on loopback): reported as
``unreadable_progress`` (not 500, not "unreachable"), the last good document stays
visible, it never turns into ``lost``, and the next valid document wins."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from controller.sandbox.comfy import ComfyHome
from tests.controller.conftest import (
    NodeRepos,
    install_body,
    poll,
    start_install,
    wait_final,
    wait_for,
)
from tests.support.sshd import SshServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

#: How long the corrupt document is watched: past the three heartbeats after
#: which the controller used to ask the agent's status and call the task lost.
WATCH_SECONDS = 5.0


def _running(status: int, body: dict[str, Any]) -> bool:
    return status == 200 and body.get("state") == "running_install_scripts"


def _watch_unreadable(last_good: dict[str, Any]) -> Any:
    async def watch(client: Any, task_id: str) -> int:
        # A poll may be answered from the cache until the broken file is read.
        await wait_for(client, task_id, lambda status, _body: status == 502)
        answers = 0
        until = time.monotonic() + WATCH_SECONDS
        while time.monotonic() < until or answers < 3:
            status, body = await poll(client, task_id)
            assert status == 502, body
            assert body["error"] == "unreadable_progress", body
            assert "cannot be read" in body["message"]
            assert body["stale"] is True
            # The last good document, not lost, not failed.
            assert body["state"] == "running_install_scripts", body
            assert body["nodes"] == last_good["nodes"]
            answers += 1
        return answers

    return watch


async def test_a_corrupt_document_is_unreadable_then_a_valid_one_wins(
    client: Any,
    tmp_path: Path,
    sshd: SshServer,
    home: ComfyHome,
    node_repos: NodeRepos,
) -> None:
    task_id = await start_install(
        client, install_body(sshd.connection_string(), home, [node_repos.gated.url])
    )
    _, good = await wait_for(client, task_id, _running)
    document = tmp_path / "remote-state" / "tasks" / task_id / "progress.json"
    worker = json.loads(document.read_text())["pid"]
    # The worker rewrites its document every second: hold it still while the file
    # is broken, as a full disk or a stray writer would leave it.
    os.kill(worker, signal.SIGSTOP)
    try:
        for broken in (b'{"task_id": "\xff\xfe not utf-8', b"not json at all", b"[1, 2]"):
            document.write_bytes(broken)
            answers = await _watch_unreadable(good)(client, task_id)
            assert answers >= 3
        task = await (await client.get(f"/api/tasks/{task_id}")).json()
        assert task["error"] == "unreadable_progress"
        health = await (await client.get("/healthz")).json()
        assert health["stats"]["unreadable_progress"] >= 9
    finally:
        os.kill(worker, signal.SIGCONT)
        (home.root / "release").touch()
    # The agent writes again: its valid document replaces the broken one.
    final = await wait_final(client, task_id)
    assert final["state"] == "completed" and final["success"] is True, final
    assert (home.custom_nodes / "ComfyUI-Gated" / "released.marker").exists()


async def test_agent_status_tells_unreadable_from_missing(
    client: Any, tmp_path: Path, sshd: SshServer, home: ComfyHome, node_repos: NodeRepos
) -> None:
    task_id = await start_install(
        client, install_body(sshd.connection_string(), home, [node_repos.plain.url])
    )
    await wait_final(client, task_id)
    state = tmp_path / "remote-state"
    document = state / "tasks" / task_id / "progress.json"
    good = document.read_bytes()
    document.write_bytes(b"\xff\xfe")
    unreadable, unreadable_body = _agent_status(state, task_id, tmp_path / "one.json")
    document.unlink()
    missing, missing_body = _agent_status(state, task_id, tmp_path / "two.json")
    assert unreadable == 7 and unreadable_body["error"] == "unreadable_progress"
    assert "unreadable progress document" in unreadable_body["message"]
    assert missing == 4 and missing_body["error"] == "unknown_task"
    document.write_bytes(good)


def _agent_status(state: Path, task_id: str, out: Path) -> tuple[int, dict[str, Any]]:
    from agent import cli

    with open(out, "w") as handle, contextlib.redirect_stdout(handle):
        code = cli.main(["--state-dir", str(state), "status", "--task-id", task_id])
    return code, json.loads(out.read_text())
