"""Many instances at once: ``POST /api/fleet`` starts one task per instance through
the task service's normal start path (so its conflict rule, and any queueing or
limits it applies, hold per instance) and remembers them as one fleet;
``GET /api/fleet/{id}`` aggregates their current views.

Every target is checked before any task starts, so a bad fleet changes nothing.
A target that is refused at start (say a 409 because an install already runs
there) does not stop the others: it shows in the fleet as failed, with why.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from controller.common.config import Settings
from controller.common.errors import ControllerError, InvalidRequest, UnknownFleet, UnknownTask
from controller.common.target import parse_target
from controller.core.fleet_store import FleetRecord, FleetStore, Member
from controller.core.registry import home_key
from controller.core.schemas import InstallRequest, parse_body
from controller.core.service import TaskService
from protocol import ProtocolError
from protocol import fields as checks

#: An operator runs fifty; a few hundred is still one request's worth.
MAX_TARGETS = 256
#: Seconds the task -> fleet map is kept when other controllers may add fleets.
SHARED_FLEETS_TTL = 2.0

_STRICT = ConfigDict(extra="forbid", strict=True)


class FleetTarget(BaseModel):
    """One instance: ``ui_home`` and ``python`` override the request's (images differ)."""

    model_config = _STRICT

    ssh_connection: str = Field(max_length=512)
    ui_home: str | None = Field(default=None, max_length=4096)
    python: str | None = Field(default=None, max_length=4096)


class FleetRequest(BaseModel):
    """``POST /api/fleet``: ``targets`` instead of ``ssh_connection``, and every other
    field of the start request (``nodes``, ``workflow``, ``verify``, …), which each
    instance's start request takes as its own and checks the same way."""

    model_config = ConfigDict(extra="allow", strict=True)

    #: Each an ``ssh_connection`` string or a :class:`FleetTarget` object.
    targets: list[Any] = Field(min_length=1, max_length=MAX_TARGETS)
    ui_home: str | None = Field(default=None, max_length=4096)
    python: str | None = Field(default=None, max_length=4096)

    def start_fields(self) -> dict[str, Any]:
        """The start request's fields shared by every instance."""
        extra = dict(self.model_extra or {})
        extra.pop("ssh_connection", None)
        return extra


def _prefixed(field: str, exc: InvalidRequest | ProtocolError) -> InvalidRequest:
    inner = exc.field
    return InvalidRequest(f"{field}.{inner}" if inner else field, exc.message.split(": ", 1)[-1])


def instance_requests(
    request: FleetRequest, settings: Settings | None = None
) -> list[InstallRequest]:
    """One start request per target, each fully checked; :class:`InvalidRequest`
    naming ``targets.N…`` for the first bad one."""
    installs: list[InstallRequest] = []
    seen: dict[tuple[str, str], int] = {}
    shared = request.start_fields()
    for index, raw in enumerate(request.targets):
        where = f"targets.{index}"
        if isinstance(raw, str):
            raw = {"ssh_connection": raw}
        try:
            target = parse_body(FleetTarget, raw)
        except InvalidRequest as exc:
            raise _prefixed(where, exc) from None
        ui_home = target.ui_home or request.ui_home
        if not ui_home:
            raise InvalidRequest(
                f"{where}.ui_home", "is required: give ui_home in the request or in this target"
            )
        python = target.python or request.python
        try:
            machine = parse_target(target.ssh_connection, settings)
            checks.remote_path(ui_home, "ui_home")
            if python is not None:
                checks.python_command(python, "python")
        except (InvalidRequest, ProtocolError) as exc:
            raise _prefixed(where, exc) from None
        fields = {**shared, "ssh_connection": target.ssh_connection, "ui_home": ui_home}
        if python is not None:
            fields["python"] = python
        # The fields every instance shares are checked here for the whole fleet (the
        # launcher checks them again per task).
        install = parse_body(InstallRequest, fields)
        key = (machine.key, home_key(ui_home))
        if key in seen:
            raise InvalidRequest(
                where,
                f"names the same instance and ComfyUI folder as targets.{seen[key]}; "
                "list each once",
            )
        seen[key] = index
        installs.append(install)
    return installs


