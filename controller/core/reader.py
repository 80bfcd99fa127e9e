"""Reading tasks: their progress (with liveness checks), their logs, the list.

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
import math
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from controller.common.errors import (
    ExpiredTask,
    InvalidRequest,
    NotRegularFile,
    RemoteError,
    UnknownTask,
    Unreachable,
    UnreadableProgress,
)
from controller.common.target import Target
from controller.core.access import check_lookup
from controller.core.live import Live, Tasks, TaskView, failed_document
from controller.core.registry import SUMMARY_FIELDS, TaskRecord
from controller.storage.registry_schema import SUMMARY_ERROR_CHARS
from controller.transports import FileStat, Transport
from protocol import FINAL_STATES, ExitCode, Progress, ProtocolError
from protocol import fields as checks

#: A ``stat`` reports whole seconds over SFTP, so an unchanged (mtime, size) only
#: proves an unchanged file once a full read happened this long after the signature
#: was first seen: the file's last second was over by then. One second, plus slack
#: for a replacement written late in that second and renamed into place just after.
MTIME_RESOLUTION = 2.0
LOG_READ_LIMIT = 1024 * 1024
LOG_DEFAULT_LIMIT = 64 * 1024
#: A cached document younger than this many refresh intervals is served at once
#: while a background read refreshes it; an older one is only served after a new
#: read. Two intervals keep what a poll sees at most 1 s old at the default 0.5 s
#: interval, which is the freshness promise.
STALE_SERVE_INTERVALS = 2.0
_ID_PREFIX = re.compile(r"[0-9a-fA-F-]{1,36}")
#: Task listings are pages of this many summaries by default, at most MAX_PAGE.
DEFAULT_PAGE = 100
MAX_PAGE = 500


class Reader:
    def __init__(self, tasks: Tasks) -> None:
        self.tasks = tasks

    async def progress(self, task_id: object, target: Target | None = None) -> TaskView:
        """The task's current view: shared, cached, single-flight.

        With ``target``, a task this controller does not know is looked for on that
        machine (started by another controller, or before the registry was lost) and
        followed from then on.
        """
        try:
            live = await self.tasks.get(task_id)
        except UnknownTask as exc:
            if target is None or isinstance(exc, ExpiredTask):
                raise
            live = await self._adopt(exc.task_id, target)
        if (
            not live.view.progress.is_final
            and not live.record.launched
            and (live.launch is None or live.launch.done())
        ):
            # Queued, or launched by another controller sharing the registry (or
            # waiting for a take-over): the registry knows more than this copy.
            await self.tasks.sync(live)
            if not live.record.launched:
                self.tasks.stats.add("cache_hits")
                return live.view
        if live.view.progress.is_final:
            await self.tasks.sync_retry(live)
        if (
            live.view.progress.is_final
            or live.record.state == "queued"  # nothing on the machine yet
            or (live.launch is not None and not live.launch.done())
        ):
            self.tasks.stats.add("cache_hits")
            return live.view
        age = time.monotonic() - live.read_mono
        if age < self.tasks.settings.refresh_interval:
            self.tasks.stats.add("cache_hits")
            return live.view
        refresh = live.inflight
        joined = refresh is not None
        if refresh is None:
            refresh = live.inflight = self.tasks.spawn(self._refresh(live))
            refresh.add_done_callback(lambda _t: setattr(live, "inflight", None))
        # Stale-while-revalidate: a document read less than STALE_SERVE_INTERVALS
        # refresh intervals ago is served at once while the refresh runs, so a poll
        # never waits on the instance. With no document read yet, or one older than
        # that, the poll waits for the read: nothing older than 1 s (at the default
        # interval) is served as current. A view already marked stale (the instance
        # is unreachable) says so itself and is served at once too.
        if live.read_mono and (
            live.view.stale or age < STALE_SERVE_INTERVALS * self.tasks.settings.refresh_interval
        ):
            self.tasks.stats.add("cache_hits")
            return live.view
        if joined:
            self.tasks.stats.add("cache_hits")
        return await asyncio.shield(refresh)

    async def _adopt(self, task_id: str, target: Target) -> Live:
        known_hosts = self.tasks.transports.pool.known_hosts
        await self.tasks.run(check_lookup, self.tasks.settings, known_hosts, task_id, target)
        transport = self.tasks.transports.get(target)
        path = self._progress_path(task_id)

        def read() -> bytes | None:
            if transport.stat(path) is None:
                return None
            data = transport.read(path)
            self.tasks.stats.add("remote_reads")
            return data

        try:
            data = await self.tasks.run_on(target, read)
        except OSError as exc:
            raise Unreachable(f"cannot look for task {task_id} on {target}: {exc}") from None
        if data is None:
            raise UnknownTask(task_id)
        progress = parse_document(data)
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
        await self.tasks.run(self.tasks.registry.adopt, record)
        live = self.tasks.remember(record)
        live.read_mono = time.monotonic()
        return live

    def _progress_path(self, task_id: str) -> str:
        return f"tasks/{task_id}/progress.json"

    def _read_document(self, transport: Transport, live: Live) -> Progress | FileStat | None:
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
        try:
            data = transport.read(path)
        except NotRegularFile as exc:
            # The instance answered: the document is unreadable, the host is fine.
            raise UnreadableProgress(exc.message) from None
        self.tasks.stats.add("remote_reads")
        progress = parse_document(data)
        # Only a document that parsed may be skipped as unchanged next time: a
        # broken one is read again until it is replaced.
        live.read_signature, live.read_signature_mono = signature, started
        return progress

    async def _refresh(self, live: Live) -> TaskView:
        record = live.record
        transport = self.tasks.transports.get(record.target)
        try:
            result = await self.tasks.run_on(record.target, self._read_document, transport, live)
        except UnreadableProgress as exc:
            # The instance answered: not unreachable, and not lost either. Keep the
            # last good document; a later valid one replaces it.
            return await self._unreadable(live, exc.message)
        except RemoteError as exc:
            return await self.tasks.publish(
                live, live.view.progress, stale=True, problem=exc.message
            )
        except (OSError, EOFError) as exc:
            return await self.tasks.publish(live, live.view.progress, stale=True, problem=str(exc))
        if result is None:
            if not record.launched:
                await self.tasks.fail(
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
            view = await self.tasks.publish(live, result)
        else:
            view = await self.tasks.publish(live, live.view.progress)
        if (
            not view.progress.is_final
            and time.monotonic() - live.changed_mono >= 3 * self.tasks.settings.heartbeat_interval
            and time.monotonic() - live.liveness_mono >= self.tasks.settings.heartbeat_interval
        ):
            view = await self._check_liveness(live, transport)
        return view

    async def _check_liveness(
        self, live: Live, transport: Transport, *, missing: bool = False
    ) -> TaskView:
        """No change for three heartbeats (or no document): ask the agent's ``status``,
        which checks the worker's pid, command line and boot id on the machine."""
        live.liveness_mono = time.monotonic()
        task_id = live.record.task_id
        try:
            reply = await self.tasks.run_on(
                live.record.target,
                transport.run_agent,
                ["status", "--task-id", task_id],
                timeout=self.tasks.settings.command_timeout,
            )
        except RemoteError as exc:
            return await self.tasks.publish(
                live, live.view.progress, stale=True, problem=exc.message
            )
        if reply.exit_status == ExitCode.UNREADABLE_PROGRESS:
            return await self._unreadable(live, str(reply.document.get("message", "")))
        if reply.exit_status == ExitCode.UNKNOWN_TASK:
            lost = failed_document(
                live.view.progress,
                "lost",
                f"the task's files are gone from {live.record.target}; "
                "it can no longer be followed",
            )
            lost.state = "lost"
            return await self.tasks.publish(live, lost)
        if reply.exit_status != ExitCode.OK:
            return live.view
        try:
            progress = Progress.from_dict(reply.document)
        except ProtocolError as exc:
            return await self._unreadable(live, f"unreadable status: {exc}")
        if missing and not progress.is_final:
            return live.view
        return await self.tasks.publish(live, progress)

    async def _unreadable(self, live: Live, problem: str) -> TaskView:
        self.tasks.stats.add("unreadable_progress")
        return await self.tasks.publish(
            live,
            live.view.progress,
            stale=True,
            problem=problem,
            problem_code=UnreadableProgress.code,
        )

    async def watch(
        self, task_id: object, *, heartbeat: float | None = None
    ) -> AsyncIterator[TaskView | None]:
        """Yield the task's view now and whenever it changes, until it is final.

        With ``heartbeat``, yields ``None`` after that many seconds without a change
        (an event stream sends a keep-alive then). Every watcher shares the same
        cached read, so watchers cost no extra remote reads.
        """
        live = await self.tasks.get(task_id)
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
            wait = self.tasks.settings.refresh_interval
            if heartbeat is not None:
                wait = min(wait, max(0.0, heartbeat - (time.monotonic() - idle_since)))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(live.changed.wait(), timeout=max(wait, 0.01))

    async def read_log(
        self, task_id: object, offset: int = 0, limit: int = LOG_DEFAULT_LIMIT
    ) -> dict[str, Any]:
        """Up to ``limit`` bytes of the agent's log from byte ``offset``, as
        ``{"data", "next_offset", "eof"}``; ``eof`` means the end of what exists now."""
        if offset < 0:
            raise InvalidRequest("offset", "must not be negative")
        if not 1 <= limit <= LOG_READ_LIMIT:
            raise InvalidRequest("limit", f"must be from 1 to {LOG_READ_LIMIT}")
        live = await self.tasks.get(task_id)
        notes = list(live.record.notes)
        if not live.record.launched:
            # No agent, so no log: the controller's reason is all there is to read.
            if live.view.progress.error:
                notes.append(f"the agent never started: {live.view.progress.error}")
            return {"data": "", "next_offset": offset, "eof": True, "notes": notes}
        transport = self.tasks.transports.get(live.record.target)
        path = f"tasks/{live.record.task_id}/agent.log"

        def read() -> tuple[bytes, int]:
            info = transport.stat(path)
            if info is None or offset >= info.size:
                return b"", info.size if info else 0
            return transport.read(path, offset, min(limit, info.size - offset)), info.size

        try:
            data, size = await self.tasks.run_on(live.record.target, read)
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
            "notes": notes,
        }

    async def list_tasks(
        self, limit: int = DEFAULT_PAGE, cursor: str | None = None, prefix: str | None = None
    ) -> dict[str, Any]:
        """One page of summaries, newest first, from the registry's summary columns
        (a task in memory shows its current view); ``next_cursor`` fetches the next.
        With ``prefix``, only the tasks whose id starts with it (short ids)."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidRequest("limit", f"must be from 1 to {MAX_PAGE}")
        if prefix is not None and not _ID_PREFIX.fullmatch(prefix):
            raise InvalidRequest("prefix", "must be the start of a task id (hex digits and '-')")
        before = parse_cursor(cursor) if cursor else None
        rows = await self.tasks.run(
            self.tasks.registry.page,
            limit + 1,
            before,
            id_prefix=prefix.lower() if prefix is not None else None,
        )
        more = len(rows) > limit
        rows = rows[:limit]
        summaries = []
        for row in rows:
            live = self.tasks.live.get(row["task_id"])
            summaries.append(summary(row, live.view.progress if live else None))
        next_cursor = make_cursor(rows[-1]) if more and rows else None
        return {"tasks": summaries, "next_cursor": next_cursor}


def parse_document(data: bytes) -> Progress:
    """The agent's progress document, or :class:`UnreadableProgress` saying why not."""
    try:
        return Progress.from_json(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise UnreadableProgress(f"the progress document is not UTF-8: {exc}") from None
    except ProtocolError as exc:
        raise UnreadableProgress(f"the progress document does not parse: {exc}") from None
    except RecursionError:
        raise UnreadableProgress("the progress document is nested too deeply") from None


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


def summary(row: dict[str, Any], progress: Progress | None = None) -> dict[str, Any]:
    """A listing entry from a registry summary row; ``progress`` (the live view's
    document) overrides the stored counters. Never parses a stored document."""
    body = {
        "task_id": row["task_id"],
        "target": str(
            Target(row["target_kind"], row["target_user"], row["target_host"], row["target_port"])
        ),
        "ui_home": row["ui_home"],
        "state": row["state"],
        "created_at": _iso(row["created_at"]),
        "finished_at": _iso(row["finished_at"]) if row["finished_at"] else None,
        **{name: row[name] for name in SUMMARY_FIELDS},
        "attempt": row["attempt"],
        "retry_of": row["retry_of"],
        "retried_by": row["retried_by"],
    }
    if progress is not None and _live_is_newer(row["state"], progress):
        body["state"] = progress.state
        for name in SUMMARY_FIELDS:
            value = getattr(progress, name)
            body[name] = value[-SUMMARY_ERROR_CHARS:] if name == "error" and value else value
    return body


def _live_is_newer(stored: str, progress: Progress) -> bool:
    """Whether a controller's in-memory document is newer than the stored row: it
    usually is (it is written at milestones only), but with a shared registry
    another controller may have stored a later state (started a queued task, seen
    it end) than this one has read yet."""
    if stored in FINAL_STATES:
        return progress.is_final
    return not (progress.state == "queued" and stored != "queued")


def make_cursor(row: dict[str, Any]) -> str:
    """An opaque position after ``row``: its creation time and id."""
    return f"{row['created_at']!r}_{row['task_id']}"


def parse_cursor(text: str) -> tuple[float, str]:
    created, _, task_id = text.partition("_")
    bad = InvalidRequest(
        "cursor", "is not a cursor this controller gave out; use next_cursor as it is"
    )
    try:
        moment = float(created)
        checked = checks.task_id(task_id)
    except (ValueError, ProtocolError):
        raise bad from None
    if not math.isfinite(moment):
        raise bad
    return moment, checked


def _iso(epoch: float) -> str:
    moment = datetime.datetime.fromtimestamp(epoch, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
