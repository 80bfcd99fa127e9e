"""The client, the event stream and the log follow against a real controller running the
real agent through the ``local`` transport."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from controller.api.app import create_app
from controller.api.events import HEARTBEAT
from controller.client import AsyncClient, Client, TaskNotFound, iter_sse
from tests.frontends.conftest import (
    HEARTBEAT_SECONDS,
    REFRESH_INTERVAL,
    DemoWorld,
    RunningController,
    controller_settings,
    serve_in_thread,
    wait_until,
)
from tests.support.procs import end_processes_under

pytestmark = pytest.mark.slow


def start(client: Client, world: DemoWorld, home: Path, nodes: list[str]) -> str:
    return client.start(
        "local",
        str(home),
        nodes,
        python=str(world.sandbox.python),
        pip_args=world.sandbox.pip_args,
    )


@pytest.mark.timeout(90)
def test_wait_follows_an_install_to_completion(
    controller: RunningController, world: DemoWorld, tmp_path: Path
) -> None:
    home = world.new_ui_home(tmp_path)
    seen: list[dict[str, Any]] = []
    streamed: list[dict[str, Any]] = []
    with Client(controller.url, token=controller.token) as client:
        # A spy on the real event stream: what wait() got through it is recorded.
        real_events = client._async.events

        async def events(task_id: str, **kwargs: Any) -> Any:
            async for document in real_events(task_id, **kwargs):
                streamed.append(document)
                yield document

        client._async.events = events  # type: ignore[method-assign]
        task_id = start(client, world, home, world.nodes())
        final = client.wait(task_id, on_progress=seen.append, timeout=60)
    # It followed the stream: the final document (and most others) came through it.
    assert streamed and streamed[-1] == final
    assert len(streamed) >= len(seen) // 2
    assert final["state"] == "completed" and final["success"] is True
    assert final["completed"] is True and final["in_progress"] is False
    assert final["successful_clones"] == 4 and final["failed_clones"] == 0
    assert {node["status"] for node in final["nodes"]} == {"installed"}
    assert seen[-1] == final
    assert seen[0]["state"] in ("starting", "cloning")
    # States only move forward, and every node ends up in ComfyUI's folder.
    order = [
        "starting",
        "cloning",
        "installing_requirements",
        "running_install_scripts",
        "verifying",
    ]
    ranks = [order.index(d["state"]) for d in seen[:-1]]
    assert ranks == sorted(ranks)
    assert sorted(p.name for p in (home / "custom_nodes").iterdir()) == sorted(
        n.name for n in world.sandbox.nodes
    )


@pytest.mark.timeout(90)
def test_wait_times_out_and_cancels(
    controller: RunningController, world: DemoWorld, tmp_path: Path
) -> None:
    home = world.new_ui_home(tmp_path)
    with Client(controller.url, token=controller.token) as client:
        task_id = start(client, world, home, [world.slow_node()])
        with pytest.raises(Exception) as caught:
            client.wait(task_id, timeout=3, cancel_on_timeout=True)
        assert type(caught.value).__name__ == "WaitTimeout"
        assert "did not finish within 3 s" in str(caught.value)
        assert "cancelled" in str(caught.value)
        assert client.progress(task_id)["state"] == "cancelled"
    assert not (home / "custom_nodes" / "ComfyUI-Slow" / ".installed").exists()


async def _watch(
    session: aiohttp.ClientSession, url: str, until: float, events: list[str], comments: list[str]
) -> None:
    """Read one task's stream until ``until`` (monotonic) or its end."""
    async with session.get(url, headers={"Accept": "text/event-stream"}) as response:
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        while time.monotonic() < until:
            try:
                raw = await asyncio.wait_for(response.content.readline(), until - time.monotonic())
            except TimeoutError:
                return
            if not raw:
                return
            line = raw.decode()
            if line.startswith("event:"):
                events.append(line.split(":", 1)[1].strip())
            elif line.startswith(":"):
                comments.append(line)


@pytest.mark.timeout(120)
def test_many_watchers_share_one_remote_read_per_interval(world: DemoWorld, tmp_path: Path) -> None:
    home = world.new_ui_home(tmp_path)
    watchers = 25
    window = 4.0
    # A controller of its own: its counters see this task alone, not what other
    # tests left running on the session's controller.
    settings = controller_settings(tmp_path / "own-controller")
    app = create_app(settings)
    app[HEARTBEAT] = HEARTBEAT_SECONDS
    with contextlib.ExitStack() as stack:
        stack.callback(end_processes_under, tmp_path)
        controller = stack.enter_context(serve_in_thread(app, settings))
        _watch_and_check(controller, world, home, watchers, window)


