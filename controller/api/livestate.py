"""What the live views share across requests: the open WebSockets with their
task-list feed, and the open event streams. Built once by ``create_app`` (under
``appkeys``), so no route module makes app state and route order never matters."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from controller.common.errors import ControllerError
from controller.core.fleet import Fleets
from controller.core.service import TaskService

log = logging.getLogger(__name__)

#: Seconds between recomputations of the task list for ``tasks: all``.
LIST_INTERVAL = 1.0

Send = Callable[[dict[str, Any]], None]


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


class Sockets:
    """The open WebSockets (closed at shutdown) and the task list they share."""

    def __init__(self, feed: TaskListFeed) -> None:
        self.feed = feed
        self.open: set[web.WebSocketResponse] = set()


class OpenStreams:
    """The handler tasks of the event streams open now, to end them at shutdown."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[object]] = set()
