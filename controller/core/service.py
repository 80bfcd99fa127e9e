"""The task service: the one object the API and the CLI use to start installs,
serve their progress, cancel, read logs, list and clean up tasks.

A thin facade: starting and cancelling live in ``launcher``, reading progress
and logs in ``reader``, the periodic jobs and cleanup in ``retention``, the queue
and limits in ``scheduler``, retries in ``retry``, locks, snapshots and diffs in
``locks``, what to install in ``sources``; they share the in-memory tasks of
``live``. Everything blocking (SSH, SFTP, SQLite)
runs in the executor the app owns.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from typing import Any

from controller.common.config import Settings
from controller.common.stats import Stats
from controller.common.target import Target, parse_target
from controller.core import history, ready
from controller.core.access import check_start
from controller.core.launcher import Launcher, Prepared
from controller.core.live import Tasks, TaskView
from controller.core.locks import Locks
from controller.core.reader import DEFAULT_PAGE, LOG_DEFAULT_LIMIT, Reader
from controller.core.registry import Registry
from controller.core.retention import Retention
from controller.core.retry import Retrier
from controller.core.scheduler import Admission
from controller.core.schemas import DiffRequest, InstallRequest, ReadyRequest, ResolveRequest
from controller.core.sources.merge import Sources
from controller.core.sources.resolver import Selection
from controller.core.sources.service import SourceService
from controller.transports import Transports
from protocol import Progress
from protocol.lock import Lock

__all__ = ["LOG_DEFAULT_LIMIT", "Admission", "TaskService", "TaskView"]

#: Seconds between looks at a shared registry's queue (a task finished through
#: another controller frees a slot that no hook here hears of).
SHARED_QUEUE_INTERVAL = 1.0


class TaskService:
    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        transports: Transports,
        executor: Executor,
        stats: Stats,
    ) -> None:
        self.registry = registry
        self.tasks = Tasks(settings, registry, transports, executor, stats)
        # The in-memory tasks by id; tests look at one task's state through it.
        self._live = self.tasks.live
        self.sources = SourceService(settings, transports, self.tasks.run)
        self.launcher = Launcher(self.tasks, self.sources)
        self.scheduler = self.launcher.scheduler
        self.reader = Reader(self.tasks)
        self.launcher.read_progress = self._progress_of
        self.retention = Retention(self.tasks, self.reader)
        self.retrier = Retrier(self.tasks, self.launcher)
        self.locks = Locks(self.tasks, self.reader)

    async def start_jobs(self) -> None:
        """Resume tasks a previous run left unfinished, then start the periodic jobs."""
        await self.follow_unfinished()
        # A launch the agent never confirmed is launched again (once: the agent
        # refuses a task it already has); with a shared registry, once its lease ran out.
        await self.scheduler.take_over()
        # Queued tasks wait in the registry across restarts: start those whose turn it is.
        await self.scheduler.pump()
        settings = self.tasks.settings
        extra: list[tuple[float, Callable[[], Any]]] = [
            (settings.monitor_interval, self.scheduler.take_over)
        ]
        if self.registry.db.shared:
            # Other controllers start tasks and finish them: follow every unfinished
            # task (so none is left unwatched when its controller dies) and look at
            # the queue often, since a slot freed elsewhere wakes no hook here.
            extra += [
                (settings.monitor_interval, self.follow_unfinished),
                (SHARED_QUEUE_INTERVAL, self._poll_queue),
            ]
        self.retention.start_jobs(extra)

    async def follow_unfinished(self) -> None:
        """Follow every unfinished task of the registry this controller does not yet."""
        for record in await self.tasks.run(self.registry.unfinished):
            self.tasks.remember(record)

    async def _poll_queue(self) -> None:
        if await self.tasks.run(self.registry.has_queued):
            await self.scheduler.pump()

    async def close(self) -> None:
        self.scheduler.close()
        await self.retention.close()
        await self.tasks.close()

    async def start(self, request: InstallRequest) -> str:
        """Register a task and launch (or queue) it in the background; returns its id."""
        return (await self.launcher.start(request)).task_id

    async def admit(
        self,
        request: InstallRequest,
        *,
        queue: bool | None = None,
        auto_retry: int | None = None,
    ) -> Admission:
        """Start an install now or queue it, at once: ``Admission.state`` says which
        (``starting`` or ``queued``, with ``queue_position``). ``queue`` and
        ``auto_retry`` default to the request's. Raises ``Conflict`` (a busy home)
        or ``TooManyTasks`` (a limit) when it neither starts nor may queue."""
        return await self.launcher.start(request, queue=queue, auto_retry=auto_retry)

    async def retry(
        self, task_id: object, *, queue: bool = False, auto_retry: int | None = None
    ) -> Admission:
        """A new task with the nodes of ``task_id`` that failed or were cancelled."""
        return await self.retrier.retry(task_id, queue=queue, auto_retry=auto_retry)

    async def history(
        self,
        *,
        target: str | None = None,
        ui_home: str | None = None,
        limit: int = history.DEFAULT_LIMIT,
        before: str | None = None,
    ) -> dict[str, Any]:
        return await history.history(
            self.tasks, target=target, ui_home=ui_home, limit=limit, before=before
        )

    async def ready(self, request: ReadyRequest) -> dict[str, Any]:
        """Ask the instance's running ComfyUI for the workflow's classes (no restart)."""
        return await ready.ask(self.tasks, request)

    async def _progress_of(self, task_id: str) -> tuple[Progress, dict[str, Any]]:
        view = await self.reader.progress(task_id)
        live = await self.tasks.get(task_id)
        return view.progress, dict(live.record.spec)

    async def plan(self, request: InstallRequest) -> Admission:
        """Start a plan: what an install of ``request`` would change, changing nothing."""
        prepared = await self.launcher.prepare(request, mode="plan")
        # A plan is made again, not retried: nothing of it is transient to wait out.
        return await self.launcher.admit(prepared, request, auto_retry=0)

    async def prepare(self, request: InstallRequest) -> Prepared:
        """Check and resolve a start without registering it (for many at once)."""
        return await self.launcher.prepare(request)

    async def admit_prepared(self, prepared: Prepared, request: InstallRequest) -> Admission:
        """Register what :meth:`prepare` checked: started, queued or refused, as
        :meth:`admit` (the queue and the limits apply)."""
        return await self.launcher.admit(prepared, request)

    async def resolve(self, request: ResolveRequest) -> Selection:
        """The dry run: what a start with these sources would install, and why."""
        target = (
            parse_target(request.ssh_connection, self.tasks.settings)
            if request.ssh_connection
            else None
        )
        if target is not None:
            # Reading 'local' files at a path the request names is opt-in too.
            check_start(self.tasks.settings, target)
        sources = Sources(request.nodes, request.workflow, request.snapshot)
        return await self.sources.selection(sources, target, request.ui_home if target else None)

    async def progress(self, task_id: object, target: Target | None = None) -> TaskView:
        """The task's current view: shared, cached, single-flight (see ``reader``)."""
        return await self.reader.progress(task_id, target)

    def watch(
        self, task_id: object, *, heartbeat: float | None = None
    ) -> AsyncIterator[TaskView | None]:
        """The task's view now and whenever it changes, until it is final."""
        return self.reader.watch(task_id, heartbeat=heartbeat)

    async def cancel(self, task_id: object) -> TaskView:
        return await self.launcher.cancel(task_id)

    async def read_log(
        self, task_id: object, offset: int = 0, limit: int = LOG_DEFAULT_LIMIT
    ) -> dict[str, Any]:
        return await self.reader.read_log(task_id, offset, limit)

    async def list_tasks(
        self, limit: int = DEFAULT_PAGE, cursor: str | None = None, prefix: str | None = None
    ) -> dict[str, Any]:
        """``{"tasks": [summary, …], "next_cursor"}``, newest first; with ``prefix``,
        only the tasks whose id starts with it."""
        return await self.reader.list_tasks(limit, cursor, prefix)

    async def lock(self, task_id: object) -> Lock:
        """The lock a finished task wrote (see ``locks``)."""
        return await self.locks.lock(task_id)

    async def snapshot(self, task_id: object) -> dict[str, Any]:
        return await self.locks.snapshot(task_id)

    async def diff(self, request: DiffRequest) -> dict[str, Any]:
        """What differs on an instance from a lock; changes nothing there."""
        return await self.locks.diff(request)

    async def refresh_running(self) -> None:
        await self.retention.refresh_running()

    async def cleanup(self, now: float | None = None) -> list[str]:
        return await self.retention.cleanup(now)
