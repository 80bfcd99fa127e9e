"""Several real controller processes (``python -m controller serve``) on one real
PostgreSQL server, installing over the real sshd fixture into sandbox ComfyUI
homes: the queue, the limits, launches, kills and a database restart, as a
fleet of replicas behind one address would meet them."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from controller.sandbox.comfy import ComfyHome
from tests.bench.controller_proc import ControllerProcess
from tests.controller.conftest import FINAL_STATES, NodeRepos, comfy_home
from tests.support.postgres import PostgresServer
from tests.support.procs import end_processes_under
from tests.support.sshd import SshServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


class Fleet:
    """Controller processes sharing one database, and an HTTP session to them."""

    def __init__(self, root: Path, url: str, client_key: Path, **settings: Any) -> None:
        self.root = root
        self.url = url
        self.client_key = client_key
        self.settings = settings
        self.replicas: list[ControllerProcess] = []
        self.session: aiohttp.ClientSession | None = None
        self.token = ""

    def add(self) -> ControllerProcess:
        index = len(self.replicas)
        values = {
            "database_url": self.url,
            "ssh_keys": str(self.client_key),
            "use_ssh_agent": "false",
            "known_hosts": str(self.root / f"known_hosts-{index}"),
            # One machine, one agent state dir, whichever replica reaches it.
            "remote_state_dir": str(self.root / "remote-state"),
            "local_state_dir": str(self.root / f"local-{index}"),
            "ssh_config": "",
            "connect_timeout": "3",
            "command_timeout": "10",
            "launch_lease": "15",
            "refresh_interval": "0.2",
            "monitor_interval": "1",
            "cleanup_interval": "3600",
            **{k: str(v) for k, v in self.settings.items()},
        }
        replica = ControllerProcess(self.root / f"replica-{index}", values).start(60.0)
        self.replicas.append(replica)
        token = (Path(values.get("data_dir", replica.base / "data")) / "token").read_text()
        assert not self.token or self.token == token.strip(), "replicas disagree on the token"
        self.token = token.strip()
        return replica

    async def call(
        self, index: int, method: str, path: str, body: Any = None
    ) -> tuple[int, dict[str, Any]]:
        assert self.session is not None
        replica = self.replicas[index % len(self.replicas)]
        async with self.session.request(
            method,
            replica.url + path,
            json=body,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=aiohttp.ClientTimeout(total=60),
        ) as response:
            return response.status, await response.json()

    async def tasks(self, index: int = 0) -> list[dict[str, Any]]:
        status, body = await self.call(index, "GET", "/api/tasks?limit=500")
        assert status == 200, body
        return list(body["tasks"])

    async def wait(self, check: Any, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = await check()
            if last:
                return last
            await asyncio.sleep(0.2)
        raise AssertionError(f"{what}: not reached in {timeout} s (last: {last})")

    def stop(self) -> None:
        for replica in self.replicas:
            replica.stop()


@pytest.fixture
async def fleet_factory(
    tmp_path: Path, postgres: PostgresServer, client_key: Path
) -> AsyncIterator[Any]:
    fleets: list[Fleet] = []

    async def make(count: int, **settings: Any) -> Fleet:
        fleet = Fleet(tmp_path / f"fleet-{len(fleets)}", postgres.url(), client_key, **settings)
        fleets.append(fleet)
        for _ in range(count):
            await asyncio.get_running_loop().run_in_executor(None, fleet.add)
        fleet.session = aiohttp.ClientSession()
        return fleet

    try:
        yield make
    finally:
        for fleet in fleets:
            if fleet.session is not None:
                await fleet.session.close()
            fleet.stop()
        await asyncio.get_running_loop().run_in_executor(None, end_processes_under, tmp_path)


@pytest.fixture
def gated_home(tmp_path: Path) -> Iterator[ComfyHome]:
    home = comfy_home(tmp_path / "ComfyUI")
    yield home
    # Whatever waits at the gate is let go, so nothing outlives the test.
    (home.root / "release").touch()


def _body(sshd: SshServer, home: ComfyHome, url: str, **extra: Any) -> dict[str, Any]:
    return {
        "ssh_connection": sshd.connection_string(),
        "ui_home": str(home.root),
        "nodes": [url],
        "python": sys.executable,
        "queue": True,
        **extra,
    }


async def test_fifty_starts_through_three_replicas_queue_one_home_in_arrival_order(
    fleet_factory: Any, sshd: SshServer, gated_home: ComfyHome, node_repos: NodeRepos
) -> None:
    fleet = await fleet_factory(3)
    body = _body(sshd, gated_home, node_repos.gated.url)
    answers = await asyncio.gather(
        *(fleet.call(i, "POST", "/ssh/install-custom-nodes", body) for i in range(50))
    )
    assert all(status == 202 for status, _ in answers), answers
    started = [a for _, a in answers if a["state"] == "starting"]
    queued = [a for _, a in answers if a["state"] == "queued"]
    assert len(started) == 1 and len(queued) == 49
    # Each was told its own place: 1 to 49, none twice.
    assert sorted(a["queue_position"] for a in queued) == list(range(1, 50))
    by_position = [a["task_id"] for a in sorted(queued, key=lambda a: a["queue_position"])]
    for index in range(3):
        listing = list(reversed(await fleet.tasks(index)))  # oldest first
        assert [t["task_id"] for t in listing] == [started[0]["task_id"], *by_position]
        assert sum(1 for t in listing if t["state"] != "queued") == 1

    # Through any replica, a queued task says where it stands.
    status, view = await fleet.call(
        2, "POST", "/ssh/install-custom-nodes/progress", {"task_id": by_position[4]}
    )
    assert status == 200 and view["state"] == "queued"

    # Cancel all but the next one, each through another replica than queued it.
    cancels = await asyncio.gather(
        *(
            fleet.call(i + 1, "POST", f"/api/tasks/{task_id}/cancel")
            for i, task_id in enumerate(by_position[1:])
        )
    )
    assert all(status == 200 and c["state"] == "cancelled" for status, c in cancels), cancels
    (gated_home.root / "release").touch()

    async def both_final() -> bool:
        states = {t["task_id"]: t["state"] for t in await fleet.tasks(1)}
        return all(states[t] in FINAL_STATES for t in (started[0]["task_id"], by_position[0]))

    await fleet.wait(both_final, 120, "the running and the next install finish")
    states = {t["task_id"]: t["state"] for t in await fleet.tasks(2)}
    assert states[started[0]["task_id"]] == states[by_position[0]] == "completed"
    assert all(states[t] == "cancelled" for t in by_position[1:])
    # Exactly the two ran on the machine, once each.
    ran = sorted(p.name for p in (fleet.root / "remote-state" / "tasks").iterdir())
    assert ran == sorted([started[0]["task_id"], by_position[0]])


async def test_a_limit_of_two_holds_across_three_replicas(
    fleet_factory: Any, sshd: SshServer, tmp_path: Path, node_repos: NodeRepos
) -> None:
    fleet = await fleet_factory(3, max_running=2)
    homes = [comfy_home(tmp_path / f"home-{i}") for i in range(6)]
    try:
        answers = await asyncio.gather(
            *(
                fleet.call(
                    i, "POST", "/ssh/install-custom-nodes", _body(sshd, h, node_repos.gated.url)
                )
                for i, h in enumerate(homes)
            )
        )
        assert all(status == 202 for status, _ in answers), answers
        assert [a["state"] for _, a in answers].count("starting") == 2
        ids = [a["task_id"] for _, a in answers]
        most = 0
        released = 0
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            listing = {t["task_id"]: t for t in await fleet.tasks(released % 3)}
            running = [i for i in ids if listing[i]["state"] not in FINAL_STATES | {"queued"}]
            most = max(most, len(running))
            assert len(running) <= 2, running
            if all(listing[i]["state"] in FINAL_STATES for i in ids):
                break
            # Let one running install finish at a time.
            for i, task_id in enumerate(ids):
                release = homes[i].root / "release"
                if task_id in running and not release.exists():
                    release.touch()
                    released += 1
                    break
            await asyncio.sleep(0.1)
        listing = {t["task_id"]: t for t in await fleet.tasks(1)}
        assert all(listing[i]["state"] == "completed" for i in ids), listing
        assert most == 2
    finally:
        for h in homes:
            (h.root / "release").touch()


async def test_a_replica_killed_during_a_burst_loses_and_doubles_nothing(
    fleet_factory: Any, sshd: SshServer, tmp_path: Path, node_repos: NodeRepos
) -> None:
    fleet = await fleet_factory(3, max_running=3)
    homes = [comfy_home(tmp_path / f"home-{i}") for i in range(12)]
    body = [_body(sshd, h, node_repos.plain.url) for h in homes]
    first = await asyncio.gather(
        *(fleet.call(i, "POST", "/ssh/install-custom-nodes", body[i]) for i in range(8))
    )
    fleet.replicas[1].kill()  # mid-burst: some of its launches and claims in flight
    alive = [0, 2]
    rest = await asyncio.gather(
        *(
            fleet.call(alive[i % 2], "POST", "/ssh/install-custom-nodes", body[i])
            for i in range(8, 12)
        )
    )
    answers = [*first, *rest]
    assert all(status == 202 for status, _ in answers), answers
    ids = [a["task_id"] for _, a in answers]

    async def all_final() -> Any:
        status, page = await fleet.call(0, "GET", "/api/tasks?limit=100")
        if status != 200:
            return None
        states = {t["task_id"]: t["state"] for t in page["tasks"]}
        return states if all(states.get(i) in FINAL_STATES for i in ids) else None

    # The dead replica's unconfirmed launches wait for their lease (15 s), then
    # another replica launches them.
    states = await fleet.wait(all_final, 150, "every task finished")
    assert all(states[i] == "completed" for i in ids), states
    ran = sorted(p.name for p in (fleet.root / "remote-state" / "tasks").iterdir())
    assert ran == sorted(ids)  # each launched on the machine, none twice
    for i, home in enumerate(homes):
        assert (home.root / "custom_nodes" / "ComfyUI-Plain").is_dir(), i


async def test_postgres_restarted_mid_run_503_then_recovery(
    fleet_factory: Any,
    postgres: PostgresServer,
    sshd: SshServer,
    tmp_path: Path,
    node_repos: NodeRepos,
) -> None:
    fleet = await fleet_factory(2)
    home = comfy_home(tmp_path / "home")
    status, answer = await fleet.call(
        0, "POST", "/ssh/install-custom-nodes", _body(sshd, home, node_repos.plain.url)
    )
    assert status == 202
    before = len(await fleet.tasks(1))
    await asyncio.get_running_loop().run_in_executor(None, postgres.stop)
    restarted = False
    try:
        for index in (0, 1):
            status, body = await fleet.call(index, "GET", "/api/tasks")
            assert status == 503 and body["error"] == "database_unavailable", body
            assert "database" in body["message"]
            other = comfy_home(tmp_path / f"away-{index}")
            status, body = await fleet.call(
                index, "POST", "/ssh/install-custom-nodes", _body(sshd, other, node_repos.plain.url)
            )
            assert status == 503 and body["error"] == "database_unavailable", body
        await asyncio.get_running_loop().run_in_executor(None, postgres.start)
        restarted = True

        async def answers(index: int) -> Any:
            with contextlib.suppress(aiohttp.ClientError):
                status, body = await fleet.call(index, "GET", "/api/tasks")
                return body if status == 200 else None
            return None

        for index in (0, 1):
            page = await fleet.wait(lambda i=index: answers(i), 30, f"replica {index} recovers")
            # Nothing the refused starts would have written is there.
            assert len(page["tasks"]) == before

        async def done() -> Any:
            status, view = await fleet.call(
                1, "POST", "/ssh/install-custom-nodes/progress", {"task_id": answer["task_id"]}
            )
            return view if status == 200 and view["state"] in FINAL_STATES else None

        view = await fleet.wait(done, 90, "the install started before the outage finishes")
        assert view["state"] == "completed"
    finally:
        if not restarted:
            postgres.start()


async def _first_sight(
    ws: aiohttp.ClientWebSocketResponse, task_ids: set[str], timeout: float
) -> dict[str, float]:
    """When each of ``task_ids`` first appears in a ``tasks: all`` feed."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while set(seen) != task_ids:
        message = await ws.receive_json(timeout=max(0.1, deadline - time.monotonic()))
        tasks = message.get("tasks") or ([message["task"]] if "task" in message else [])
        for task in tasks:
            if task["task_id"] in task_ids:
                seen.setdefault(task["task_id"], time.monotonic())
    return seen


