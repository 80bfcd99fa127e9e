"""Fleets on disk: which tasks one ``POST /api/fleet`` started, in the registry's
SQLite database (a table pair of its own, its own connection; WAL lets both
connections share the file).

Blocking: the fleet service calls it in the app's executor.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS fleets (
    fleet_id     TEXT PRIMARY KEY,
    created_at   REAL NOT NULL,
    request_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS fleet_members (
    fleet_id   TEXT NOT NULL REFERENCES fleets (fleet_id) ON DELETE CASCADE,
    position   INTEGER NOT NULL,
    target     TEXT NOT NULL,
    ui_home    TEXT NOT NULL,
    task_id    TEXT,
    error_code TEXT,
    error      TEXT,
    PRIMARY KEY (fleet_id, position)
);
CREATE INDEX IF NOT EXISTS fleet_members_task ON fleet_members (task_id);
"""


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
    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, record: FleetRecord) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT INTO fleets (fleet_id, created_at, request_json) VALUES (?, ?, ?)",
                    (record.fleet_id, record.created_at, json.dumps(record.request)),
                )
                self._db.executemany(
                    "INSERT INTO fleet_members (fleet_id, position, target, ui_home, task_id, "
                    "error_code, error) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (record.fleet_id, i, m.target, m.ui_home, m.task_id, m.error_code, m.error)
                        for i, m in enumerate(record.members)
                    ],
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def get(self, fleet_id: str) -> FleetRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT fleet_id, created_at, request_json FROM fleets WHERE fleet_id = ?",
                (fleet_id,),
            ).fetchone()
            if row is None:
                return None
            members = self._db.execute(
                "SELECT target, ui_home, task_id, error_code, error FROM fleet_members "
                "WHERE fleet_id = ? ORDER BY position",
                (fleet_id,),
            ).fetchall()
        return FleetRecord(row[0], row[1], json.loads(row[2]), [Member(*m) for m in members])

    def task_fleets(self) -> dict[str, str]:
        """task id -> fleet id, for every task started as part of a fleet."""
        with self._lock:
            rows = self._db.execute(
                "SELECT task_id, fleet_id FROM fleet_members WHERE task_id IS NOT NULL"
            ).fetchall()
        return {task_id: fleet_id for task_id, fleet_id in rows}