def _watch_and_check(
    controller: RunningController, world: DemoWorld, home: Path, watchers: int, window: float
) -> None:
    with Client(controller.url, token=controller.token) as client:
        task_id = start(client, world, home, [world.slow_node()])
        wait_until(
            lambda: client.progress(task_id)["state"] == "running_install_scripts",
            60,
            "the slow install.py to run",
        )
        url = f"{controller.url}/api/tasks/{task_id}/events"
        events: list[list[str]] = [[] for _ in range(watchers)]
        comments: list[list[str]] = [[] for _ in range(watchers)]

        async def watch_all() -> tuple[dict[str, int], dict[str, int]]:
            async with aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {controller.token}"}
            ) as session:
                before = controller.stats.snapshot()
                until = time.monotonic() + window
                await asyncio.gather(
                    *(_watch(session, url, until, events[i], comments[i]) for i in range(watchers))
                )
                return before, controller.stats.snapshot()

        started = time.monotonic()
        before, after = asyncio.run(watch_all())
        elapsed = time.monotonic() - started
        client.cancel(task_id)
    stats_calls = after["remote_stats"] - before["remote_stats"]
    reads = after["remote_reads"] - before["remote_reads"]
    intervals = elapsed / REFRESH_INTERVAL
    # One look at the instance per refresh interval for all 25 watchers together
    # (+2 for the intervals cut at the window's edges); unshared it would be 25 each.
    assert 1 <= stats_calls <= intervals + 2, (stats_calls, intervals)
    assert reads <= stats_calls
    for i in range(watchers):
        assert events[i][0] == "progress", events[i]  # the current document at once
        assert comments[i], "no heartbeat while the document was idle"
    print(f"{watchers} watchers, {elapsed:.1f} s: {stats_calls} stats, {reads} reads")


@pytest.mark.timeout(90)
def test_stream_ends_with_a_final_event_and_errors_are_json(
    controller: RunningController, world: DemoWorld, tmp_path: Path
) -> None:
    home = world.new_ui_home(tmp_path)
    with Client(controller.url, token=controller.token) as client:
        task_id = start(client, world, home, world.nodes()[:1])
        client.wait(task_id, timeout=60)

    async def read_stream(path: str) -> tuple[int, str, list[tuple[str, str]]]:
        async with (
            aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {controller.token}"}
            ) as session,
            session.get(controller.url + path) as response,
        ):
            if response.status != 200:
                return response.status, await response.text(), []
            found = [(e.event, e.data) async for e in iter_sse(response.content)]
            return response.status, "", found

    status, _, found = asyncio.run(
        asyncio.wait_for(read_stream(f"/api/tasks/{task_id}/events"), 30)
    )
    assert status == 200
    assert [name for name, _ in found] == ["final"]  # a finished task: one event, then the end
    body = json.loads(found[0][1])
    assert body["state"] == "completed" and body["task_id"] == task_id

    status, text, _ = asyncio.run(read_stream(f"/api/tasks/{uuid.uuid4()}/events"))
    assert status == 404 and json.loads(text)["error"] == "unknown_task"
    status, text, _ = asyncio.run(read_stream("/api/tasks/..%2F..%2Fetc%2Fpasswd/events"))
    assert status in (400, 404) and json.loads(text)["success"] is False


@pytest.mark.timeout(120)
def test_log_follow_reads_the_agent_log_live(
    controller: RunningController, world: DemoWorld, tmp_path: Path
) -> None:
    home = world.new_ui_home(tmp_path)
    tiles = next(n for n in world.nodes() if "Tiles" in n)

    async def follow() -> tuple[str, list[str], dict[str, Any]]:
        async with AsyncClient(controller.url, token=controller.token) as client:
            task_id = await client.start(
                "local",
                str(home),
                [tiles],
                python=str(world.sandbox.python),
                pip_args=world.sandbox.pip_args,
            )
            chunks: list[str] = []
            states: list[str] = []
            async for chunk in client.follow_logs(task_id, poll_interval=0.2):
                chunks.append(chunk.data)
                states.append((await client.progress(task_id))["state"])
            final = await client.progress(task_id)
            with pytest.raises(TaskNotFound):
                await client.logs(str(uuid.uuid4()))
            return "".join(chunks), states, final

    text, states, final = asyncio.run(follow())
    assert final["state"] == "completed"
    # The install.py's lines arrived in order, and some of them while it still ran.
    steps = [line for line in text.splitlines() if "install.py: preparing assets" in line]
    assert [s.rsplit(" ", 1)[-1] for s in steps] == ["1/4", "2/4", "3/4", "4/4"]
    assert "install.py: prepared the node" in text
    assert any(state != "completed" for state in states), "nothing was read while running"