async def test_a_dashboard_on_one_replica_sees_starts_through_another_as_fresh(
    fleet_factory: Any, sshd: SshServer, tmp_path: Path, node_repos: NodeRepos
) -> None:
    """The task list of a WebSocket on replica 0 shows a start made through replica 1
    as soon as one made through replica 0 itself (one LIST_INTERVAL), and a
    subscription there follows it to its end."""
    fleet = await fleet_factory(2)
    assert fleet.session is not None
    ws = await fleet.session.ws_connect(f"{fleet.replicas[0].url}/api/ws?token={fleet.token}")
    try:
        assert (await ws.receive_json(timeout=30))["type"] == "ready"
        await ws.send_json({"op": "subscribe", "tasks": "all"})
        assert (await ws.receive_json(timeout=30))["type"] == "tasks"
        lags: dict[int, list[float]] = {0: [], 1: []}
        for round_ in range(3):
            for through in (0, 1):
                home = comfy_home(tmp_path / f"home-{round_}-{through}")
                sent = time.monotonic()
                status, answer = await fleet.call(
                    through,
                    "POST",
                    "/ssh/install-custom-nodes",
                    _body(sshd, home, node_repos.plain.url),
                )
                assert status == 202, answer
                seen = await _first_sight(ws, {answer["task_id"]}, 30)
                lags[through].append(seen[answer["task_id"]] - sent)
        local, remote = max(lags[0]), max(lags[1])
        print(f"\nfirst sight on replica 0: own starts {lags[0]}, replica 1's {lags[1]}")
        # One list interval (1 s) plus a loaded machine's slack, either way.
        assert local < 3.0 and remote < 3.0, lags

        await ws.send_json({"op": "subscribe", "task_id": answer["task_id"]})
        while True:
            message = await ws.receive_json(timeout=60)
            if message.get("type") == "final" and message["task_id"] == answer["task_id"]:
                assert message["progress"]["state"] == "completed"
                break
    finally:
        await ws.close()


