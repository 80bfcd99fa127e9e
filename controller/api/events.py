"""``GET /api/tasks/{id}/events``: a task's progress pushed as Server-Sent Events.

Why SSE as well as the WebSocket (``ws``): the traffic is one-way, it is plain
HTTP (proxies, ``curl -N`` and the token header work as for any other request),
and existing clients use it. The dashboard uses the WebSocket: one connection for
every card, where each stream holds one of a browser's ~6 per host.

The stream sends

- ``event: progress`` with the progress body (the shape of
  ``POST /ssh/install-custom-nodes/progress``) first and whenever it changes,
- ``event: final`` with the last body, after which the server closes the stream,
- a ``: heartbeat`` comment after ``heartbeat`` seconds without a change, so
  clients and proxies know the stream is alive.

Every watcher follows the task through ``TaskService.watch``, which shares one
cached, single-flight read per refresh interval among all readers of a task: a
hundred open dashboards cost the instance what one does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator
from typing import cast

from aiohttp import web

from controller.api.appkeys import SERVICE, STREAMS
from controller.core.service import TaskView
from protocol import utc_now

#: Seconds without a change before a heartbeat comment; tests lower it.
HEARTBEAT = web.AppKey("events_heartbeat", float)
DEFAULT_HEARTBEAT = 15.0
#: How long a browser waits before reconnecting a dropped stream, in ms.
RETRY_MS = 2000


def format_event(event: str, data: str, event_id: int | None = None) -> bytes:
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.extend(f"data: {line}" for line in data.splitlines() or [""])
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def view_event(view: TaskView) -> bytes:
    final = view.progress.is_final
    body = json.dumps(view.response(), separators=(",", ":"), sort_keys=True)
    return format_event("final" if final else "progress", body, view.version)


async def task_events(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE]
    heartbeat = request.app.get(HEARTBEAT, DEFAULT_HEARTBEAT)
    watcher = cast(
        AsyncGenerator[TaskView | None, None],
        service.watch(request.match_info["task_id"], heartbeat=heartbeat),
    )
    try:
        # The first view comes before the response starts, so a bad or unknown
        # task id is still answered as a JSON error (400/404) by the middleware.
        first = await anext(watcher)
    except BaseException:
        await watcher.aclose()
        raise
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            # nginx and friends must pass events through as they come.
            "X-Accel-Buffering": "no",
        }
    )
    streams = request.app[STREAMS].tasks
    current = asyncio.current_task()
    if current is not None:
        streams.add(current)
    try:
        await response.prepare(request)
        await response.write(f"retry: {RETRY_MS}\n\n".encode())
        view = first
        while True:
            if view is None:
                await response.write(f": heartbeat {utc_now()}\n\n".encode())
            else:
                await response.write(view_event(view))
                if view.progress.is_final:
                    break
            if request.transport is None or request.transport.is_closing():
                break
            try:
                view = await anext(watcher)
            except StopAsyncIteration:
                break
    except (ConnectionResetError, asyncio.CancelledError):
        # The client went away, or the app is shutting down: nothing to tell anyone.
        pass
    finally:
        await watcher.aclose()
        if current is not None:
            streams.discard(current)
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response


async def close_streams(app: web.Application) -> None:
    """Open streams would hold a graceful shutdown for its whole timeout: end them."""
    for task in list(app[STREAMS].tasks):
        task.cancel()


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/tasks/{task_id}/events", task_events, name="task_events")
