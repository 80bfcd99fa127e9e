"""The task registry on both engines (SQLite, and a real PostgreSQL server: the
``registry_url`` fixture runs each test once per engine), and ``nodeferry serve``
as a real process."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import paramiko
import pytest

from controller.common.errors import HostKeyChanged, HostKeyError
from controller.common.target import Target
from controller.core.fleet_store import FleetRecord, FleetStore, Member
from controller.core.registry import Registry, Slot, TaskRecord
from controller.ssh.hostkeys import KnownHosts
from controller.storage.database import Database
from controller.storage.shared import HostKeyStore, shared_token
from protocol import Progress
from tests.support.procs import end_process

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]


def _record(target: Target, ui_home: str, created: float) -> TaskRecord:
    return TaskRecord(str(uuid.uuid4()), target, ui_home, {"x": 1}, created)


def test_registry_conflicts_persistence_and_order(registry_url: str) -> None:
    path = registry_url
    registry = Registry(path)
    a = Target("ssh", "root", "10.0.0.1", 22)
    b = Target("ssh", "root", "10.0.0.2", 22)
    first = _record(a, "/w/ComfyUI", 100.0)
    assert registry.add_if_free(first) is None
    assert registry.add_if_free(_record(a, "/w/ComfyUI/", 101.0)) == first.task_id
    other = _record(b, "/w/ComfyUI", 102.0)
    assert registry.add_if_free(other) is None
    assert registry.is_running(a, "/w/ComfyUI") == first.task_id

    done = Progress(task_id=first.task_id, ui_home="/w/ComfyUI", state="completed")
    registry.save_progress(first.task_id, done, 200.0, launched=True)
    assert registry.is_running(a, "/w/ComfyUI") is None
    registry.close()

    reopened = Registry(path)
    got = reopened.get(first.task_id)
    assert got is not None and got.state == "completed" and got.launched
    assert got.progress is not None and got.progress.to_dict() == done.to_dict()
    assert [r.task_id for r in reopened.all()] == [other.task_id, first.task_id]
    assert [r.task_id for r in reopened.unfinished()] == [other.task_id]
    assert [r.task_id for r in reopened.finished_before(300.0)] == [first.task_id]
    assert reopened.finished_before(150.0) == []
    reopened.delete([first.task_id])
    assert reopened.get(first.task_id) is None
    reopened.close()


def test_registry_summaries_pruning_and_retry_links(registry_url: str) -> None:
    registry = Registry(registry_url)
    target = Target("ssh", "root", "10.0.0.1", 22)
    first = _record(target, "/w/ComfyUI", 100.0)
    first.resolution = {"nodes": ["a"]}
    first.notes = ["ignored ssh option 'Compression'"]
    registry.add(first)
    registry.adopt(first)  # already there: nothing changes, nothing fails
    got = registry.get(first.task_id)
    assert got is not None and got.resolution == {"nodes": ["a"]} and got.notes == first.notes
    done = Progress(task_id=first.task_id, ui_home="/w/ComfyUI", state="failed", error="E" * 900)
    registry.save_progress(first.task_id, done, 150.0, launched=True)
    # An older, unfinished document never overwrites a final one (replicas race).
    late = Progress(task_id=first.task_id, ui_home="/w/ComfyUI", state="cloning")
    registry.save_progress(first.task_id, late, None, launched=True)
    [row] = registry.page(10, target_key=target.key, ui_home="/w/ComfyUI/")
    assert row["state"] == "failed" and len(row["error"]) == 500
    assert registry.page(10, id_prefix=first.task_id[:8])[0]["task_id"] == first.task_id

    assert registry.link_retry(first.task_id, "retry-1")
    assert not registry.link_retry(first.task_id, "retry-2")
    assert registry.retried_by(first.task_id) == "retry-1"
    registry.unlink_retry(first.task_id, "retry-1")
    assert registry.retried_by(first.task_id) is None

    registry.prune([first.task_id])
    assert registry.get(first.task_id) is None and registry.is_pruned(first.task_id)
    assert registry.page(10) == [] and len(registry.page(10, pruned=None)) == 1
    assert registry.forget_before(151.0) == 1
    assert registry.page(10, pruned=None) == []
    registry.close()


def test_fleets_host_keys_and_the_token_are_shared(registry_url: str) -> None:
    one, two = Database(registry_url), Database(registry_url)
    try:
        fleet = FleetRecord(
            str(uuid.uuid4()), 5.0, {"targets": ["a"]}, [Member("a", "/w", "t1"), Member("b", "/w")]
        )
        FleetStore(one).add(fleet)
        again = FleetStore(two).get(fleet.fleet_id)
        assert again is not None and again.members == fleet.members
        assert FleetStore(two).task_fleets() == {"t1": fleet.fleet_id}

        keys_one, keys_two = HostKeyStore(one), HostKeyStore(two)
        assert keys_one.accept_first("[127.0.0.1]:2222", "ssh-ed25519", "AAAA-first") == {
            "ssh-ed25519": "AAAA-first"
        }
        # The second controller meets the host with another key: the first one stands.
        assert keys_two.accept_first("[127.0.0.1]:2222", "ssh-ed25519", "AAAA-other") == {
            "ssh-ed25519": "AAAA-first"
        }
        assert keys_two.forget("[127.0.0.1]:2222") and keys_one.lookup("[127.0.0.1]:2222") == {}

        token = shared_token(one, "token-from-a-file")
        assert token == "token-from-a-file" == shared_token(two, None)
    finally:
        one.close()
        two.close()


def test_host_keys_are_trusted_once_for_every_controller(registry_url: str, tmp_path: Path) -> None:
    one, two = Database(registry_url), Database(registry_url)
    first, other = paramiko.RSAKey.generate(1024), paramiko.RSAKey.generate(1024)
    try:
        a = KnownHosts(tmp_path / "known-a", "tofu", HostKeyStore(one))
        b = KnownHosts(tmp_path / "known-b", "tofu", HostKeyStore(two))
        a.check("127.0.0.1", 2222, first)
        b.check("127.0.0.1", 2222, first)  # what the first controller accepted
        with pytest.raises(HostKeyChanged):
            b.check("127.0.0.1", 2222, other)
        assert b.knows("127.0.0.1", 2222)
        assert not (tmp_path / "known-a").exists()  # the shared registry holds it
        strict = KnownHosts(tmp_path / "known-c", "strict", HostKeyStore(two))
        with pytest.raises(HostKeyError, match="strict"):
            strict.check("127.0.0.1", 2223, first)
        strict.check("127.0.0.1", 2222, first)
        assert a.forget("127.0.0.1", 2222) and not b.knows("127.0.0.1", 2222)
    finally:
        one.close()
        two.close()


def _admit_all(registries: list[Registry], records: list[TaskRecord], decide: Any) -> None:
    """Admit ``records`` from many threads at once, spread over ``registries``."""
    barrier = threading.Barrier(len(records))

    def admit(index: int) -> None:
        barrier.wait(timeout=30)
        record = records[index]
        registries[index % len(registries)].admit(record, lambda slots: decide(record, slots))

    with ThreadPoolExecutor(len(records)) as pool:
        list(pool.map(admit, range(len(records))))


def test_admission_is_exclusive_across_controllers(registry_url: str) -> None:
    """Two registries on one database stand for two controllers: each admission
    decides from the unfinished tasks and inserts in one exclusive transaction, so
    of twelve racing starts into one home one starts, and a limit of 2 holds."""
    registries = [Registry(registry_url), Registry(registry_url)]
    target = Target("ssh", "root", "10.0.0.1", 22)
    try:
        records = [_record(target, "/w/ComfyUI", 0.0) for _ in range(12)]

        def home_free(record: TaskRecord, slots: list[Slot]) -> bool:
            record.state = "queued" if slots else "starting"
            return True

        _admit_all(registries, records, home_free)
        slots = registries[0].unfinished_slots()
        assert [s.state for s in slots].count("starting") == 1 and len(slots) == 12
        assert slots[0].state == "starting"  # the first admitted is the oldest
        stamps = [r.created_at for r in registries[1].unfinished()]
        assert stamps == sorted(stamps) and len(set(stamps)) == 12

        hosts = [Target("ssh", "root", f"10.0.1.{i}", 22) for i in range(10)]
        limited = [_record(h, "/w/ComfyUI", 0.0) for h in hosts]

        def at_most_two(record: TaskRecord, slots: list[Slot]) -> bool:
            running = sum(1 for s in slots if s.state == "starting" and s.host != "10.0.0.1")
            record.state = "starting" if running < 2 else "queued"
            return True

        _admit_all(registries, limited, at_most_two)
        mine = [s for s in registries[1].unfinished_slots() if s.host != "10.0.0.1"]
        assert [s.state for s in mine].count("starting") == 2 and len(mine) == 10
    finally:
        for registry in registries:
            registry.close()


def test_each_queued_task_is_claimed_once_and_lost_launches_are_taken_over(
    registry_url: str,
) -> None:
    registries = [Registry(registry_url), Registry(registry_url), Registry(registry_url)]
    try:
        queued = []
        for i in range(9):
            record = _record(Target("ssh", "root", f"10.0.2.{i}", 22), "/w/ComfyUI", 0.0)
            record.state = "queued"
            registries[0].add(record)
            queued.append(record.task_id)

        def starting(record: TaskRecord) -> Progress:
            return Progress(task_id=record.task_id, ui_home=record.ui_home, state="starting")

        def everything(slots: list[Slot], _now: float) -> list[str]:
            return [s.task_id for s in slots if s.state == "queued"]

        barrier = threading.Barrier(6)

        def claim(index: int) -> list[str]:
            barrier.wait(timeout=30)
            registry = registries[index % 3]
            claimed = registry.claim_queued(everything, starting, f"replica-{index}", 30.0)
            return [r.task_id for r in claimed]

        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(claim, range(6)))
        claimed = [task_id for result in results for task_id in result]
        assert sorted(claimed) == sorted(queued)  # each exactly once

        # Nobody's lease ran out: nothing to take over. Once it has, one controller
        # takes each unconfirmed launch, and never one it is launching itself.
        assert registries[1].take_over("late", 30.0, set()) == []
        assert registries[2].take_over("late", 30.0, set(), ignore_lease=True) != []
        taken = registries[0].take_over("again", 30.0, set(claimed[:2]), ignore_lease=True)
        assert sorted(r.task_id for r in taken) == sorted(claimed[2:])
        assert all(r.owner == "again" for r in taken)
        registries[0].save_progress(claimed[0], starting(taken[0]), finished_at=None, launched=True)
        assert claimed[0] not in [
            r.task_id for r in registries[1].take_over("x", 1.0, set(), ignore_lease=True)
        ]
    finally:
        for registry in registries:
            registry.close()


def test_a_version_3_registry_upgrades_in_place(tmp_path: Path) -> None:
    """A data dir of the hand-written SQLite registry (schema 3, dumped from the
    code before Alembic) opens as it was, and gains the shared-registry columns."""
    path = tmp_path / "tasks.sqlite3"
    db = sqlite3.connect(str(path))
    db.executescript((REPO / "tests/controller/data/registry-v3.sql").read_text())
    db.execute("PRAGMA user_version = 3")
    db.close()

    registry = Registry(path)
    done, running, retry = (
        registry.get(f"{d * 8}-{d * 4}-4{d * 3}-8{d * 3}-{d * 12}") for d in "123"
    )
    assert done is not None and done.state == "completed" and done.notes == ["a note"]
    assert done.resolution == {"nodes": []} and done.retried_by is not None
    assert done.progress is not None and done.progress.successful == 1
    assert running is not None and running.launched and running.owner is None
    assert retry is not None and retry.state == "queued" and retry.attempt == 2
    assert retry.not_before == 1040.0 and retry.retry_of == done.task_id
    assert [s.task_id for s in registry.unfinished_slots()] == [running.task_id, retry.task_id]
    [history] = registry.page(10, pruned=None, with_nodes=True, before=(1001.0, ""))
    assert json.loads(history["node_summary"])[0][0] == "ComfyUI-Plain"
    fleets = FleetStore(registry.db)
    assert fleets.task_fleets() == {done.task_id: "44444444-4444-4444-8444-444444444444"}
    registry.close()
    tables = {
        row[0] for row in sqlite3.connect(str(path)).execute("SELECT name FROM sqlite_master")
    }
    assert {"alembic_version", "host_keys", "controller_secrets"} <= tables
    # Opened again: already at the newest revision, nothing to do.
    Registry(path).close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NODEFERRY_")}
    env["NODEFERRY_DATA_DIR"] = str(tmp_path / "data")
    env["NODEFERRY_LOCAL_STATE_DIR"] = str(tmp_path / "local")
    env["PYTHONPATH"] = str(REPO)
    return env


def test_serve_refuses_public_bind_without_token(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "controller",
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            "1",
            "--no-auth",
        ],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "without an API token" in result.stderr
    assert not (tmp_path / "data").exists()


def test_serve_answers_http(tmp_path: Path) -> None:
    port = _free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "controller", "serve", "--port", str(port)],
            env=_env(tmp_path),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    body = json.loads(r.read())
                break
            except OSError:
                assert process.poll() is None, log.read_text(errors="replace")
                assert time.monotonic() < deadline, "serve never answered"
                time.sleep(0.1)
        assert body["success"] is True and body["status"] == "ok"
        assert (tmp_path / "data" / "tasks.sqlite3").exists()
        # A token was made on first start, readable by its owner only ...
        token_file = tmp_path / "data" / "token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        token = token_file.read_text().strip()
        printed = subprocess.run(
            [sys.executable, "-m", "controller", "token"],
            env=_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert printed.stdout.strip() == token
        # ... without which the API answers 401, with it 200.
        url = f"http://127.0.0.1:{port}/api/tasks"
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(url, timeout=10)
        assert denied.value.code == 401
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert json.loads(answer.read())["success"] is True
    finally:
        end_process(process)
    output = log.read_text(errors="replace")
    # Not a terminal (a log file, journald, docker logs): the address without the
    # token, and how to get it; the token itself is nowhere in the log.
    assert f"dashboard: http://127.0.0.1:{port}/ (it asks for the API token" in output
    assert f"`nodeferry token --data-dir {tmp_path / 'data'}`" in output
    assert token not in output