async def test_fleets_and_retries_are_the_same_through_any_replica(
    fleet_factory: Any, sshd: SshServer, tmp_path: Path, node_repos: NodeRepos
) -> None:
    fleet = await fleet_factory(2)
    homes = [comfy_home(tmp_path / f"fleet-home-{i}") for i in range(2)]
    missing = node_repos.plain.url.replace("ComfyUI-Plain", "ComfyUI-Missing")
    status, started = await fleet.call(
        0,
        "POST",
        "/api/fleet",
        {
            "targets": [
                {"ssh_connection": sshd.connection_string(), "ui_home": str(h.root)} for h in homes
            ],
            "ui_home": str(homes[0].root),
            "nodes": [node_repos.plain.url, missing],
            "python": sys.executable,
        },
    )
    assert status == 202, started

    async def settled() -> Any:
        status, body = await fleet.call(1, "GET", f"/api/fleet/{started['fleet_id']}")
        assert status == 200, body
        return body if body["running"] == 0 else None

    body = await fleet.wait(settled, 120, "the fleet, read through the other replica")
    assert [i["task_id"] for i in body["per_instance"]] == [t["task_id"] for t in started["tasks"]]
    assert all(i["successful"] == 1 and i["failed"] == 1 for i in body["per_instance"]), body

    # Two replicas asked at once to retry the same failed task: one retry, one 409.
    task_id = started["tasks"][0]["task_id"]
    answers = await asyncio.gather(
        *(fleet.call(i, "POST", f"/api/tasks/{task_id}/retry", {}) for i in (0, 1, 0, 1))
    )
    assert sorted(status for status, _ in answers) == [202, 409, 409, 409], answers
    [retry] = [a for status, a in answers if status == 202]
    assert all(a["task_id"] == retry["task_id"] for status, a in answers if status == 409)
    for index in (0, 1):

        async def linked(index: int = index) -> Any:
            status, view = await fleet.call(
                index, "POST", "/ssh/install-custom-nodes/progress", {"task_id": task_id}
            )
            assert status == 200, view
            return view["retried_by"] == retry["task_id"]

        # Within a refresh interval (0.2 s here) on the replica that did not retry.
        await fleet.wait(linked, 5, f"replica {index} shows the retry link")
