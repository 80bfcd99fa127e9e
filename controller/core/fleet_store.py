"""Fleets in the registry's database: which tasks one ``POST /api/fleet``
started (a table pair of their own, beside the tasks).

Blocking: the fleet service calls it in the app's executor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from controller.storage import tables
from controller.storage.database import Database, sqlite_url

_F = tables.fleets
_M = tables.fleet_members


@dataclass
class Member:
    """One instance of a fleet: its task, or why no task was started there."""

    target: str
    ui_home: str
    task_id: str | None = None
    error_code: str | None = None
    error: str | None = None


@dataclass
class FleetRecord:
    fleet_id: str
    created_at: float
    request: dict[str, Any]
    members: list[Member] = field(default_factory=list)


class FleetStore:
    """``FleetStore(path)`` opens a SQLite file and ``FleetStore(url)`` any
    database (closed with it); ``FleetStore(database)`` shares the registry's."""

    def __init__(self, where: Path | str | Database) -> None:
        self._own = not isinstance(where, Database)
        if isinstance(where, Database):
            self.db = where
        else:
            self.db = Database(sqlite_url(where) if isinstance(where, Path) else where)

    def close(self) -> None:
        if self._own:
            self.db.close()

    def add(self, record: FleetRecord) -> None:
        with self.db.begin() as conn:
            conn.execute(
                sa.insert(_F).values(
                    fleet_id=record.fleet_id,
                    created_at=record.created_at,
                    request_json=json.dumps(record.request),
                )
            )
            if record.members:
                conn.execute(
                    sa.insert(_M),
                    [
                        {
                            "fleet_id": record.fleet_id,
                            "position": i,
                            "target": m.target,
                            "ui_home": m.ui_home,
                            "task_id": m.task_id,
                            "error_code": m.error_code,
                            "error": m.error,
                        }
                        for i, m in enumerate(record.members)
                    ],
                )

    def get(self, fleet_id: str) -> FleetRecord | None:
        with self.db.begin() as conn:
            row = conn.execute(
                sa.select(_F.c.fleet_id, _F.c.created_at, _F.c.request_json).where(
                    _F.c.fleet_id == fleet_id
                )
            ).first()
            if row is None:
                return None
            members = conn.execute(
                sa.select(_M.c.target, _M.c.ui_home, _M.c.task_id, _M.c.error_code, _M.c.error)
                .where(_M.c.fleet_id == fleet_id)
                .order_by(_M.c.position)
            ).fetchall()
        return FleetRecord(row[0], row[1], json.loads(row[2]), [Member(*m) for m in members])

    def task_fleets(self) -> dict[str, str]:
        """task id -> fleet id, for every task started as part of a fleet."""
        with self.db.begin() as conn:
            rows = conn.execute(
                sa.select(_M.c.task_id, _M.c.fleet_id).where(_M.c.task_id.is_not(None))
            ).fetchall()
        return {task_id: fleet_id for task_id, fleet_id in rows}
