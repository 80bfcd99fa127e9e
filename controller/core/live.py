"""What the controller holds in memory about the tasks it follows, and the
plumbing every part of the task service shares: the executor, background tasks,
and publishing a new view (persist it, wake the watchers)."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from controller.common.config import Settings
from controller.common.errors import ExpiredTask, InvalidRequest, UnknownTask
from controller.common.stats import Stats
from controller.common.target import Target
from controller.core.registry import Registry, TaskRecord
from controller.ssh.executor import HostLimitedExecutor
from controller.transports import FileStat, Transports
from protocol import InstallSpec, NodeProgress, Progress, ProtocolError, utc_now
from protocol import fields as checks
from protocol.api import progress_response

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Seconds between registry writes of a document whose milestones did not change.
PERSIST_INTERVAL = 10.0


@dataclass
class TaskView:
    """What the controller knows of a task at one moment."""

    progress: Progress
    #: True when this is the last known document because the instance is unreachable.
    stale: bool
    #: When the document was read (controller clock, UTC ISO 8601).
    read_at: str
    #: Grows by one whenever the document changes; watchers compare it.
    version: int
    target: Target
    #: Why the view is stale.
    problem: str | None = None
    #: The error code a stale view is answered with: ``unreachable``, or
    #: ``unreadable_progress`` when the instance answered with a broken document.
    problem_code: str = "unreachable"
    #: What the controller adds to the agent's document: the queue position of a
    #: queued task, retry links, the resolution (the selected nodes). Shared with the task's
    #: ``Live``, so it is current.
    annotations: dict[str, Any] = field(default_factory=dict)

    def response(self) -> dict[str, Any]:
        """The seed-compatible progress body."""
        body = progress_response(self.progress, stale=self.stale)
        body["target"] = str(self.target)
        body["read_at"] = self.read_at
        body.update(self.annotations)
        return body


@dataclass
class Live:
    """In-memory state of one task."""

    record: TaskRecord
    view: TaskView
    read_mono: float = 0.0
    inflight: asyncio.Task[TaskView] | None = None
    launch: asyncio.Task[None] | None = None
    #: (mtime, size) at the last full read, and when that read happened.
    read_signature: FileStat | None = None
    read_signature_mono: float = 0.0
    #: When the current (mtime, size) was first seen.
    signature_seen: FileStat | None = None
    signature_seen_mono: float = 0.0
    #: When the document last changed, by the controller's clock.
    changed_mono: float = field(default_factory=time.monotonic)
    #: When the record was last read again from the registry (see ``Tasks.sync``).
    synced_mono: float = field(default_factory=time.monotonic)
    liveness_mono: float = 0.0
    #: What was last written to the registry, and when.
    persisted_milestone: tuple[Any, ...] = ()
    persisted_mono: float = 0.0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    #: See ``TaskView.annotations``.
    annotations: dict[str, Any] = field(default_factory=dict)


def starting_document(record: TaskRecord) -> Progress:
    spec = InstallSpec.from_dict(record.spec)
    progress = Progress(task_id=record.task_id, ui_home=spec.ui_home)
    progress.nodes = [
        NodeProgress(name=node.dir_name, url=node.url, ref=node.ref) for node in spec.nodes
    ]
    progress.recount()
    return progress


def queued_document(record: TaskRecord) -> Progress:
    """What a queued task reads as: in progress, ``current_status`` ``queued``."""
    progress = starting_document(record)
    progress.state = progress.current_status = "queued"
    return progress


def retry_annotations(record: TaskRecord) -> dict[str, Any]:
    return {
        "attempt": record.attempt,
        "retry_of": record.retry_of,
        "retried_by": record.retried_by,
        "auto_retry": record.auto_retry,
    }


def _milestone(progress: Progress) -> tuple[Any, ...]:
    """The parts of a document worth persisting at once when they change."""
    return (
        progress.state,
        progress.processed,
        progress.current_node,
        progress.requirements_status,
        tuple(node.status for node in progress.nodes),
    )


def failed_document(base: Progress, error_code: str, message: str) -> Progress:
    failed = Progress.from_dict(base.to_dict())
    failed.state = "failed"
    failed.error = message
    failed.error_code = error_code
    failed.finished_at = failed.updated_at = utc_now()
    failed.current_node = failed.current_status = None
    return failed


class Tasks:
    """The tasks this controller follows, and what the launcher, the reader and
    retention share to work on them."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        transports: Transports,
        executor: Executor,
        stats: Stats,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.transports = transports
        self.executor = executor
        self.stats = stats
        self.live: dict[str, Live] = {}
        #: Who this controller is in the registry (``owner`` of the launches it claims).
        self.replica = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._background: set[asyncio.Task[Any]] = set()
        #: SSH work runs apart, so unresponsive hosts cannot starve the rest.
        self.ssh = HostLimitedExecutor(settings.ssh_threads, settings.ssh_jobs_per_host)
        #: Called (synchronously, so they may only schedule work) when a task
        #: reaches a final state: the queue starts the next one, retries follow.
        self.on_final: list[Callable[[Live], None]] = []

    async def run(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``function`` in the executor: everything blocking (SSH, SFTP, SQLite)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.executor, functools.partial(function, *args, **kwargs)
        )

    async def run_on(
        self, target: Target, function: Callable[..., T], *args: Any, **kwargs: Any
    ) -> T:
        """``function`` that reaches ``target``: SSH targets on the SSH executor."""
        if target.kind == "ssh":
            return await self.ssh.run(target.key, function, *args, **kwargs)
        return await self.run(function, *args, **kwargs)

    def spawn(self, coroutine: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        self.ssh.shutdown()

    def remember(self, record: TaskRecord) -> Live:
        live = self.live.get(record.task_id)
        if live is None:
            progress = record.progress or starting_document(record)
            annotations = retry_annotations(record)
            if record.resolution is not None:
                # How a workflow, snapshot or registry ids became the node list.
                annotations["resolution"] = record.resolution
            view = TaskView(progress, False, utc_now(), 0, record.target, annotations=annotations)
            live = Live(record=record, view=view, annotations=annotations)
            self.live[record.task_id] = live
        return live

    def annotate(self, live: Live, **values: Any) -> None:
        """Change what the controller adds to the task's view; wakes its watchers."""
        if all(live.annotations.get(k, object()) == v for k, v in values.items()):
            return
        live.annotations.update(values)
        previous = live.view
        live.view = TaskView(
            previous.progress,
            previous.stale,
            previous.read_at,
            previous.version + 1,
            previous.target,
            previous.problem,
            problem_code=previous.problem_code,
            annotations=live.annotations,
        )
        event, live.changed = live.changed, asyncio.Event()
        event.set()

    def forget_finished(self, older_than: float) -> None:
        """Drop final tasks nobody read for ``older_than`` seconds from memory: the
        registry has them, and memory must not grow with every task ever read."""
        now = time.monotonic()
        for task_id, live in list(self.live.items()):
            if (
                live.view.progress.is_final
                and now - max(live.read_mono, live.changed_mono) > older_than
                and (live.launch is None or live.launch.done())
                and live.inflight is None
            ):
                del self.live[task_id]

    async def get(self, task_id: object) -> Live:
        """The task, validated and loaded from the registry when not in memory."""
        try:
            task_id = checks.task_id(task_id)
        except ProtocolError as exc:
            raise InvalidRequest("task_id", exc.message) from None
        live = self.live.get(task_id)
        if live is None:
            record = await self.run(self.registry.get, task_id)
            if record is None:
                if await self.run(self.registry.is_pruned, task_id):
                    raise ExpiredTask(task_id)
                raise UnknownTask(task_id)
            live = self.remember(record)
        return live

    async def publish(
        self,
        live: Live,
        progress: Progress,
        *,
        stale: bool = False,
        problem: str | None = None,
        problem_code: str = "unreachable",
        persist: bool = True,
    ) -> TaskView:
        """Install a new view; persist (unless the registry already has it) and wake
        watchers when the document changed."""
        previous = live.view
        changed = progress.to_dict() != previous.progress.to_dict()
        version = previous.version + 1 if changed or stale != previous.stale else previous.version
        live.view = TaskView(
            progress,
            stale,
            utc_now(),
            version,
            live.record.target,
            problem,
            problem_code=problem_code,
            annotations=live.annotations,
        )
        live.read_mono = time.monotonic()
        if changed:
            live.changed_mono = live.read_mono
            record = live.record
            record.progress = progress
            record.state = progress.state
            if progress.is_final and record.finished_at is None:
                record.finished_at = time.time()
            # Heartbeats change the document every second or two; the registry only
            # needs what a restarted controller would show before its first read.
            milestone = _milestone(progress)
            if not persist:
                live.persisted_milestone, live.persisted_mono = milestone, live.read_mono
            elif (
                milestone != live.persisted_milestone
                or live.read_mono - live.persisted_mono >= PERSIST_INTERVAL
            ):
                live.persisted_milestone, live.persisted_mono = milestone, live.read_mono
                await self.run(
                    self.registry.save_progress,
                    record.task_id,
                    progress,
                    record.finished_at,
                    record.launched,
                )
        if version != previous.version:
            event, live.changed = live.changed, asyncio.Event()
            event.set()
        if progress.is_final and not previous.progress.is_final:
            for hook in self.on_final:
                try:
                    hook(live)
                except Exception:
                    log.exception("a final-state hook failed for task %s", live.record.task_id)
        return live.view

    async def sync(self, live: Live) -> None:
        """Read a task this controller does not drive again from the registry, at most
        once a refresh interval: another controller sharing it may have started a
        queued task, confirmed a launch, or cancelled it."""
        now = time.monotonic()
        if now - live.synced_mono < self.settings.refresh_interval:
            return
        live.synced_mono = now
        record = await self.run(self.registry.get, live.record.task_id)
        if record is None:
            return
        mine = live.record
        mine.retried_by = record.retried_by
        if (record.state, record.launched) == (mine.state, mine.launched):
            return
        mine.state, mine.launched, mine.finished_at = (
            record.state,
            record.launched,
            record.finished_at,
        )
        mine.owner, mine.lease_until = record.owner, record.lease_until
        if record.state != "queued":
            live.annotations.pop("queue_position", None)
            live.annotations.pop("queued_reason", None)
        if record.launched:
            live.read_mono = 0.0  # the next read fetches the agent's document
        if record.progress is not None:
            await self.publish(live, record.progress, persist=False)

    async def sync_retry(self, live: Live) -> None:
        """With a shared registry, whether another controller retried this final
        task meanwhile (at most once a refresh interval, until one did)."""
        if not self.registry.db.shared or live.record.retried_by is not None:
            return
        now = time.monotonic()
        if now - live.synced_mono < self.settings.refresh_interval:
            return
        live.synced_mono = now
        retried_by = await self.run(self.registry.retried_by, live.record.task_id)
        if retried_by is not None:
            live.record.retried_by = retried_by
            self.annotate(live, retried_by=retried_by)

    async def fail(self, live: Live, error_code: str, message: str) -> None:
        log.info("task %s failed: %s", live.record.task_id, message)
        await self.publish(live, failed_document(live.view.progress, error_code, message))
