"""A start request's ``plan``: the plan task's final document turned into the
spec's nodes (its commits) and ``expect`` (what the agent checks for drift, and
the package versions it pins). Only a plan that completed (no broken policy; nodes
that would fail are left out of its nodes) can be applied, and only to the home it
was made for."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

from controller.common.errors import InvalidRequest
from controller.common.target import Target
from protocol import Progress, ProtocolError
from protocol import fields as checks

#: Reads a task's current document and its spec (the service's shared reader).
ReadProgress = Callable[[str], Awaitable[tuple[Progress, dict[str, Any]]]]
#: What an apply takes from the plan's own spec when the request leaves it unset:
#: the same interpreter, package sources and installer resolve to the same set.
INHERITED = ("python", "pip_args", "installer")


async def applied(
    plan: str | dict[str, Any], target: Target, ui_home: str, read: ReadProgress
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """``(nodes, expect, inherited)`` for the spec; an :class:`InvalidRequest` naming
    ``plan``. ``inherited``: the plan task's own ``INHERITED`` settings (by id only)."""
    inherited: dict[str, Any] = {}
    if isinstance(plan, str):
        try:
            task_id = checks.task_id(plan, "plan")
        except ProtocolError as exc:
            raise InvalidRequest("plan", f"{exc.message} (a plan's task id)") from None
        doc, spec = await read(task_id)
        inherited = {k: spec[k] for k in INHERITED if spec.get(k) is not None}
    else:
        try:
            # The saved answer carries the API's keys beside the document's own.
            known = {f.name for f in dataclasses.fields(Progress)}
            doc = Progress.from_dict({k: v for k, v in plan.items() if k in known})
        except ProtocolError as exc:
            where = f"plan.{exc.field}" if exc.field else "plan"
            raise InvalidRequest(where, f"not a plan's saved document: {exc.message}") from None
    body = doc.plan
    if body is None:
        raise InvalidRequest("plan", f"task {doc.task_id} is an install, not a plan")
    # A plan whose nodes would partly fail still completed: its apply installs the rest
    # (the culprits are out of its nodes), as the install would have.
    if doc.state != "completed":
        why = doc.error or doc.state
        raise InvalidRequest(
            "plan", f"plan {doc.task_id} did not succeed ({doc.state}: {why}); nothing to apply"
        )
    if checks.remote_path(ui_home, "ui_home") != doc.ui_home:
        raise InvalidRequest(
            "plan", f"plan {doc.task_id} was made for {doc.ui_home}, not {ui_home}"
        )
    try:
        nodes = list(body["apply"]["nodes"])
        expect = {
            "plan_id": doc.task_id,
            "heads": dict(body["environment"]["heads"]),
            "packages": dict(body["environment"]["packages"]),
            "pins": dict(body["apply"]["pins"]),
        }
    except (KeyError, TypeError):
        raise InvalidRequest("plan", f"plan {doc.task_id} has no 'apply' section") from None
    if not nodes:
        raise InvalidRequest("plan", f"plan {doc.task_id} installs no node")
    del target  # the agent's own drift check covers the machine; the home is checked here
    return nodes, expect, inherited
