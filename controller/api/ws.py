"""``GET /api/ws``: one WebSocket, many subscriptions.

Why next to the event stream: a browser opens about six HTTP/1.1 connections per
host and every event stream holds one, so a dashboard following fifty installs
needs one socket for all of them. The event stream stays for ``curl -N`` and
existing clients; both send the same documents.

Client messages (JSON text frames):

- ``{"op": "auth", "token": T}`` — first, when the controller has a token and
  the URL carries no ``?token=`` (nor the request an ``Authorization`` header);
- ``{"op": "subscribe", "task_id": ID}`` / ``{"op": "unsubscribe", "task_id": ID}``;
- ``{"op": "subscribe", "tasks": "all"}`` / ``{"op": "unsubscribe", "tasks": "all"}``.

Server messages:

- ``{"type": "ready"}`` once the socket is authorised;
- ``{"type": "progress", "task_id", "progress": BODY}`` first and on every change,
  then ``{"type": "final", "task_id", "progress": BODY}``, which ends that
  subscription (BODY is what the event stream and ``POST …/progress`` send);
- ``{"type": "tasks", "tasks": [SUMMARY, …]}`` on ``tasks: all``, then
  ``{"type": "task", "task": SUMMARY}`` for a new or changed task and
  ``{"type": "task_removed", "task_id"}`` (a SUMMARY is an entry of ``GET
  /api/tasks``, with ``fleet_id`` when it belongs to a fleet);
- ``{"type": "error", "error": CODE, "message", "task_id"?}`` for a bad message
  or a subscription that cannot be served (``unknown_task``, …).

Each subscription follows its task through ``TaskService.watch``, the same
shared, single-flight read the event stream uses: a hundred subscribers of one
task cost one reader. The task list is computed once per interval for every
socket that asked for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections.abc import AsyncGenerator, Callable
from typing import Any, cast
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web

from controller.api.appkeys import FLEETS, SERVICE, SETTINGS
from controller.common.config import Settings
from controller.common.errors import ControllerError
from controller.core.fleet import Fleets
from controller.core.service import TaskService, TaskView
from protocol import ProtocolError
from protocol import fields as checks

log = logging.getLogger(__name__)

#: Seconds a socket may take to send its auth message.
AUTH_TIMEOUT = 10.0
#: Subscriptions one socket may hold: more tasks than one controller keeps.
MAX_SUBSCRIPTIONS = 5000
#: Messages waiting for a client that does not read; beyond this it is cut off.
MAX_OUTBOX = 20000
#: Seconds between recomputations of the task list for ``tasks: all``.
LIST_INTERVAL = 1.0
#: Close code for a refused token (4000-4999 are the application's own).
CLOSE_UNAUTHORIZED = 4401
MAX_MESSAGE_BYTES = 64 * 1024

Send = Callable[[dict[str, Any]], None]


# -- auth: one small function, on the API's token ----------------------------------


def authorized(settings: Settings, request: web.Request, given: str | None) -> bool:
    """Whether this socket may use the API: the API token (``settings.token``) from
    the auth message, ``?token=`` or a bearer header, as for every other route."""
    if not settings.token:
        return True
    candidates = [given, request.query.get("token")]
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        candidates.append(header[7:].strip())
    return any(
        c is not None and hmac.compare_digest(c.encode(), settings.token.encode())
        for c in candidates
    )


# -- the shared task list --------------------------------------------------------------


class TaskListFeed:
    """``GET /api/tasks`` for every socket that subscribed to ``tasks: all``:
    computed once per interval while anyone listens; only changes are sent."""

    def __init__(self, service: TaskService, fleets: Fleets) -> None:
        self.service = service
        self.fleets = fleets
        self.listeners: set[Send] = set()
        self._last: dict[str, dict[str, Any]] | None = None
        self._runner: asyncio.Task[None] | None = None

    async def current(self) -> list[dict[str, Any]]:
        # The newest page, from the registry's summary columns (no stored document
        # is parsed); the runner below computes one listing at a time.
        summaries: list[dict[str, Any]] = (await self.service.list_tasks())["tasks"]
        fleet_of = await self.fleets.task_fleets()
        for summary in summaries:
            summary["fleet_id"] = fleet_of.get(summary["task_id"])
        return summaries

    async def join(self, send: Send) -> list[dict[str, Any]]:
        self.listeners.add(send)
        if self._runner is None or self._runner.done():
            self._last = None
            self._runner = asyncio.create_task(self._run())
        return await self.current()

    def leave(self, send: Send) -> None:
        self.listeners.discard(send)

    async def _run(self) -> None:
        while self.listeners:
            try:
                now = {s["task_id"]: s for s in await self.current()}
            except ControllerError:
                log.exception("the task list could not be read")
                now = self._last or {}
            if self._last is not None:
                changed = [s for task_id, s in now.items() if self._last.get(task_id) != s]
                removed = [task_id for task_id in self._last if task_id not in now]
                for send in list(self.listeners):
                    for summary in changed:
                        send({"type": "task", "task": summary})
                    for task_id in removed:
                        send({"type": "task_removed", "task_id": task_id})
            self._last = now
            await asyncio.sleep(LIST_INTERVAL)

    async def close(self) -> None:
        self.listeners.clear()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner


class _Sockets:
    def __init__(self, feed: TaskListFeed) -> None:
        self.feed = feed
        self.open: set[web.WebSocketResponse] = set()


_SOCKETS = web.AppKey("websockets", _Sockets)


# -- one socket --------------------------------------------------------------------------


def progress_message(task_id: str, view: TaskView) -> dict[str, Any]:
    kind = "final" if view.progress.is_final else "progress"
    return {"type": kind, "task_id": task_id, "progress": view.response()}


def error_message(code: str, message: str, task_id: object = None) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "error", "error": code, "message": message}
    if isinstance(task_id, str):
        body["task_id"] = task_id
    return body


class Session:
    """The subscriptions of one socket and the one task that writes to it."""

    def __init__(self, ws: web.WebSocketResponse, service: TaskService, feed: TaskListFeed):
        self.ws = ws
        self.service = service
        self.feed = feed
        self.outbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.follows: dict[str, asyncio.Task[None]] = {}
        self.listing = False

    def send(self, message: dict[str, Any]) -> None:
        if self.outbox.qsize() >= MAX_OUTBOX:
            # A client that stopped reading must not grow our memory without end.
            self.outbox.put_nowait(None)
            return
        self.outbox.put_nowait(message)

    async def writer(self) -> None:
        while True:
            message = await self.outbox.get()
            if message is None:
                await self.ws.close(code=1008, message=b"too many unread messages")
                return
            await self.ws.send_str(json.dumps(message, separators=(",", ":")))

    async def handle(self, data: str) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            self.send(error_message("invalid_request", "a message must be a JSON object"))
            return
        if not isinstance(message, dict):
            self.send(error_message("invalid_request", "a message must be a JSON object"))
            return
        op = message.get("op")
        if op == "auth":
            return  # already authorised: a repeated auth changes nothing
        if op not in ("subscribe", "unsubscribe"):
            self.send(
                error_message(
                    "invalid_request",
                    "op must be 'subscribe', 'unsubscribe' or 'auth'",
                    message.get("task_id"),
                )
            )
            return
        if "tasks" in message:
            if message["tasks"] != "all":
                self.send(error_message("invalid_request", "tasks: the only value is 'all'"))
            elif op == "subscribe":
                await self._list()
            else:
                self.feed.leave(self.send)
                self.listing = False
            return
        raw = message.get("task_id")
        try:
            task_id = checks.task_id(raw)
        except ProtocolError as exc:
            self.send(error_message("invalid_request", f"task_id: {exc.message}", raw))
            return
        if op == "unsubscribe":
            follow = self.follows.pop(task_id, None)
            if follow is not None:
                follow.cancel()
            return
        if task_id in self.follows:
            return  # one subscription per task and socket
        if len(self.follows) >= MAX_SUBSCRIPTIONS:
            self.send(
                error_message(
                    "too_many_subscriptions",
                    f"a socket follows at most {MAX_SUBSCRIPTIONS} tasks; unsubscribe some",
                    task_id,
                )
            )
            return
        self.follows[task_id] = asyncio.create_task(self._follow(task_id))

    async def _list(self) -> None:
        if self.listing:
            return
        self.listing = True
        try:
            tasks = await self.feed.join(self.send)
        except ControllerError as exc:
            self.send(error_message(exc.code, exc.message))
            return
        self.send({"type": "tasks", "tasks": tasks})

    async def _follow(self, task_id: str) -> None:
        watcher = cast(AsyncGenerator[TaskView | None, None], self.service.watch(task_id))
        try:
            async for view in watcher:
                if view is not None:
                    self.send(progress_message(task_id, view))
        except ControllerError as exc:
            self.send(error_message(exc.code, exc.message, task_id))
        except Exception:
            log.exception("following task %s for a WebSocket failed", task_id)
            self.send(error_message("internal", "internal error following the task", task_id))
        finally:
            with contextlib.suppress(Exception):
                await watcher.aclose()
            if self.follows.get(task_id) is asyncio.current_task():
                del self.follows[task_id]

    async def close(self) -> None:
        self.feed.leave(self.send)
        follows = list(self.follows.values())
        for follow in follows:
            follow.cancel()
        await asyncio.gather(*follows, return_exceptions=True)


async def _authenticate(ws: web.WebSocketResponse, request: web.Request) -> bool:
    settings = request.app[SETTINGS]
    if authorized(settings, request, None):
        return True
    try:
        first = await ws.receive(timeout=AUTH_TIMEOUT)
    except asyncio.TimeoutError:
        first = None
    given = None
    if first is not None and first.type == WSMsgType.TEXT:
        with contextlib.suppress(ValueError):
            message = json.loads(first.data)
            if isinstance(message, dict) and message.get("op") == "auth":
                token = message.get("token")
                given = token if isinstance(token, str) else None
    if given is not None and authorized(settings, request, given):
        return True
    await ws.send_str(
        json.dumps(
            error_message(
                "unauthorized",
                'missing or wrong API token: send {"op": "auth", "token": …} first, '
                "or connect with ?token=",
            )
        )
    )
    await ws.close(code=CLOSE_UNAUTHORIZED, message=b"unauthorized")
    return False


def same_origin(request: web.Request) -> bool:
    """A browser's socket only from this controller's own pages: WebSockets are not
    bound by CORS, so another site's page could otherwise read progress here."""
    origin = request.headers.get("Origin")
    return not origin or urlsplit(origin).netloc.lower() == request.host.lower()


