"""Retry, automatic retry, history past the retention, and paginated listings:
end to end against a real sshd, the real agent and real git daemons."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.api.appkeys import SERVICE
from controller.common.target import Target
from controller.core.registry import Registry, TaskRecord
from controller.sandbox.comfy import NODE_INIT, ComfyHome
from controller.sandbox.gitserver import GitServer
from controller.storage import registry_schema
from protocol import NodeProgress, Progress
from tests.controller.conftest import (
    AppFactory,
    NodeRepos,
    install_body,
    make_settings,
    poll,
    start_install,
    wait_final,
    wait_for,
)
from tests.support.sshd import SshServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture
def flaky_server(tmp_path: Path) -> Iterator[GitServer]:
    """A git daemon of its own, which a test can take down and bring back."""
    with GitServer(tmp_path / "flaky-gitd") as server:
        yield server


async def test_a_retry_succeeds_once_the_failing_git_server_is_back(
    client: Any,
    sshd: SshServer,
    home: ComfyHome,
    node_repos: NodeRepos,
    flaky_server: GitServer,
) -> None:
    flaky = flaky_server.add_repo("ComfyUI-Flaky", {"__init__.py": NODE_INIT})
    port = flaky_server.port
    flaky_server.halt()
    body = install_body(sshd.connection_string(), home, [node_repos.plain.url, flaky.url])
    first = await wait_final(client, await start_install(client, body), timeout=120)
    assert first["state"] == "completed" and first["failed"] == 1
    failed = [n for n in first["nodes"] if n["status"] == "failed"]
    assert [n["name"] for n in failed] == ["ComfyUI-Flaky"]
    assert failed[0]["error_code"] == "network"

    flaky_server.start(port)
    response = await client.post(f"/api/tasks/{first['task_id']}/retry")
    answer = await response.json()
    assert response.status == 202, answer
    retry_id = answer["task_id"]
    second = await wait_final(client, retry_id, timeout=120)
    assert second["state"] == "completed" and second["success"] is True
    # Only the node that failed was retried.
    assert [n["name"] for n in second["nodes"]] == ["ComfyUI-Flaky"]
    assert second["retry_of"] == first["task_id"] and second["attempt"] == 2
    _, original = await poll(client, first["task_id"])
    assert original["retried_by"] == retry_id
    assert (home.custom_nodes / "ComfyUI-Flaky" / "__init__.py").is_file()

    # One retry per task: a second answers 409 naming the first.
    again = await client.post(f"/api/tasks/{first['task_id']}/retry")
    assert again.status == 409
    assert (await again.json())["task_id"] == retry_id
    # Nothing left to retry in a task that succeeded.
    nothing = await client.post(f"/api/tasks/{retry_id}/retry")
    assert nothing.status == 400
    assert "nothing to retry" in (await nothing.json())["message"]


async def test_auto_retry_retries_a_network_failure_but_not_a_missing_repository(
    make_client: AppFactory,
    tmp_path: Path,
    client_key: Path,
    sshd: SshServer,
    home: ComfyHome,
    git_server: GitServer,
    flaky_server: GitServer,
) -> None:
    settings = make_settings(tmp_path, client_key, auto_retry_backoff=0.5)
    client = await make_client(settings)
    flaky = flaky_server.add_repo("ComfyUI-Flaky", {"__init__.py": NODE_INIT})
    port = flaky_server.port
    flaky_server.halt()
    missing = git_server.missing_url("ComfyUI-Nowhere")
    body = install_body(sshd.connection_string(), home, [missing, flaky.url], auto_retry=2)
    task_id = await start_install(client, body)
    first = await wait_final(client, task_id, timeout=120)
    codes = {n["name"]: n["error_code"] for n in first["nodes"]}
    assert codes == {"ComfyUI-Nowhere": "repo_not_found", "ComfyUI-Flaky": "network"}
    flaky_server.start(port)  # back before the retry's backoff ends, or during its retries

    _, linked = await wait_for(client, task_id, lambda _s, b: b.get("retried_by") is not None)
    chain = [linked]
    while chain[-1].get("retried_by"):
        nxt = await wait_final(client, chain[-1]["retried_by"], timeout=120)
        chain.append(nxt)
    last = chain[-1]
    assert last["state"] == "completed" and last["success"] is True
    for retry in chain[1:]:
        # The missing repository is never retried: it would only fail again.
        assert [n["name"] for n in retry["nodes"]] == ["ComfyUI-Flaky"]
    assert [t["attempt"] for t in chain] == list(range(1, len(chain) + 1))
    assert chain[1]["retry_of"] == task_id


async def test_auto_retry_leaves_a_deterministic_failure_alone(
    client: Any, sshd: SshServer, home: ComfyHome, git_server: GitServer
) -> None:
    body = install_body(
        sshd.connection_string(), home, [git_server.missing_url("ComfyUI-Gone")], auto_retry=3
    )
    task_id = await start_install(client, body)
    final = await wait_final(client, task_id, timeout=120)
    assert final["nodes"][0]["error_code"] == "repo_not_found"
    service = client.server.app[SERVICE]
    live = service.tasks.live[task_id]
    # The final-state hooks ran inside the publish that made it final.
    assert live.record.retried_by is None and final["retried_by"] is None
    listing = await (await client.get("/api/tasks")).json()
    assert [t["task_id"] for t in listing["tasks"]] == [task_id]


async def test_history_outlives_the_retention_of_full_documents(
    client: Any, sshd: SshServer, home: ComfyHome, node_repos: NodeRepos
) -> None:
    conn = sshd.connection_string()
    task_id = await start_install(client, install_body(conn, home, [node_repos.plain.url]))
    final = await wait_final(client, task_id)
    assert final["state"] == "completed"
    service = client.server.app[SERVICE]
    settings = service.tasks.settings

    pruned = await service.cleanup(now=time.time() + settings.retention + 60)
    assert pruned == [task_id]
    gone = await client.get(f"/api/tasks/{task_id}")
    assert gone.status == 404
    assert (await gone.json())["expired"] is True
    assert (await (await client.get("/api/tasks")).json())["tasks"] == []

    response = await client.get("/api/history", params={"target": conn, "ui_home": str(home.root)})
    page = await response.json()
    assert response.status == 200, page
    [entry] = page["tasks"]
    assert entry["task_id"] == task_id and entry["state"] == "completed"
    assert entry["successful"] == 1 and entry["finished_at"]
    assert entry["nodes"][0]["name"] == "ComfyUI-Plain"
    assert entry["nodes"][0]["status"] == "installed"
    assert entry["nodes"][0]["commit"] == node_repos.plain.head
    other = await client.get("/api/history", params={"ui_home": "/elsewhere/ComfyUI"})
    assert (await other.json())["tasks"] == []

    # `nodeferry history` shows the same, from a separate process.
    command = [sys.executable, "-m", "controller.cli.main", "history"]
    command += ["--controller", str(client.make_url("")), "--ssh", conn]
    with_token = {**os.environ, "NODEFERRY_TOKEN": settings.token or ""}
    proc = await asyncio.create_subprocess_exec(
        *command,
        "--json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=with_token,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    assert [t["task_id"] for t in json.loads(out)["tasks"]] == [task_id]
    proc = await asyncio.create_subprocess_exec(
        *command,
        "--nodes",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**with_token, "COLUMNS": "250"},
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    assert "ComfyUI-Plain" in out.decode() and "completed" in out.decode()

    await service.cleanup(now=time.time() + settings.history_days * 86400 + 60)
    assert (await (await client.get("/api/history")).json())["tasks"] == []


def _finished(target: Target, created: float) -> TaskRecord:
    task_id = str(uuid.uuid4())
    progress = Progress(task_id=task_id, ui_home="/w/ComfyUI", state="completed")
    progress.nodes = [NodeProgress(name="N", url="https://example.invalid/N", status="installed")]
    progress.recount()
    return TaskRecord(
        task_id,
        target,
        "/w/ComfyUI",
        {},
        created,
        state="completed",
        finished_at=created + 1,
        launched=True,
        progress=progress,
    )


async def test_listings_paginate_with_a_cursor(
    make_client: AppFactory, tmp_path: Path, client_key: Path
) -> None:
    settings = make_settings(tmp_path, client_key)
    registry = Registry(settings.database_path)
    target = Target("ssh", "root", "10.0.0.1", 22)
    records = [_finished(target, 1000.0 + i) for i in range(7)]
    records.append(_finished(target, 1003.0))  # same second as another: the id breaks the tie
    for record in records:
        registry.add(record)
    registry.close()
    client = await make_client(settings)

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
        page = await (await client.get("/api/tasks", params=params)).json()
        seen += [t["task_id"] for t in page["tasks"]]
        pages += 1
        assert all(t["total_nodes"] == 1 and t["state"] == "completed" for t in page["tasks"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    expected = sorted(records, key=lambda r: (r.created_at, r.task_id), reverse=True)
    assert seen == [r.task_id for r in expected]

    for bad in ({"limit": "0"}, {"limit": "²"}, {"limit": "9" * 5000}, {"cursor": "x_y"}):
        response = await client.get("/api/tasks", params=bad)
        assert response.status == 400, bad
        assert (await response.json())["field"] in ("limit", "cursor")


def test_a_version_1_registry_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "tasks.sqlite3"
    db = sqlite3.connect(str(path))
    db.executescript(
        """
        CREATE TABLE tasks (
            task_id TEXT PRIMARY KEY, target_kind TEXT NOT NULL, target_user TEXT NOT NULL,
            target_host TEXT NOT NULL, target_port INTEGER NOT NULL, target_key TEXT NOT NULL,
            ui_home TEXT NOT NULL, spec_json TEXT NOT NULL, created_at REAL NOT NULL,
            finished_at REAL, state TEXT NOT NULL, launched INTEGER NOT NULL DEFAULT 0,
            progress_json TEXT);
        """
    )
    old = _finished(Target("ssh", "root", "10.0.0.1", 22), 50.0)
    assert old.progress is not None
    db.execute(
        "INSERT INTO tasks VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            old.task_id,
            "ssh",
            "root",
            "10.0.0.1",
            22,
            "root@10.0.0.1:22",
            "/w/ComfyUI",
            "{}",
            50.0,
            51.0,
            "completed",
            1,
            old.progress.to_json(),
        ),
    )
    db.commit()
    db.close()

    registry = Registry(path)
    [row] = registry.page(10)
    assert row["task_id"] == old.task_id and row["successful"] == 1 and row["total_nodes"] == 1
    got = registry.get(old.task_id)
    assert got is not None and got.attempt == 1 and got.retried_by is None
    registry.close()
    version = sqlite3.connect(str(path)).execute("PRAGMA user_version").fetchone()[0]
    assert version == registry_schema.VERSION == 3
    # A version-1 row has no route and no notes: it reads as a plain target.
    assert got.target == Target("ssh", "root", "10.0.0.1", 22) and got.notes == []


def test_what_one_task_stores_is_capped() -> None:
    from controller.core.registry import MAX_STORED_DOCUMENT, stored_document

    task_id = str(uuid.uuid4())
    progress = Progress(task_id=task_id, ui_home="/w/ComfyUI", state="completed")
    progress.error = "E" * 50_000
    progress.nodes = [
        NodeProgress(
            name=f"N{i:03d}",
            url=f"https://example.invalid/N{i:03d}",
            status="failed",
            error="head\n" + "x" * 5000 + f"\nfatal: the cause of N{i:03d}",
            error_code="network",
        )
        for i in range(500)
    ]
    progress.recount()
    assert len(progress.to_json()) > 2_000_000  # what the agent may write
    text = stored_document(progress)
    assert len(text) <= MAX_STORED_DOCUMENT
    stored = Progress.from_json(text)
    assert stored.failed == 500 and len(stored.nodes) == 500
    # The tail, where a failed command says why, is what stays.
    assert stored.nodes[7].error is not None and stored.nodes[7].error.endswith("cause of N007")
    assert stored.nodes[7].error_code == "network"
