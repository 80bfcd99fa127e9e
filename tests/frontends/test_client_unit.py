"""The client against a scripted fake controller: retries, stream vs polling, timeouts,
error mapping. The real controller is exercised end to end in test_live.py."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

from controller.client import (
    AsyncClient,
    BadRequest,
    Client,
    Conflict,
    ControllerUnreachable,
    ServiceUnavailable,
    TaskNotFound,
    WaitTimeout,
)

pytestmark = pytest.mark.timeout(30)

TASK = str(uuid.uuid4())


def doc(state: str, processed: int = 0, *, final: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "success": True,
        "in_progress": not final,
        "completed": final,
        "task_id": TASK,
        "state": state,
        "total_nodes": 2,
        "processed": processed,
        "nodes": [],
        "stale": False,
    }
    return body


class FakeController:
    """Answers progress polls from a script; optionally streams events."""

    def __init__(self, *, events: list[Any] | None, polls: list[Any]) -> None:
        self.events = events  # None: no event route at all
        self.polls = list(polls)
        self.poll_count = 0
        self.event_requests = 0
        self.cancelled = False

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/ssh/install-custom-nodes/progress", self.progress)
        app.router.add_post("/ssh/install-custom-nodes", self.start)
        app.router.add_post("/api/tasks/{task_id}/cancel", self.cancel)
        if self.events is not None:
            app.router.add_get("/api/tasks/{task_id}/events", self.stream)
        return app

    async def start(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body["ui_home"] == "/busy":
            return web.json_response(
                {"success": False, "error": "conflict", "message": "busy", "task_id": TASK},
                status=409,
            )
        if body["ui_home"] == "relative":
            return web.json_response(
                {"success": False, "error": "invalid_request", "message": "ui_home: absolute"},
                status=400,
            )
        return web.json_response({"success": True, "task_id": TASK}, status=202)

    async def progress(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body["task_id"] != TASK:
            return web.json_response(
                {"success": False, "error": "unknown_task", "message": "no such task"}, status=404
            )
        self.poll_count += 1
        item = self.polls.pop(0) if len(self.polls) > 1 else self.polls[0]
        if isinstance(item, int):
            return web.json_response(
                {"success": False, "error": "unreachable", "message": "down"}, status=item
            )
        return web.json_response(item)

    async def cancel(self, request: web.Request) -> web.Response:
        self.cancelled = True
        return web.json_response(doc("cancelled", final=True))

    async def stream(self, request: web.Request) -> web.StreamResponse:
        self.event_requests += 1
        if request.match_info["task_id"] != TASK:
            return web.json_response(
                {"success": False, "error": "unknown_task", "message": "no such task"}, status=404
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        assert self.events is not None
        script = self.events if self.event_requests == 1 else self.events[-1:]
        for item in script:
            if item == "drop":
                return response  # the connection ends without a final event
            if item == "heartbeat":
                await response.write(b": heartbeat\n\n")
                continue
            name = "final" if item.get("completed") else "progress"
            await response.write(f"event: {name}\ndata: {json.dumps(item)}\n\n".encode())
            await asyncio.sleep(0.01)
        return response


async def served(aiohttp_server: Any, fake: FakeController) -> AsyncClient:
    server = await aiohttp_server(fake.app())
    return AsyncClient(str(server.make_url("/")), retry_delay=0.01)


async def test_wait_follows_the_event_stream_without_polling(aiohttp_server: Any) -> None:
    fake = FakeController(
        events=[doc("cloning"), "heartbeat", doc("cloning", 1), doc("completed", 2, final=True)],
        polls=[doc("cloning")],
    )
    seen: list[str] = []
    async with await served(aiohttp_server, fake) as client:
        final = await client.wait(TASK, on_progress=lambda d: seen.append(d["state"]))
    assert final["state"] == "completed"
    assert seen == ["cloning", "cloning", "completed"]
    assert fake.poll_count == 0


async def test_wait_reconnects_after_a_dropped_stream(aiohttp_server: Any) -> None:
    fake = FakeController(
        events=[doc("cloning"), "drop", doc("completed", 2, final=True)],
        polls=[doc("cloning", 1)],
    )
    async with await served(aiohttp_server, fake) as client:
        final = await client.wait(TASK, poll_interval=0.05)
    assert final["completed"] is True
    assert fake.event_requests == 2
    assert fake.poll_count == 1


async def test_wait_polls_when_there_is_no_event_stream_and_survives_503(
    aiohttp_server: Any,
) -> None:
    fake = FakeController(
        events=None,
        polls=[503, 503, 503, 503, 503, doc("cloning", 1), 503, doc("completed", 2, final=True)],
    )
    states: list[str] = []

    async def record(document: dict[str, Any]) -> None:  # coroutine callbacks work too
        states.append(document["state"])

    async with await served(aiohttp_server, fake) as client:
        final = await client.wait(TASK, on_progress=record, poll_interval=0.01)
        assert client.events_supported is False
    assert final["state"] == "completed"
    assert states == ["cloning", "completed"]
    assert fake.poll_count == 8


async def test_wait_times_out_clearly_and_can_cancel(aiohttp_server: Any) -> None:
    fake = FakeController(events=None, polls=[doc("cloning", 1)])
    async with await served(aiohttp_server, fake) as client:
        with pytest.raises(WaitTimeout) as caught:
            await client.wait(TASK, timeout=0.3, poll_interval=0.05)
        assert "did not finish within 0.3 s" in str(caught.value)
        assert caught.value.last is not None and caught.value.last["state"] == "cloning"
        cancelled_yet = fake.cancelled  # (a local: the attribute changes below)
        assert not cancelled_yet
        with pytest.raises(WaitTimeout) as caught:
            await client.wait(TASK, timeout=0.3, poll_interval=0.05, cancel_on_timeout=True)
    assert fake.cancelled
    assert caught.value.cancelled
    assert caught.value.last is not None and caught.value.last["state"] == "cancelled"


async def test_errors_map_to_the_hierarchy(aiohttp_server: Any) -> None:
    fake = FakeController(events=[doc("cloning")], polls=[503])
    async with await served(aiohttp_server, fake) as client:
        with pytest.raises(Conflict) as conflict:
            await client.start("local", "/busy", ["https://example.invalid/a/b"])
        assert conflict.value.task_id == TASK and conflict.value.status == 409
        with pytest.raises(BadRequest) as bad:
            await client.start("local", "relative", ["https://example.invalid/a/b"])
        assert bad.value.message == "ui_home: absolute"
        with pytest.raises(TaskNotFound):
            await client.progress(str(uuid.uuid4()))
        with pytest.raises(TaskNotFound):
            await client.wait(str(uuid.uuid4()), timeout=5)
        with pytest.raises(ServiceUnavailable):
            await client.progress(TASK)
        assert fake.poll_count == 4  # the first try and three retries
    unreachable = AsyncClient("http://127.0.0.1:9", retries=1, retry_delay=0.01)
    async with unreachable:
        with pytest.raises(ControllerUnreachable, match="cannot reach the controller"):
            await unreachable.progress(TASK)


@pytest.fixture
def threaded_fake() -> Iterator[tuple[str, FakeController]]:
    """The fake served from its own thread and loop, for the blocking client."""
    fake = FakeController(
        events=[doc("cloning"), doc("completed", 2, final=True)], polls=[doc("cloning")]
    )
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(fake.app())
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    host, port = runner.addresses[0][:2]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{port}", fake
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_sync_client(threaded_fake: tuple[str, FakeController]) -> None:
    url, _fake = threaded_fake
    seen: list[str] = []
    with Client(url) as client:
        task_id = client.start("local", "/ComfyUI", ["https://example.invalid/a/b"])
        assert task_id == TASK
        assert client.progress(task_id)["state"] == "cloning"
        final = client.wait(task_id, on_progress=lambda d: seen.append(d["state"]))
    assert final["state"] == "completed"
    assert seen == ["cloning", "completed"]