class Fleets:
    def __init__(self, service: TaskService, store: FleetStore) -> None:
        self.service = service
        self.store = store
        self._task_fleets: dict[str, str] | None = None
        self._task_fleets_mono = 0.0

    async def start(self, request: FleetRequest) -> FleetRecord:
        """Check every target, start one task per instance, persist the fleet."""
        settings = self.service.tasks.settings
        installs = instance_requests(request, settings)
        # Every instance's start is checked (and its sources resolved) before any
        # starts: a bad fleet changes nothing.
        prepared = []
        for index, install in enumerate(installs):
            try:
                prepared.append((await self.service.prepare(install), install))
            except InvalidRequest as exc:
                if len(installs) > 1 and exc.field in ("ui_home", "python"):
                    raise _prefixed(f"targets.{index}", exc) from None
                raise
        record = FleetRecord(str(uuid.uuid4()), time.time(), request.model_dump(mode="json"))
        for start, install in prepared:
            member = Member(target=str(start.target), ui_home=start.spec.ui_home)
            try:
                # Queued when the request says so and its home is busy or a limit
                # is reached; the member's task then starts in its turn.
                member.task_id = (await self.service.admit_prepared(start, install)).task_id
            except ControllerError as exc:
                member.error_code, member.error = exc.code, exc.message
            record.members.append(member)
        await self.service.tasks.run(self.store.add, record)
        if self._task_fleets is not None:
            for member in record.members:
                if member.task_id:
                    self._task_fleets[member.task_id] = record.fleet_id
        return record

    async def _record(self, fleet_id: object) -> FleetRecord:
        if not isinstance(fleet_id, str):
            raise InvalidRequest("fleet_id", "must be a fleet id (a UUID)")
        try:
            canonical = str(uuid.UUID(fleet_id))
        except ValueError:
            raise InvalidRequest("fleet_id", "must be a fleet id (a UUID)") from None
        record = await self.service.tasks.run(self.store.get, canonical)
        if record is None:
            raise UnknownFleet(canonical)
        return record

    async def status(self, fleet_id: object) -> dict[str, Any]:
        """The fleet now: counts over its instances, and each instance's state."""
        record = await self._record(fleet_id)
        instances = await asyncio.gather(*(self._instance(m) for m in record.members))
        return aggregate(record, list(instances))

    async def cancel(self, fleet_id: object) -> dict[str, Any]:
        """Cancel every unfinished install of the fleet (each on its own instance)."""
        record = await self._record(fleet_id)

        async def cancel(member: Member) -> None:
            if member.task_id is None:
                return
            # A refusal shows in that instance's state; the others are still cancelled.
            with contextlib.suppress(ControllerError):
                await self.service.cancel(member.task_id)

        await asyncio.gather(*(cancel(m) for m in record.members))
        return await self.status(record.fleet_id)

    async def _instance(self, member: Member) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "target": member.target,
            "ui_home": member.ui_home,
            "task_id": member.task_id,
        }
        if member.task_id is None:
            return {
                **entry,
                "state": "failed",
                "success": False,
                "error_code": member.error_code,
                "error": f"not started: {member.error}",
            }
        try:
            view = await self.service.progress(member.task_id)
        except UnknownTask:
            return {
                **entry,
                "state": "unknown",
                "success": False,
                "error_code": "unknown_task",
                "error": "the task was removed after the retention period",
            }
        doc = view.progress
        return {
            **entry,
            "state": doc.state,
            "success": doc.succeeded,
            "stale": view.stale,
            "total_nodes": doc.total_nodes,
            "processed": doc.processed,
            "successful": doc.successful,
            "failed": doc.failed,
            "skipped": doc.skipped,
            "current_node": doc.current_node,
            "error_code": doc.error_code,
            "error": doc.error,
        }

    async def task_fleets(self) -> dict[str, str]:
        """task id -> fleet id (cached: fleets only grow while the controller runs;
        with a shared registry, read again every ``SHARED_FLEETS_TTL`` seconds, for
        the fleets other controllers started)."""
        now = time.monotonic()
        if self._task_fleets is None or (
            self.store.db.shared and now - self._task_fleets_mono >= SHARED_FLEETS_TTL
        ):
            self._task_fleets = await self.service.tasks.run(self.store.task_fleets)
            self._task_fleets_mono = now
        return self._task_fleets


def aggregate(record: FleetRecord, instances: list[dict[str, Any]]) -> dict[str, Any]:
    final = {"completed", "failed", "cancelled", "lost", "unknown"}
    running = sum(1 for i in instances if i["state"] not in final)
    completed = sum(1 for i in instances if i["success"])
    cancelled = sum(1 for i in instances if i["state"] == "cancelled")
    failed = len(instances) - running - completed - cancelled
    if running:
        state = "running"
    elif completed == len(instances):
        state = "completed"
    else:
        state = "failed" if failed else "cancelled"
    return {
        "success": True,
        "fleet_id": record.fleet_id,
        "created_at": _iso(record.created_at),
        "state": state,
        # True only once every instance installed every node.
        "all_succeeded": completed == len(instances),
        "instances": len(instances),
        "running": running,
        "completed": completed,
        "failed": failed,
        "cancelled": cancelled,
        "nodes": record.request.get("nodes", []),
        "per_instance": instances,
    }


def _iso(epoch: float) -> str:
    moment = datetime.datetime.fromtimestamp(epoch, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
