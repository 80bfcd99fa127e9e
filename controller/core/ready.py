"""Whether a workflow can run on an instance: the classes it needs, and
``POST /api/ready`` (the agent asks the running ComfyUI's ``/object_info`` there)."""

from __future__ import annotations

import json
from typing import Any

from controller.common.errors import InvalidRequest, RemoteError
from controller.common.target import parse_target
from controller.core.access import check_start
from controller.core.live import Tasks
from controller.core.schemas import ReadyRequest
from controller.core.sources import workflow as workflows
from controller.core.sources.errors import SourceError
from controller.core.sources.resolver import FRONTEND_ONLY
from protocol import ExitCode, ProtocolError, ReadyResult
from protocol import fields as checks


def workflow_classes(data: object) -> list[str]:
    """The backend classes ``data`` (a workflow) needs, first use first: every class it
    places except the ones the frontend draws itself (a Note needs no server)."""
    try:
        uses = workflows.node_uses(data)
    except SourceError as exc:
        raise InvalidRequest(exc.field, exc.message) from None
    out: list[str] = []
    for use in uses:
        if use.class_type not in FRONTEND_ONLY and use.class_type not in out:
            out.append(use.class_type)
    return out


async def ask(tasks: Tasks, request: ReadyRequest) -> dict[str, Any]:
    """``ready`` of the instance's running ComfyUI (``protocol.ReadyResult`` as a dict)."""
    target = parse_target(request.ssh_connection, tasks.settings)
    check_start(tasks.settings, target)  # 'local' runs the agent here: opt-in
    try:
        ui_home = checks.remote_path(request.ui_home, "ui_home")
    except ProtocolError as exc:
        raise InvalidRequest(exc.field, exc.message) from None
    classes = workflow_classes(request.workflow) if request.workflow is not None else []
    transport = tasks.transports.get(target)
    args = ["ready", "--ui-home", ui_home, "--classes", "-", "--timeout", str(request.timeout)]
    reply = await tasks.run(
        transport.run_agent,
        args,
        stdin=json.dumps(classes).encode(),
        timeout=tasks.settings.command_timeout + request.timeout,
    )
    document = reply.document
    found = document.get("ready")
    if reply.exit_status in (ExitCode.OK, ExitCode.INSTALL_FAILED) and isinstance(found, dict):
        try:
            return ReadyResult.from_dict(found).to_dict()
        except ProtocolError as exc:
            raise RemoteError(f"the agent on {target} answered a bad ready: {exc}") from None
    message = str(document.get("message") or document.get("error") or "no message")
    if reply.exit_status == ExitCode.INVALID:
        field = document.get("field")
        raise InvalidRequest(field if isinstance(field, str) else "", message)
    raise RemoteError(
        f"the agent on {target} could not ask ComfyUI in {ui_home} "
        f"(exit {reply.exit_status}): {message}"
    )
