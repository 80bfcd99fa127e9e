"""The history: what was installed where, when, with what result, and by which
retry chain. Read from the registry's summary columns, so it outlives the
retention of full documents (``history_days``) and never parses a document."""

from __future__ import annotations

import json
from typing import Any

from controller.common.errors import InvalidRequest
from controller.common.target import parse_target
from controller.core.live import Tasks
from controller.core.reader import make_cursor, parse_cursor, summary
from protocol.progress import parse_time

DEFAULT_LIMIT = 50
_NODE_FIELDS = ("name", "url", "ref", "status", "commit", "error_code")
MAX_LIMIT = 200


async def history(
    tasks: Tasks,
    *,
    target: str | None = None,
    ui_home: str | None = None,
    limit: int = DEFAULT_LIMIT,
    before: str | None = None,
) -> dict[str, Any]:
    """Tasks newest first, each with its nodes; ``before`` is a ``next_before`` of
    an earlier page or an ISO 8601 time (``2026-11-01T00:00:00.000Z``)."""
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest("limit", f"must be from 1 to {MAX_LIMIT}")
    target_key = parse_target(target).key if target else None
    if ui_home is not None and not ui_home.startswith("/"):
        raise InvalidRequest("ui_home", "must be an absolute path, as the installs gave it")
    cursor: tuple[float, str] | None = None
    before_time: float | None = None
    if before:
        if "T" in before and before.endswith("Z"):
            try:
                before_time = parse_time(before).timestamp()
            except ValueError:
                raise InvalidRequest(
                    "before", "must look like 2026-01-31T12:00:00.000Z, or be a next_before"
                ) from None
        else:
            cursor = parse_cursor(before)
    rows = await tasks.run(
        tasks.registry.page,
        limit + 1,
        cursor,
        pruned=None,
        target_key=target_key,
        ui_home=ui_home,
        before_time=before_time,
        with_nodes=True,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    entries = []
    for row in rows:
        live = tasks.live.get(row["task_id"])
        entry = summary(row, live.view.progress if live else None)
        if live is not None:
            entry["retried_by"] = live.record.retried_by
            nodes = [
                [n.name, n.url, n.ref, n.status, n.commit, n.error_code]
                for n in live.view.progress.nodes
            ]
        else:
            nodes = json.loads(row["node_summary"] or "[]")
        entry["nodes"] = [dict(zip(_NODE_FIELDS, node, strict=False)) for node in nodes]
        entries.append(entry)
    return {"tasks": entries, "next_before": make_cursor(rows[-1]) if more and rows else None}
