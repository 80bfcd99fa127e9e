"""Starting a task (register it, then launch the agent in the background) and
stopping one: everything that runs an agent command that changes the machine."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from controller.common.errors import (
    Conflict,
    ControllerError,
    InvalidRequest,
    RemoteError,
    UnknownTask,
)
from controller.common.target import Target, parse_target
from controller.core.access import check_start
from controller.core.applied_plan import ReadProgress, applied
from controller.core.live import Live, Tasks, TaskView
from controller.core.ready import workflow_classes
from controller.core.registry import TaskRecord
from controller.core.scheduler import Admission, Scheduler
from controller.core.schemas import SPEC_FIELDS, InstallRequest
from controller.core.sources.merge import Sources
from controller.core.sources.service import SourceService
from protocol import ExitCode, InstallSpec, Progress, ProtocolError
from protocol import fields as checks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """A start request checked and resolved: where, the agent's spec, and the selection."""

    target: Target
    spec: InstallSpec
    resolution: dict[str, Any] | None = None


class Launcher:
    def __init__(self, tasks: Tasks, sources: SourceService) -> None:
        self.tasks = tasks
        self.sources = sources
        self.scheduler = Scheduler(tasks, self._launch_live)

    #: Reads a task's document, for a request that applies a plan (set by the service).
    read_progress: ReadProgress | None = None

    async def prepare(
        self, request: InstallRequest, target: Target | None = None, *, mode: str = "install"
    ) -> Prepared:
        """Everything a start checks and resolves, with nothing registered or run yet:
        a bad request is an :class:`InvalidRequest` that changed nothing. ``target``
        (a retry's) stands for the request's ``ssh_connection`` when given."""
        tasks = self.tasks
        target = target or parse_target(request.ssh_connection, tasks.settings)
        check_start(tasks.settings, target)
        task_id = checks.new_task_id()
        pip_args = (
            request.pip_args if request.pip_args is not None else tasks.settings.default_pip_args
        )
        nodes = request.nodes
        resolution = None
        expect = None
        inherited: dict[str, Any] = {}
        sources = Sources(request.nodes, request.workflow, request.snapshot)
        if request.plan is not None:
            if mode == "plan":
                raise InvalidRequest("plan", "a plan cannot apply another plan")
            if not sources.empty or request.lock is not None:
                raise InvalidRequest(
                    "plan", "the plan names the nodes: give nodes (or a lock) or a plan, not both"
                )
            if self.read_progress is None:
                raise InvalidRequest("plan", "this controller cannot read plans")
            nodes, expect, inherited = await applied(
                request.plan, target, request.ui_home, self.read_progress
            )
        elif request.lock is None and not sources.plain:
            # A workflow, snapshot, registry ids or the configured default: resolved
            # here, before the 202, so a bad source is a 400 that changed nothing.
            selection = await self.sources.selection_for_start(
                sources, target, request.ui_home, request.strict
            )
            nodes = [choice.node() for choice in selection.nodes]
            resolution = selection.to_dict()
        # Every field the declaration says reaches the spec, by its own name.
        fields: dict[str, object] = {name: getattr(request, name) for name in SPEC_FIELDS}
        fields["pip_args"] = pip_args
        fields["mode"] = mode
        if request.plan is not None:
            for name, value in inherited.items():
                if name not in request.model_fields_set:
                    fields[name] = value
        if expect is not None:
            fields["expect"] = expect
        if nodes is None:  # a lock names the nodes
            fields.pop("nodes")
        else:
            fields["nodes"] = nodes
        if request.ready_classes is None:
            # What the restarted ComfyUI must list for the workflow to run (a retry
            # gives the original's: its workflow is gone).
            fields["ready_classes"] = (
                workflow_classes(request.workflow) if request.workflow is not None else []
            )
        try:
            spec = InstallSpec.from_dict({**fields, "task_id": task_id})
        except ProtocolError as exc:
            raise InvalidRequest(exc.field, exc.message) from None
        return Prepared(target, spec, resolution)

    async def start(
        self,
        request: InstallRequest,
        *,
        queue: bool | None = None,
        auto_retry: int | None = None,
        retry_of: TaskRecord | None = None,
        not_before: float | None = None,
        target: Target | None = None,
    ) -> Admission:
        """Register a task and launch it in the background, or queue it; answers at
        once. ``queue``/``auto_retry`` default to the request's; ``retry_of`` links
        the new task to the one it retries (the caller links the other way)."""
        prepared = await self.prepare(request, target)
        return await self.admit(
            prepared,
            request,
            queue=queue,
            auto_retry=auto_retry,
            retry_of=retry_of,
            not_before=not_before,
        )

    async def admit(
        self,
        prepared: Prepared,
        request: InstallRequest,
        *,
        queue: bool | None = None,
        auto_retry: int | None = None,
        retry_of: TaskRecord | None = None,
        not_before: float | None = None,
    ) -> Admission:
        """Register a prepared task: launched now, queued, or refused (409/429)."""
        target, spec = prepared.target, prepared.spec
        record = TaskRecord(
            task_id=spec.task_id,
            target=target,
            ui_home=spec.ui_home,
            spec=spec.to_dict(),
            created_at=time.time(),
            notes=[
                f"ignored ssh option {option!r}: it does not change where or how nodeferry connects"
                for option in target.ignored
            ],
            resolution=prepared.resolution,
            not_before=not_before,
            retry_of=retry_of.task_id if retry_of else None,
            attempt=retry_of.attempt + 1 if retry_of else 1,
            auto_retry=request.auto_retry if auto_retry is None else auto_retry,
        )
        return await self.scheduler.admit(record, queue=request.queue if queue is None else queue)

    async def _launch_live(self, live: Live) -> None:
        await self._launch(live, InstallSpec.from_dict(live.record.spec))

    async def _launch(self, live: Live, spec: InstallSpec) -> None:
        tasks = self.tasks
        record = live.record
        transport = tasks.transports.get(record.target)
        try:
            reply = await tasks.run_on(
                record.target,
                transport.run_agent,
                ["start", "--spec", "-"],
                stdin=spec.to_json().encode(),
                timeout=tasks.settings.command_timeout,
            )
        except ControllerError as exc:
            await tasks.fail(live, "start_failed", f"could not start the install: {exc.message}")
            return
        except Exception as exc:
            log.exception("starting task %s failed", record.task_id)
            await tasks.fail(live, "start_failed", f"could not start the install: {exc}")
            return
        document = reply.document
        if reply.exit_status == ExitCode.OK:
            record.launched = True
            await tasks.run(
                tasks.registry.save_progress, record.task_id, live.view.progress, None, True
            )
            live.read_mono = 0.0  # the next reader fetches the agent's first document
            return
        message = str(document.get("message") or document.get("error") or "no message")
        if (
            reply.exit_status == ExitCode.INVALID
            and document.get("field") == "task_id"
            and "already exists" in message
        ):
            # A take-over: the controller that died had launched it after all. The
            # agent refused a second start; follow the one that runs.
            log.info("task %s was already launched; following it", record.task_id)
            record.launched = True
            await tasks.run(
                tasks.registry.save_progress, record.task_id, live.view.progress, None, True
            )
            live.read_mono = 0.0
            return
        if reply.exit_status == ExitCode.CONFLICT:
            holder = document.get("task_id")
            await tasks.fail(
                live,
                "conflict",
                f"another install (task {holder}) is running in {spec.ui_home} on "
                f"{record.target}; nothing was installed by this task",
            )
        elif reply.exit_status == ExitCode.INVALID:
            field_name = document.get("field")
            await tasks.fail(
                live, "invalid_spec", f"the agent refused the spec: {field_name}: {message}"
            )
        else:
            stderr = reply.result.stderr.decode("utf-8", "replace").strip()[-500:]
            await tasks.fail(
                live,
                "start_failed",
                f"the agent failed to start (exit {reply.exit_status}): {message}"
                + (f"; stderr: {stderr}" if stderr else ""),
            )

    async def cancel(self, task_id: object) -> TaskView:
        tasks = self.tasks
        live = await tasks.get(task_id)
        if live.record.state == "queued":
            view = await self.scheduler.cancel_queued(live)
            if view is not None:
                return view
        if live.launch is not None and not live.launch.done():
            await asyncio.shield(live.launch)
        if not live.record.launched and not live.view.progress.is_final:
            await tasks.sync(live)
            if not live.record.launched and not live.view.progress.is_final:
                raise Conflict(
                    f"task {live.record.task_id} is being started by another controller; "
                    "cancel it again in a moment",
                    task_id=live.record.task_id,
                )
        if live.view.progress.is_final:
            return live.view
        record = live.record
        transport = tasks.transports.get(record.target)
        reply = await tasks.run_on(
            record.target,
            transport.run_agent,
            ["cancel", "--task-id", record.task_id],
            timeout=tasks.settings.command_timeout,
        )
        if reply.exit_status == ExitCode.UNKNOWN_TASK:
            raise UnknownTask(record.task_id)
        if reply.exit_status != ExitCode.OK:
            raise RemoteError(
                f"the agent could not cancel task {record.task_id}: "
                f"{reply.document.get('message', 'exit status ' + str(reply.exit_status))}"
            )
        return await tasks.publish(live, Progress.from_dict(reply.document))
