"""Retrying installs: ``POST /api/tasks/{id}/retry`` starts a new task with the
nodes that failed or were cancelled, linked both ways (``retry_of``,
``retried_by``); ``auto_retry: N`` does that by itself for transient failures
(network, timeouts, a killed agent), after a backoff that doubles each time, and
never for deterministic ones (a missing repository, an unknown ref, a resolver
conflict), which would only fail again."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from controller.common.errors import Conflict, InvalidRequest
from controller.core.launcher import Launcher
from controller.core.live import Live, Tasks
from controller.core.scheduler import Admission
from controller.core.schemas import RETRIED_FIELDS, InstallRequest
from protocol import TRANSIENT_NODE_ERROR_CODES, InstallSpec, NodeSpec, Progress

log = logging.getLogger(__name__)

#: Whole-task failures another try may fix: the agent was killed or vanished, or
#: the instance could not be reached to start it.
TRANSIENT_TASK_ERRORS = frozenset({"lost", "agent_crashed", "start_failed"})
_RETRIED_STATES = ("failed", "cancelled")


class Retrier:
    def __init__(self, tasks: Tasks, launcher: Launcher) -> None:
        self.tasks = tasks
        self.launcher = launcher
        self._lock = asyncio.Lock()
        tasks.on_final.append(self._on_final)

    async def retry(
        self, task_id: object, *, queue: bool = False, auto_retry: int | None = None
    ) -> Admission:
        """A new task with the nodes of ``task_id`` that did not install."""
        live = await self.tasks.get(task_id)
        progress = live.view.progress
        if live.record.spec.get("mode") == "plan":
            raise InvalidRequest("", f"task {live.record.task_id} is a plan: make a new plan")
        if not progress.is_final:
            # Another controller sharing the registry may have seen it end first.
            stored = await self.tasks.run(self.tasks.registry.get, live.record.task_id)
            if stored is not None and stored.progress is not None and stored.progress.is_final:
                await self.tasks.publish(live, stored.progress, persist=False)
                progress = live.view.progress
        if not progress.is_final:
            raise Conflict(
                f"task {live.record.task_id} is still {progress.state}; "
                "retry it once it has finished (or cancel it first)",
                task_id=live.record.task_id,
            )
        names = {n.name for n in progress.nodes if n.status in _RETRIED_STATES}
        if progress.state in ("failed", "lost", "cancelled"):
            names |= {n.name for n in progress.nodes if not n.is_final}
        if not names:
            raise InvalidRequest(
                "",
                f"every node of task {live.record.task_id} installed or was skipped; "
                "nothing to retry",
            )
        return await self._start(live, names, queue=queue, auto_retry=auto_retry or 0)

    async def _start(
        self,
        live: Live,
        names: set[str],
        *,
        queue: bool,
        auto_retry: int,
        not_before: float | None = None,
    ) -> Admission:
        record = live.record
        if not record.spec:
            raise InvalidRequest("", f"task {record.task_id} has no spec left to retry")
        request = retry_request(record.spec, str(record.target), names, queue, auto_retry)
        registry = self.tasks.registry
        async with self._lock:
            if record.retried_by is not None:
                raise _already(record.task_id, record.retried_by)
            prepared = await self.launcher.prepare(request, record.target)
            new_id = prepared.spec.task_id
            # The link is claimed first, in the registry: of the controllers that saw
            # this task fail, exactly one starts its retry.
            if not await self.tasks.run(registry.link_retry, record.task_id, new_id):
                record.retried_by = await self.tasks.run(registry.retried_by, record.task_id)
                self.tasks.annotate(live, retried_by=record.retried_by)
                raise _already(record.task_id, record.retried_by or "?")
            try:
                admission = await self.launcher.admit(
                    prepared, request, retry_of=record, not_before=not_before
                )
            except BaseException:
                await self.tasks.run(registry.unlink_retry, record.task_id, new_id)
                raise
            record.retried_by = admission.task_id
            self.tasks.annotate(live, retried_by=admission.task_id)
        return admission

    # -- automatic retries --------------------------------------------------------------

    def _on_final(self, live: Live) -> None:
        record = live.record
        if record.auto_retry <= 0 or record.retried_by is not None:
            return
        names = transient_failures(live.view.progress)
        if not names:
            return
        delay = self.tasks.settings.auto_retry_backoff * 2 ** (record.attempt - 1)
        self.tasks.spawn(self._auto_retry(live, names, delay))

    async def _auto_retry(self, live: Live, names: set[str], delay: float) -> None:
        record = live.record
        try:
            admission = await self._start(
                live,
                names,
                queue=True,
                auto_retry=record.auto_retry - 1,
                not_before=time.time() + delay,
            )
        except Conflict:
            return  # another controller sharing the registry retried it first
        except Exception:
            log.exception("automatic retry of task %s failed to start", record.task_id)
            return
        log.info(
            "task %s retried by %s in %.0f s (%d automatic retries left)",
            record.task_id,
            admission.task_id,
            delay,
            record.auto_retry - 1,
        )


def retry_request(
    original: dict[str, Any], ssh_connection: str, names: set[str], queue: bool, auto_retry: int
) -> InstallRequest:
    """The original request again, for the nodes ``names`` only.

    Every field the declaration marks as carried (``retry=True``) is read back
    from the task's spec by name, so a field added to ``InstallRequest`` later is
    carried without touching this file. Not carried: the node list (what failed
    replaces it, and with it the workflow or snapshot it was resolved from) and
    what the retry sets itself (``queue``, ``auto_retry``'s countdown)."""
    spec = InstallSpec.from_dict(original).to_dict()  # an older spec gets today's defaults
    fields: dict[str, Any] = {name: spec[name] for name in RETRIED_FIELDS if name in spec}
    lock = fields.get("lock")
    if lock is not None:
        # A lock names the nodes: keep its package versions, narrow its nodes.
        fields["lock"] = {**lock, "nodes": [n for n in lock["nodes"] if n["name"] in names]}
    else:
        fields["nodes"] = [
            {key: value for key, value in node.items() if value is not None}
            for node in spec["nodes"]
            if _dir_name(node) in names
        ]
    return InstallRequest.model_validate(
        {**fields, "ssh_connection": ssh_connection, "queue": queue, "auto_retry": auto_retry}
    )


def _dir_name(node: dict[str, Any]) -> str:
    return NodeSpec(node["url"], node.get("ref"), node.get("name")).dir_name


def transient_failures(progress: Progress) -> set[str]:
    """The nodes worth an automatic retry: those that failed for a transient
    reason, or every unfinished node when the whole task failed transiently."""
    if progress.state == "cancelled" or progress.error_code == "cancelled":
        return set()
    names = {
        n.name
        for n in progress.nodes
        if n.status == "failed" and n.error_code in TRANSIENT_NODE_ERROR_CODES
    }
    if progress.state in ("failed", "lost") and progress.error_code in TRANSIENT_TASK_ERRORS:
        # The task died around its nodes: retry what it did not finish, but not a
        # node that already failed for a deterministic reason.
        names |= {
            n.name
            for n in progress.nodes
            if not n.is_final or (n.status in ("failed", "cancelled") and n.error_code is None)
        }
    return names


def _already(task_id: str, retried_by: str) -> Conflict:
    return Conflict(
        f"task {task_id} was already retried by task {retried_by}; retry that one instead",
        task_id=retried_by,
    )
