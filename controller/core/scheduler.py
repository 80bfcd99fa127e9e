"""Admission and the queue: whether a new install starts now, waits in the queue
or is refused, and starting queued installs as their turn comes.

An install waits when its ComfyUI home is busy (FIFO per machine and home), when
``max_running`` or ``max_running_per_host`` is reached, or while an automatic
retry's backoff runs. Queued tasks live in the registry (state ``queued``), so
they survive a controller restart. Every decision runs in one exclusive
transaction of the registry, from its list of unfinished tasks, so two starts
never both take the last slot, whichever controllers sharing the database they
reached. Exclusive is ``BEGIN IMMEDIATE`` on SQLite and one advisory lock on
PostgreSQL: the limits are counts over all tasks, which row locks on the queued
rows (``FOR UPDATE SKIP LOCKED``) would not serialize: two replicas could each
lock a different queued task and both count the same free slot.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from controller.common.errors import Conflict, StorageUnavailable, TooManyTasks
from controller.core.live import Live, Tasks, TaskView, queued_document, starting_document
from controller.core.registry import Slot, TaskRecord, home_key
from protocol import utc_now

log = logging.getLogger(__name__)

#: What a 429 suggests: a minute is about the shortest install; clients that
#: want to wait for their turn should send ``queue`` instead.
RETRY_AFTER_SECONDS = 30

#: Why a queued task waits, in ``queued_reason``.
HOME_BUSY = "home_busy"
MAX_RUNNING = "max_running"
MAX_RUNNING_PER_HOST = "max_running_per_host"
BACKOFF = "backoff"


@dataclass(frozen=True)
class Admission:
    """What became of a start: ``state`` is ``starting`` or ``queued``."""

    task_id: str
    state: str
    queue_position: int | None = None
    queued_reason: str | None = None

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"task_id": self.task_id, "state": self.state}
        if self.state == "queued":
            body.update(queue_position=self.queue_position, queued_reason=self.queued_reason)
        return body


@dataclass(frozen=True)
class _Slot:
    task_id: str
    target_key: str
    host: tuple[str, int]
    home: tuple[str, str]
    queued: bool


class Scheduler:
    def __init__(self, tasks: Tasks, launch: Callable[[Live], Awaitable[None]]) -> None:
        self.tasks = tasks
        self._launch = launch
        self._lock = asyncio.Lock()
        self._timer: asyncio.TimerHandle | None = None
        tasks.on_final.append(lambda _live: self.kick())

    # -- admission -------------------------------------------------------------------

    async def admit(self, record: TaskRecord, *, queue: bool) -> Admission:
        """Start ``record`` now, queue it, or refuse it (409 busy home, 429 limit).

        The decision and the insert are one exclusive transaction of the registry
        (see ``Registry.admit``), so controllers sharing a database never both take
        the last slot, and the queue's order is the order of admission."""
        tasks = self.tasks
        mine = _slot_of(record)
        outcome: dict[str, Any] = {}

        def decide(rows: list[Slot]) -> bool:
            slots = [_slot(row) for row in rows]
            active = [s for s in slots if not s.queued]
            holder = next((s.task_id for s in slots if s.home == mine.home), None)
            reason: str | None
            if holder is not None:
                reason = HOME_BUSY
            elif record.not_before is not None and record.not_before > time.time():
                reason = BACKOFF
            else:
                reason = self._limit_reached(mine, active)
            outcome.update(reason=reason, holder=holder, slots=[*slots, mine])
            if reason is None:
                record.state = "starting"
                record.progress = starting_document(record)
                record.owner = tasks.replica
                record.lease_until = record.created_at + tasks.settings.lease_seconds
                return True
            if not queue:
                return False
            record.state = "queued"
            record.progress = queued_document(record)
            return True

        async with self._lock:
            await tasks.run(tasks.registry.admit, record, decide)
            reason = outcome["reason"]
            if reason is None:
                live = tasks.remember(record)
                live.launch = tasks.spawn(self._launch(live))
                return Admission(record.task_id, "starting")
            if not queue:
                holder = outcome["holder"]
                if reason == HOME_BUSY and holder is not None:
                    raise Conflict(
                        f"an install into {record.ui_home} on {record.target} is already "
                        f"running or queued (task {holder}); wait for it, cancel it, or "
                        'send "queue": true to start this one after it',
                        task_id=holder,
                    )
                raise TooManyTasks(
                    f"{reason} is reached ({self._limit_text(reason, mine)}); try again "
                    'later, or send "queue": true to start it as soon as a slot frees',
                    RETRY_AFTER_SECONDS,
                )
            tasks.remember(record)
            slots = outcome["slots"]
            self._annotate(slots, {record.task_id: reason}, slots)
            self._arm_timer()
            live = tasks.live[record.task_id]
            position = live.annotations.get("queue_position")
            log.info("task %s queued (%s, position %s)", record.task_id, reason, position)
            return Admission(record.task_id, "queued", position, reason)

    def _limit_reached(self, slot: _Slot, active: list[_Slot]) -> str | None:
        settings = self.tasks.settings
        # The narrower limit first: it says what frees this task's slot.
        if settings.max_running_per_host:
            on_host = sum(1 for s in active if s.host == slot.host)
            if on_host >= settings.max_running_per_host:
                return MAX_RUNNING_PER_HOST
        if settings.max_running and len(active) >= settings.max_running:
            return MAX_RUNNING
        return None

    def _limit_text(self, reason: str, slot: _Slot) -> str:
        settings = self.tasks.settings
        if reason == MAX_RUNNING:
            return f"{settings.max_running} installs running on this controller's registry"
        if reason == MAX_RUNNING_PER_HOST:
            return f"{settings.max_running_per_host} installs running on {slot.host[0]}"
        return "an automatic retry waits for its backoff"

    # -- the queue -------------------------------------------------------------------

    def kick(self) -> None:
        """Start whatever queued tasks may start now, in the background."""
        self.tasks.spawn(self._pump_in_background())

    async def _pump_in_background(self) -> None:
        try:
            await self.pump()
        except StorageUnavailable as exc:
            # The database is away: the next kick or queue look starts them.
            log.warning("the queue could not be pumped: %s", exc.message)
        except Exception:
            log.exception("the queue could not be pumped")

    async def pump(self) -> list[str]:
        """Start the queued tasks whose turn it is, oldest first; returns their ids.

        Which ones is decided and claimed in one exclusive transaction of the
        registry (``Registry.claim_queued``): of the controllers sharing it, exactly
        one claims each queued task, and only that one launches it."""
        tasks = self.tasks
        reasons: dict[str, str] = {}
        waiting: list[_Slot] = []

        def choose(rows: list[Slot], now: float) -> list[str]:
            reasons.clear()
            slots = [_slot(row) for row in rows]
            active = [s for s in slots if not s.queued]
            busy_homes = {s.home for s in active}
            chosen: list[str] = []
            for slot, row in zip(slots, rows, strict=True):
                if not slot.queued:
                    continue
                reason: str | None = None
                if slot.home in busy_homes:
                    reason = HOME_BUSY
                elif row.not_before is not None and row.not_before > now:
                    reason = BACKOFF
                else:
                    reason = self._limit_reached(slot, active)
                # FIFO per home: whatever waits blocks the ones behind it there.
                busy_homes.add(slot.home)
                if reason is not None:
                    reasons[slot.task_id] = reason
                    continue
                chosen.append(slot.task_id)
                active.append(_Slot(slot.task_id, slot.target_key, slot.host, slot.home, False))
            waiting[:] = [s for s in slots if s.queued and s.task_id not in chosen]
            return chosen

        started: list[str] = []
        async with self._lock:
            claimed = await tasks.run(
                tasks.registry.claim_queued,
                choose,
                starting_document,
                tasks.replica,
                tasks.settings.lease_seconds,
            )
            for record in claimed:
                live = tasks.live.get(record.task_id) or tasks.remember(record)
                live.record.state = record.state
                live.record.owner, live.record.lease_until = record.owner, record.lease_until
                live.annotations.pop("queue_position", None)
                live.annotations.pop("queued_reason", None)
                if record.progress is None:  # claim() writes the starting document
                    raise RuntimeError(f"claimed task {record.task_id} has no document")
                await tasks.publish(live, record.progress, persist=False)
                live.launch = tasks.spawn(self._launch(live))
                started.append(record.task_id)
                log.info("queued task %s starts", record.task_id)
            self._annotate(waiting, reasons, waiting)
            self._arm_timer()
        return started

    async def take_over(self) -> list[str]:
        """Launch again the tasks whose launcher died before the agent confirmed the
        start (its lease ran out; with a registry of its own, any such task: the
        controller that launched it was this one, before a restart). The agent
        refuses a task id it already has, so an install is never started twice."""
        tasks = self.tasks
        async with self._lock:
            # Under the lock: a start admitted meanwhile is launching already.
            mine = {
                task_id
                for task_id, live in tasks.live.items()
                if live.launch is not None and not live.launch.done()
            }
            taken = await tasks.run(
                tasks.registry.take_over,
                tasks.replica,
                tasks.settings.lease_seconds,
                mine,
                ignore_lease=not tasks.registry.db.shared,
            )
            for record in taken:
                live = tasks.live.get(record.task_id) or tasks.remember(record)
                live.record.owner, live.record.lease_until = record.owner, record.lease_until
                log.warning("task %s: launch never confirmed; launching it again", record.task_id)
                live.launch = tasks.spawn(self._launch(live))
        return [record.task_id for record in taken]

    def _annotate(self, slots: list[_Slot], reasons: dict[str, str], order: list[_Slot]) -> None:
        """Each queued task's position in its home's line (1: next), and why it waits."""
        seen: dict[tuple[str, str], int] = {}
        for slot in order:
            if not slot.queued:
                continue
            seen[slot.home] = seen.get(slot.home, 0) + 1
            live = self.tasks.live.get(slot.task_id)
            if live is None or slot.task_id not in reasons:
                continue
            self.tasks.annotate(
                live, queue_position=seen[slot.home], queued_reason=reasons[slot.task_id]
            )

    def _arm_timer(self) -> None:
        """Wake the queue when the earliest backoff ends."""
        due = [
            live.record.not_before
            for live in self.tasks.live.values()
            if live.record.state == "queued" and live.record.not_before is not None
        ]
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if due:
            delay = max(0.0, min(due) - time.time()) + 0.05
            self._timer = asyncio.get_running_loop().call_later(delay, self.kick)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    # -- cancelling a queued task ----------------------------------------------------

    async def cancel_queued(self, live: Live) -> TaskView | None:
        """Cancel ``live`` if it is still queued (nothing runs on the machine yet);
        ``None`` when it has started meanwhile."""
        async with self._lock:
            if live.record.state != "queued":
                return None
            cancelled = starting_document(live.record)
            cancelled.state = "cancelled"
            cancelled.error = "cancelled while queued; nothing was installed"
            cancelled.error_code = "cancelled"
            cancelled.finished_at = cancelled.updated_at = utc_now()
            cancelled.current_node = cancelled.current_status = None
            for node in cancelled.nodes:
                node.status = "cancelled"
            cancelled.recount()
            finished_at = time.time()
            if not await self.tasks.run(
                self.tasks.registry.cancel_queued, live.record.task_id, cancelled, finished_at
            ):
                return None  # another controller started it meanwhile
            live.record.finished_at = finished_at
            live.annotations.pop("queue_position", None)
            live.annotations.pop("queued_reason", None)
            return await self.tasks.publish(live, cancelled, persist=False)


def _slot(row: Slot) -> _Slot:
    return _Slot(
        row.task_id,
        row.target_key,
        (row.host, row.port),
        (row.target_key, home_key(row.ui_home)),
        row.state == "queued",
    )


def _slot_of(record: TaskRecord) -> _Slot:
    target = record.target
    return _Slot(
        record.task_id,
        target.key,
        (target.host, target.port),
        (target.key, home_key(record.ui_home)),
        True,
    )
