"""Retention: keep unfinished tasks current when nobody asks, and prune finished
ones (their files on the machine and their full document) once they are older
than the retention; their summary stays in the history for ``history_days``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from controller.common.errors import ControllerError, StorageUnavailable
from controller.core.live import Tasks
from controller.core.reader import Reader
from controller.core.registry import TaskRecord
from protocol import ExitCode

log = logging.getLogger(__name__)

#: Seconds a finished task stays in memory after it was last read.
FORGET_AFTER = 60.0


class Retention:
    def __init__(self, tasks: Tasks, reader: Reader) -> None:
        self.tasks = tasks
        self.reader = reader
        self._jobs: list[asyncio.Task[None]] = []

    def start_jobs(self, extra: Sequence[tuple[float, Callable[[], Any]]] = ()) -> None:
        """Start the periodic jobs: refresh the running tasks, clean up old ones, and
        ``extra`` ``(interval, job)`` pairs."""
        settings = self.tasks.settings
        self._jobs = [
            asyncio.create_task(self._every(settings.monitor_interval, self.refresh_running)),
            asyncio.create_task(self._every(settings.cleanup_interval, self.cleanup)),
            *(asyncio.create_task(self._every(interval, job)) for interval, job in extra),
        ]

    async def close(self) -> None:
        for job in self._jobs:
            job.cancel()
        if self._jobs:
            await asyncio.gather(*self._jobs, return_exceptions=True)

    async def _every(self, interval: float, job: Callable[[], Any]) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except StorageUnavailable as exc:
                # The database is away (a restart): said once a round, without a
                # traceback; the job runs again next round.
                log.warning("periodic job %s: %s", getattr(job, "__name__", job), exc.message)
            except Exception:
                log.exception("periodic job %s failed", getattr(job, "__name__", job))

    async def refresh_running(self) -> None:
        """Keep unfinished tasks current when nobody asks, so liveness is checked
        and the registry learns how they ended."""
        due = [
            task_id
            for task_id, live in self.tasks.live.items()
            # Also tasks a previous run of the controller was still starting.
            if not live.view.progress.is_final and (live.launch is None or live.launch.done())
        ]

        # Finished tasks nobody read for a while leave memory (the registry has them).
        self.tasks.forget_finished(FORGET_AFTER)

        async def refresh(task_id: str) -> None:
            with contextlib.suppress(ControllerError):
                await self.reader.progress(task_id)

        # Concurrently: one unreachable instance must not hold up the others.
        await asyncio.gather(*(refresh(task_id) for task_id in due))

    async def cleanup(self, now: float | None = None) -> list[str]:
        """Remove finished tasks older than the retention, with their files on the
        machine (``agent cleanup``). A machine that cannot be reached keeps its
        tasks until twice the retention has passed."""
        now = time.time() if now is None else now
        retention = self.tasks.settings.retention
        expired = await self.tasks.run(self.tasks.registry.finished_before, now - retention)
        by_target: dict[str, list[TaskRecord]] = {}
        for record in expired:
            by_target.setdefault(record.target.key, []).append(record)
        removed: list[str] = []
        for records in by_target.values():
            target = records[0].target
            remote_done = True
            if any(r.launched for r in records):
                try:
                    reply = await self.tasks.run_on(
                        target,
                        self.tasks.transports.get(target).run_agent,
                        ["cleanup", "--older-than", str(int(retention))],
                        timeout=self.tasks.settings.command_timeout,
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
            await self.tasks.run(self.tasks.registry.prune, removed)
            for task_id in removed:
                self.tasks.live.pop(task_id, None)
        history_cutoff = now - self.tasks.settings.history_days * 86400.0
        await self.tasks.run(self.tasks.registry.forget_before, history_cutoff)
        return removed