async def websocket(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    if not same_origin(request):
        raise web.HTTPForbidden(text="a WebSocket from another site's page is refused")
    ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=MAX_MESSAGE_BYTES)
    await ws.prepare(request)
    sockets = request.app[_SOCKETS]
    sockets.open.add(ws)
    session = Session(ws, request.app[SERVICE], sockets.feed)
    writer = asyncio.create_task(session.writer())
    try:
        if not await _authenticate(ws, request):
            return ws
        session.send({"type": "ready", "auth": bool(settings.token)})
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                await session.handle(message.data)
            elif message.type == WSMsgType.BINARY:
                session.send(error_message("invalid_request", "send JSON text messages"))
            else:
                break
    except asyncio.CancelledError:
        pass  # shutting down, or the client went away
    finally:
        sockets.open.discard(ws)
        await session.close()
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionResetError):
            await writer
        with contextlib.suppress(ConnectionResetError):
            await ws.close()
    return ws


async def _close_sockets(app: web.Application) -> None:
    """Open sockets would hold a graceful shutdown for its whole timeout: close them."""
    sockets = app[_SOCKETS]
    await sockets.feed.close()
    for ws in list(sockets.open):
        with contextlib.suppress(Exception):
            await ws.close(code=1001, message=b"controller shutting down")


def add_routes(app: web.Application) -> None:
    app[_SOCKETS] = _Sockets(TaskListFeed(app[SERVICE], app[FLEETS]))
    app.on_shutdown.append(_close_sockets)
    app.router.add_get("/api/ws", websocket, name="websocket")
