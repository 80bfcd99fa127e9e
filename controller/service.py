"""The task service: start installs, serve their progress, cancel, logs, retention.

Everything blocking (SSH, SFTP, SQLite) runs in the executor the app owns.

Progress reads are shared: a document read less than ``refresh_interval`` ago is
served from cache; an older one is still served at once while one read refreshes
it in the background (stale-while-revalidate, at most ``STALE_SERVE_INTERVALS``
intervals old; beyond that, or before the first read, callers await the read),
concurrent readers share the read in flight (single-flight), and a cheap
``stat`` lets an unchanged file skip the read. So a hundred pollers or
event-stream watchers of one task cost one remote read per interval and never
wait on the instance; ``stats.remote_reads`` counts the real reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from controller.config import Settings
from controller.errors import (
    Conflict,
    ControllerError,
    InvalidRequest,
    RemoteError,
    UnknownTask,
    Unreachable,
)
from controller.registry import Registry, TaskRecord
from controller.schemas import InstallRequest
from controller.stats import Stats
from controller.target import Target, parse_target
from controller.transports import FileStat, Transport, Transports
from protocol import ExitCode, InstallSpec, NodeProgress, Progress, ProtocolError, utc_now
from protocol import fields as checks
from protocol.api import progress_response

log = logging.getLogger(__name__)
T = TypeVar("T")

#: A ``stat`` reports whole seconds over SFTP, so an unchanged (mtime, size) only
#: proves an unchanged file once a full read happened this long after the signature
#: was first seen: the file's last second was over by then. One second, plus slack
#: for a replacement written late in that second and renamed into place just after.
MTIME_RESOLUTION = 2.0
LOG_READ_LIMIT = 1024 * 1024
LOG_DEFAULT_LIMIT = 64 * 1024
#: Seconds between registry writes of a document whose milestones did not change.
PERSIST_INTERVAL = 10.0
#: A cached document younger than this many refresh intervals is served at once
#: while a background read refreshes it; an older one is only served after a new
#: read. Two intervals keep what a poll sees at most 1 s old at the default 0.5 s
#: interval, which is the freshness promise.
STALE_SERVE_INTERVALS = 2.0


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

    def response(self) -> dict[str, Any]:
        """The seed-compatible progress body."""
        body = progress_response(self.progress, stale=self.stale)
        body["target"] = str(self.target)
        body["read_at"] = self.read_at
        return body


@dataclass
class _Live:
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
    liveness_mono: float = 0.0
    #: What was last written to the registry, and when.
    persisted_milestone: tuple[Any, ...] = ()
    persisted_mono: float = 0.0
    changed: asyncio.Event = field(default_factory=asyncio.Event)


def _starting_document(record: TaskRecord) -> Progress:
    spec = InstallSpec.from_dict(record.spec)
    progress = Progress(task_id=record.task_id, ui_home=spec.ui_home)
    progress.nodes = [
        NodeProgress(name=node.dir_name, url=node.url, ref=node.ref) for node in spec.nodes
    ]
    progress.recount()
    return progress


def _milestone(progress: Progress) -> tuple[Any, ...]:
    """The parts of a document worth persisting at once when they change."""
    return (
        progress.state,
        progress.processed,
        progress.current_node,
        progress.requirements_status,
        tuple(node.status for node in progress.nodes),
    )


def _failed_document(base: Progress, error_code: str, message: str) -> Progress:
    failed = Progress.from_dict(base.to_dict())
    failed.state = "failed"
    failed.error = message
    failed.error_code = error_code
    failed.finished_at = failed.updated_at = utc_now()
    failed.current_node = failed.current_status = None
    return failed


class TaskService:
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
        self._live: dict[str, _Live] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._jobs: list[asyncio.Task[None]] = []

    # -- plumbing ----------------------------------------------------------------

    async def _run(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.executor, functools.partial(function, *args, **kwargs)
        )

    def _spawn(self, coroutine: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def start_jobs(self) -> None:
        """Resume tasks a previous run left unfinished, then start the periodic jobs."""
        for record in await self._run(self.registry.unfinished):
            self._remember(record)
        self._jobs = [
            asyncio.create_task(self._every(self.settings.monitor_interval, self.refresh_running)),
            asyncio.create_task(self._every(self.settings.cleanup_interval, self.cleanup)),
        ]

    async def close(self) -> None:
        for job in self._jobs:
            job.cancel()
        for task in list(self._background):
            task.cancel()
        pending = [*self._jobs, *self._background]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    async def _every(self, interval: float, job: Callable[[], Any]) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("periodic job %s failed", getattr(job, "__name__", job))

    def _remember(self, record: TaskRecord) -> _Live:
        live = self._live.get(record.task_id)
        if live is None:
            progress = record.progress or _starting_document(record)
            view = TaskView(progress, False, utc_now(), 0, record.target)
            live = _Live(record=record, view=view)
            self._live[record.task_id] = live
        return live

    async def _get_live(self, task_id: object) -> _Live:
        try:
            task_id = checks.task_id(task_id)
        except ProtocolError as exc:
            raise InvalidRequest("task_id", exc.message) from None
        live = self._live.get(task_id)
        if live is None:
            record = await self._run(self.registry.get, task_id)
            if record is None:
                raise UnknownTask(task_id)
            live = self._remember(record)
        return live

    async def _publish(
        self, live: _Live, progress: Progress, *, stale: bool = False, problem: str | None = None
    ) -> TaskView:
        """Install a new view; persist and wake watchers when the document changed."""
        previous = live.view
        changed = progress.to_dict() != previous.progress.to_dict()
        version = previous.version + 1 if changed or stale != previous.stale else previous.version
        live.view = TaskView(progress, stale, utc_now(), version, live.record.target, problem)
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
            if (
                milestone != live.persisted_milestone
                or live.read_mono - live.persisted_mono >= PERSIST_INTERVAL
            ):
                live.persisted_milestone, live.persisted_mono = milestone, live.read_mono
                await self._run(
                    self.registry.save_progress,
                    record.task_id,
                    progress,
                    record.finished_at,
                    record.launched,
                )
        if version != previous.version:
            event, live.changed = live.changed, asyncio.Event()
            event.set()
        return live.view

    # -- start -------------------------------------------------------------------

    async def start(self, request: InstallRequest) -> str:
        """Register a task and launch it in the background; returns its id at once."""
        target = parse_target(request.ssh_connection)
        task_id = checks.new_task_id()
        pip_args = (
            request.pip_args if request.pip_args is not None else self.settings.default_pip_args
        )
        try:
            spec = InstallSpec.from_dict(
                {
                    "task_id": task_id,
                    "ui_home": request.ui_home,
                    "nodes": request.nodes,
                    "python": request.python,
                    "pip_args": pip_args,
                    "jobs": request.jobs,
                    "clone_jobs": request.clone_jobs,
                    "update": request.update,
                }
            )
        except ProtocolError as exc:
            raise InvalidRequest(exc.field, exc.message) from None
        record = TaskRecord(
            task_id=task_id,
            target=target,
            ui_home=spec.ui_home,
            spec=spec.to_dict(),
            created_at=time.time(),
        )
        record.progress = _starting_document(record)
        running = await self._run(self.registry.add_if_free, record)
        if running is not None:
            raise Conflict(
                f"an install into {spec.ui_home} on {target} is already running "
                f"(task {running}); wait for it or cancel it",
                task_id=running,
            )
        live = self._remember(record)
        live.launch = self._spawn(self._launch(live, spec))
        return task_id

    async def _launch(self, live: _Live, spec: InstallSpec) -> None:
        record = live.record
        transport = self.transports.get(record.target)
        try:
            reply = await self._run(
                transport.run_agent,
                ["start", "--spec", "-"],
                stdin=spec.to_json().encode(),
                timeout=self.settings.command_timeout,
            )
        except ControllerError as exc:
            await self._fail(live, "start_failed", f"could not start the install: {exc.message}")
            return
        except Exception as exc:
            log.exception("starting task %s failed", record.task_id)
            await self._fail(live, "start_failed", f"could not start the install: {exc}")
            return
        document = reply.document
        if reply.exit_status == ExitCode.OK:
            record.launched = True
            await self._run(
                self.registry.save_progress, record.task_id, live.view.progress, None, True
            )
            live.read_mono = 0.0  # the next reader fetches the agent's first document
            return
        message = str(document.get("message") or document.get("error") or "no message")
        if reply.exit_status == ExitCode.CONFLICT:
            holder = document.get("task_id")
            await self._fail(
                live,
                "conflict",
                f"another install (task {holder}) is running in {spec.ui_home} on "
                f"{record.target}; nothing was installed by this task",
            )
        elif reply.exit_status == ExitCode.INVALID:
            field_name = document.get("field")
            await self._fail(
                live, "invalid_spec", f"the agent refused the spec: {field_name}: {message}"
            )
        else:
            stderr = reply.result.stderr.decode("utf-8", "replace").strip()[-500:]
            await self._fail(
                live,
                "start_failed",
                f"the agent failed to start (exit {reply.exit_status}): {message}"
                + (f"; stderr: {stderr}" if stderr else ""),
            )

    async def _fail(self, live: _Live, error_code: str, message: str) -> None:
        log.info("task %s failed: %s", live.record.task_id, message)
        await self._publish(live, _failed_document(live.view.progress, error_code, message))

    # -- progress ----------------------------------------------------------------

    async def progress(self, task_id: object, target: Target | None = None) -> TaskView:
        """The task's current view: shared, cached, single-flight.

        With ``target``, a task this controller does not know is looked for on that
        machine (started by another controller, or before the registry was lost) and
        followed from then on.
        """
        try:
            live = await self._get_live(task_id)
        except UnknownTask as exc:
            if target is None:
                raise
            live = await self._adopt(exc.task_id, target)
        if live.view.progress.is_final or (live.launch is not None and not live.launch.done()):
            self.stats.add("cache_hits")
            return live.view
        age = time.monotonic() - live.read_mono
        if age < self.settings.refresh_interval:
            self.stats.add("cache_hits")
            return live.view
        refresh = live.inflight
        joined = refresh is not None
        if refresh is None:
            refresh = live.inflight = self._spawn(self._refresh(live))
            refresh.add_done_callback(lambda _t: setattr(live, "inflight", None))
        # Stale-while-revalidate: a document read less than STALE_SERVE_INTERVALS
        # refresh intervals ago is served at once while the refresh runs, so a poll
        # never waits on the instance. With no document read yet, or one older than
        # that, the poll waits for the read: nothing older than 1 s (at the default
        # interval) is served as current. A view already marked stale (the instance
        # is unreachable) says so itself and is served at once too.
        if live.read_mono and (
            live.view.stale or age < STALE_SERVE_INTERVALS * self.settings.refresh_interval
        ):
            self.stats.add("cache_hits")
            return live.view
        if joined:
            self.stats.add("cache_hits")
        return await asyncio.shield(refresh)

    async def _adopt(self, task_id: str, target: Target) -> _Live:
        transport = self.transports.get(target)
        path = self._progress_path(task_id)

        def read() -> bytes | None:
            if transport.stat(path) is None:
                return None
            data = transport.read(path)
            self.stats.add("remote_reads")
            return data

        try:
            data = await self._run(read)
        except OSError as exc:
            raise Unreachable(f"cannot look for task {task_id} on {target}: {exc}") from None
        if data is None:
            raise UnknownTask(task_id)
        try:
            progress = Progress.from_json(data.decode("utf-8"))
        except (ProtocolError, UnicodeDecodeError) as exc:
            raise RemoteError(
                f"task {task_id} on {target} has an unreadable document: {exc}"
            ) from None
        if progress.task_id != task_id:
            raise UnknownTask(task_id)
        now = time.time()
        record = TaskRecord(
            task_id=task_id,
            target=target,
            ui_home=progress.ui_home,
            spec={},
            created_at=now,
            state=progress.state,
            finished_at=now if progress.is_final else None,
            launched=True,
            progress=progress,
        )
        await self._run(self.registry.adopt, record)
        live = self._remember(record)
        live.read_mono = time.monotonic()
        return live

    def _progress_path(self, task_id: str) -> str:
        return f"tasks/{task_id}/progress.json"

    def _read_document(self, transport: Transport, live: _Live) -> Progress | FileStat | None:
        """Blocking: the agent's document; ``None`` if absent; the FileStat when unchanged."""
        path = self._progress_path(live.record.task_id)
        signature = transport.stat(path)
        now = time.monotonic()
        if signature is None:
            return None
        if signature != live.signature_seen:
            live.signature_seen, live.signature_seen_mono = signature, now
        elif (
            signature == live.read_signature
            and live.read_signature_mono - live.signature_seen_mono >= MTIME_RESOLUTION
        ):
            return signature
        started = time.monotonic()
        text = transport.read(path)
        self.stats.add("remote_reads")
        live.read_signature, live.read_signature_mono = signature, started
        return Progress.from_json(text.decode("utf-8"))

    async def _refresh(self, live: _Live) -> TaskView:
        record = live.record
        transport = self.transports.get(record.target)
        try:
            result = await self._run(self._read_document, transport, live)
        except ProtocolError as exc:
            return await self._publish(
                live, live.view.progress, stale=True, problem=f"unreadable progress: {exc}"
            )
        except RemoteError as exc:
            return await self._publish(live, live.view.progress, stale=True, problem=exc.message)
        except (OSError, EOFError) as exc:
            return await self._publish(live, live.view.progress, stale=True, problem=str(exc))
        if result is None:
            if not record.launched:
                await self._fail(
                    live,
                    "start_failed",
                    "the controller stopped before the agent confirmed the start; "
                    "no install is running for this task",
                )
                return live.view
            return await self._check_liveness(live, transport, missing=True)
        if isinstance(result, Progress):
            if not record.launched:
                record.launched = True
            view = await self._publish(live, result)
        else:
            view = await self._publish(live, live.view.progress)
        if (
            not view.progress.is_final
            and time.monotonic() - live.changed_mono >= 3 * self.settings.heartbeat_interval
            and time.monotonic() - live.liveness_mono >= self.settings.heartbeat_interval
        ):
            view = await self._check_liveness(live, transport)
        return view

    async def _check_liveness(
        self, live: _Live, transport: Transport, *, missing: bool = False
    ) -> TaskView:
        """No change for three heartbeats (or no document): ask the agent's ``status``,
        which checks the worker's pid, command line and boot id on the machine."""
        live.liveness_mono = time.monotonic()
        task_id = live.record.task_id
        try:
            reply = await self._run(
                transport.run_agent,
                ["status", "--task-id", task_id],
                timeout=self.settings.command_timeout,
            )
        except RemoteError as exc:
            return await self._publish(live, live.view.progress, stale=True, problem=exc.message)
        if reply.exit_status == ExitCode.UNKNOWN_TASK:
            lost = _failed_document(
                live.view.progress,
                "lost",
                f"the task's files are gone from {live.record.target}; "
                "it can no longer be followed",
            )
            lost.state = "lost"
            return await self._publish(live, lost)
        if reply.exit_status != ExitCode.OK:
            return live.view
        try:
            progress = Progress.from_dict(reply.document)
        except ProtocolError as exc:
            return await self._publish(
                live, live.view.progress, stale=True, problem=f"unreadable status: {exc}"
            )
        if missing and not progress.is_final:
            return live.view
        return await self._publish(live, progress)

    async def watch(
        self, task_id: object, *, heartbeat: float | None = None
    ) -> AsyncIterator[TaskView | None]:
        """Yield the task's view now and whenever it changes, until it is final.

        With ``heartbeat``, yields ``None`` after that many seconds without a change
        (an event stream sends a keep-alive then). Every watcher shares the same
        cached read, so watchers cost no extra remote reads.
        """
        live = await self._get_live(task_id)
        last_version = -1
        idle_since = time.monotonic()
        while True:
            view = await self.progress(live.record.task_id)
            if view.version != last_version:
                last_version = view.version
                idle_since = time.monotonic()
                yield view
                if view.progress.is_final:
                    return
            elif heartbeat is not None and time.monotonic() - idle_since >= heartbeat:
                idle_since = time.monotonic()
                yield None
            if live.view.version != last_version:
                continue  # it changed while the consumer handled the last view
            wait = self.settings.refresh_interval
            if heartbeat is not None:
                wait = min(wait, max(0.0, heartbeat - (time.monotonic() - idle_since)))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(live.changed.wait(), timeout=max(wait, 0.01))

    # -- cancel, logs, listing ------------------------------------------------------

    async def cancel(self, task_id: object) -> TaskView:
        live = await self._get_live(task_id)
        if live.launch is not None and not live.launch.done():
            await asyncio.shield(live.launch)
        if live.view.progress.is_final:
            return live.view
        record = live.record
        transport = self.transports.get(record.target)
        reply = await self._run(
            transport.run_agent,
            ["cancel", "--task-id", record.task_id],
            timeout=self.settings.command_timeout,
        )
        if reply.exit_status == ExitCode.UNKNOWN_TASK:
            raise UnknownTask(record.task_id)
        if reply.exit_status != ExitCode.OK:
            raise RemoteError(
                f"the agent could not cancel task {record.task_id}: "
                f"{reply.document.get('message', 'exit status ' + str(reply.exit_status))}"
            )
        return await self._publish(live, Progress.from_dict(reply.document))

    async def read_log(
        self, task_id: object, offset: int = 0, limit: int = LOG_DEFAULT_LIMIT
    ) -> dict[str, Any]:
        """Up to ``limit`` bytes of the agent's log from byte ``offset``, as
        ``{"data", "next_offset", "eof"}``; ``eof`` means the end of what exists now."""
        if offset < 0:
            raise InvalidRequest("offset", "must not be negative")
        if not 1 <= limit <= LOG_READ_LIMIT:
            raise InvalidRequest("limit", f"must be from 1 to {LOG_READ_LIMIT}")
        live = await self._get_live(task_id)
        if not live.record.launched:
            return {"data": "", "next_offset": offset, "eof": True}
        transport = self.transports.get(live.record.target)
        path = f"tasks/{live.record.task_id}/agent.log"

        def read() -> tuple[bytes, int]:
            info = transport.stat(path)
            if info is None or offset >= info.size:
                return b"", info.size if info else 0
            return transport.read(path, offset, min(limit, info.size - offset)), info.size

        try:
            data, size = await self._run(read)
        except RemoteError:
            raise
        except OSError as exc:
            raise Unreachable(f"cannot read the log of task {live.record.task_id}: {exc}") from None
        data = _whole_utf8(data)
        next_offset = offset + len(data)
        return {
            "data": data.decode("utf-8", errors="replace"),
            "next_offset": next_offset,
            "eof": next_offset >= size,
        }

    async def list_tasks(self) -> list[dict[str, Any]]:
        records = await self._run(self.registry.all)
        summaries = []
        for record in records:
            live = self._live.get(record.task_id)
            progress = live.view.progress if live else record.progress
            summaries.append(_summary(record, progress))
        return summaries

    # -- periodic jobs -------------------------------------------------------------

    async def refresh_running(self) -> None:
        """Keep unfinished tasks current when nobody asks, so liveness is checked
        and the registry learns how they ended."""
        due = [
            task_id
            for task_id, live in self._live.items()
            # Also tasks a previous run of the controller was still starting.
            if not live.view.progress.is_final and (live.launch is None or live.launch.done())
        ]

        async def refresh(task_id: str) -> None:
            with contextlib.suppress(ControllerError):
                await self.progress(task_id)

        # Concurrently: one unreachable instance must not hold up the others.
        await asyncio.gather(*(refresh(task_id) for task_id in due))

    async def cleanup(self, now: float | None = None) -> list[str]:
        """Remove finished tasks older than the retention, with their files on the
        machine (``agent cleanup``). A machine that cannot be reached keeps its
        tasks until twice the retention has passed."""
        now = time.time() if now is None else now
        retention = self.settings.retention
        expired = await self._run(self.registry.finished_before, now - retention)
        by_target: dict[str, list[TaskRecord]] = {}
        for record in expired:
            by_target.setdefault(record.target.key, []).append(record)
        removed: list[str] = []
        for records in by_target.values():
            target = records[0].target
            remote_done = True
            if any(r.launched for r in records):
                try:
                    reply = await self._run(
                        self.transports.get(target).run_agent,
                        ["cleanup", "--older-than", str(int(retention))],
                        timeout=self.settings.command_timeout,
                    )
                    remote_done = reply.exit_status == ExitCode.OK
                except ControllerError as exc:
                    log.warning("retention cleanup on %s failed: %s", target, exc.message)
                    remote_done = False
            for record in records:
                too_old = (record.finished_at or now) < now - 2 * retention
                if remote_done or not record.launched or too_old:
                    removed.append(record.task_id)
        if removed:
            await self._run(self.registry.delete, removed)
            for task_id in removed:
                self._live.pop(task_id, None)
        return removed


def _whole_utf8(data: bytes) -> bytes:
    """``data`` without a multi-byte character cut off at its end."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 != 0x80:  # a lead byte (or ASCII)
            needed = (
                1 if byte < 0x80 else 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0b1110 else 4
            )
            return data if back >= needed else data[:-back]
    return data


def _summary(record: TaskRecord, progress: Progress | None) -> dict[str, Any]:
    doc = progress.to_dict() if progress else {}
    return {
        "task_id": record.task_id,
        "target": str(record.target),
        "ui_home": record.ui_home,
        "state": progress.state if progress else record.state,
        "created_at": _iso(record.created_at),
        "finished_at": _iso(record.finished_at) if record.finished_at else None,
        **{
            name: doc.get(name)
            for name in (
                "total_nodes",
                "processed",
                "successful",
                "failed",
                "skipped",
                "current_node",
                "error",
                "error_code",
                "updated_at",
            )
        },
    }


def _iso(epoch: float) -> str:
    moment = datetime.datetime.fromtimestamp(epoch, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
