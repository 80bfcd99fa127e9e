"""The task registry: every task this controller started, durable in SQLite.

Blocking: the service calls it in the app's executor. One connection guarded by
a lock is plenty for the handful of writes an install makes.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.core.target import Target
from protocol import FINAL_STATES, Progress

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id     TEXT PRIMARY KEY,
    target_kind TEXT NOT NULL,
    target_user TEXT NOT NULL,
    target_host TEXT NOT NULL,
    target_port INTEGER NOT NULL,
    target_key  TEXT NOT NULL,
    ui_home     TEXT NOT NULL,
    spec_json   TEXT NOT NULL,
    created_at  REAL NOT NULL,
    finished_at REAL,
    state       TEXT NOT NULL,
    launched    INTEGER NOT NULL DEFAULT 0,
    progress_json TEXT,
    target_route TEXT,
    notes_json  TEXT
);
CREATE INDEX IF NOT EXISTS tasks_running ON tasks (target_key, ui_home, state);
CREATE INDEX IF NOT EXISTS tasks_created ON tasks (created_at);
-- How a task's node list was resolved from a workflow, snapshot or registry ids
-- (issue 10); a table of its own so databases from before it need no migration.
CREATE TABLE IF NOT EXISTS resolutions (
    task_id   TEXT PRIMARY KEY,
    plan_json TEXT NOT NULL
);
"""

#: Columns newer than the first schema, added to older databases on open.
_ADDED_COLUMNS = {"target_route": "TEXT", "notes_json": "TEXT"}

_FINAL = tuple(sorted(FINAL_STATES))
# Only placeholders are formatted into these; every value is a bound parameter.
_NOT_FINAL = "state NOT IN ({})".format(",".join("?" * len(_FINAL)))
_COLUMNS = (
    "task_id, target_kind, target_user, target_host, target_port, target_key, ui_home, "
    "spec_json, created_at, finished_at, state, launched, progress_json, target_route, notes_json"
)
_SELECT = (
    "SELECT " + _COLUMNS + ", (SELECT plan_json FROM resolutions r WHERE r.task_id = "  # noqa: S608
    "tasks.task_id) FROM tasks "
)
_INSERT = "INSERT INTO tasks (" + _COLUMNS + ") VALUES (" + ",".join("?" * 15) + ")"  # noqa: S608
_RUNNING = "SELECT task_id FROM tasks WHERE target_key = ? AND ui_home = ? AND " + _NOT_FINAL  # noqa: S608


@dataclass
class TaskRecord:
    task_id: str
    target: Target
    ui_home: str
    spec: dict[str, Any]
    created_at: float
    state: str = "starting"
    finished_at: float | None = None
    #: The agent confirmed the start (its worker wrote a first document).
    launched: bool = False
    progress: Progress | None = None
    #: What the controller itself has to say about the task (options it ignored,
    #: why it failed before the agent ran), shown with the agent's log.
    notes: list[str] = field(default_factory=list)
    #: The resolution plan when the nodes came from a workflow, snapshot or registry ids.
    resolution: dict[str, Any] | None = None

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES


def home_key(ui_home: str) -> str:
    """``/a/b/`` and ``/a/b`` are one ComfyUI."""
    return ui_home.rstrip("/") or "/"


class Registry:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Columns added since the first release, for data dirs made before them."""
        have = {row[1] for row in self._db.execute("PRAGMA table_info(tasks)")}
        for name, kind in _ADDED_COLUMNS.items():
            if name not in have:
                self._db.execute(f"ALTER TABLE tasks ADD COLUMN {name} {kind}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @staticmethod
    def _record(row: sqlite3.Row | tuple[Any, ...]) -> TaskRecord:
        (task_id, kind, user, host, port, _key, ui_home, spec_json, created_at, finished_at,
         state, launched, progress_json, route_json, notes_json, plan_json) = row  # fmt: skip
        return TaskRecord(
            task_id=task_id,
            target=Target.from_route(kind, user, host, port, json.loads(route_json or "{}")),
            ui_home=ui_home,
            spec=json.loads(spec_json),
            created_at=created_at,
            finished_at=finished_at,
            state=state,
            launched=bool(launched),
            progress=Progress.from_json(progress_json) if progress_json else None,
            notes=json.loads(notes_json or "[]"),
            resolution=json.loads(plan_json) if plan_json else None,
        )

    @staticmethod
    def _row(record: TaskRecord) -> tuple[Any, ...]:
        target = record.target
        return (
            record.task_id,
            target.kind,
            target.user,
            target.host,
            target.port,
            target.key,
            home_key(record.ui_home),
            json.dumps(record.spec),
            record.created_at,
            record.finished_at,
            record.state,
            int(record.launched),
            record.progress.to_json() if record.progress else None,
            json.dumps(target.route()) if target.route() else None,
            json.dumps(record.notes) if record.notes else None,
        )

    def add_if_free(self, record: TaskRecord) -> str | None:
        """Insert ``record`` unless a task on the same machine and ComfyUI home is not
        finished; then return that task's id and insert nothing."""
        target = record.target
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    _RUNNING + " ORDER BY created_at DESC LIMIT 1",
                    (target.key, home_key(record.ui_home), *_FINAL),
                ).fetchone()
                if row is not None:
                    self._db.execute("ROLLBACK")
                    return str(row[0])
                self._db.execute(_INSERT, self._row(record))
                if record.resolution is not None:
                    self._db.execute(
                        "INSERT OR REPLACE INTO resolutions (task_id, plan_json) VALUES (?, ?)",
                        (record.task_id, json.dumps(record.resolution)),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return None

    def adopt(self, record: TaskRecord) -> None:
        """Insert a task found on a machine (no conflict check: it already runs there)."""
        with self._lock:
            self._db.execute(_INSERT.replace("INSERT", "INSERT OR IGNORE", 1), self._row(record))

    def get(self, task_id: str) -> TaskRecord | None:
        with self._lock:
            row = self._db.execute(
                _SELECT + "WHERE task_id = ?",
                (task_id,),
            ).fetchone()
        return self._record(row) if row else None

    def is_running(self, target: Target, ui_home: str) -> str | None:
        with self._lock:
            row = self._db.execute(
                _RUNNING + " LIMIT 1",
                (target.key, home_key(ui_home), *_FINAL),
            ).fetchone()
        return str(row[0]) if row else None

    def save_progress(
        self, task_id: str, progress: Progress, finished_at: float | None, launched: bool
    ) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE tasks SET state = ?, progress_json = ?, finished_at = ?, launched = ? "
                "WHERE task_id = ?",
                (progress.state, progress.to_json(), finished_at, int(launched), task_id),
            )

    def all(self, limit: int = 1000) -> list[TaskRecord]:
        """Newest first."""
        with self._lock:
            rows = self._db.execute(
                _SELECT + "ORDER BY created_at DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [self._record(row) for row in rows]

    def unfinished(self) -> list[TaskRecord]:
        with self._lock:
            rows = self._db.execute(
                _SELECT + "WHERE " + _NOT_FINAL + " ORDER BY created_at",
                _FINAL,
            ).fetchall()
        return [self._record(row) for row in rows]

    def finished_before(self, cutoff: float) -> list[TaskRecord]:
        with self._lock:
            rows = self._db.execute(
                _SELECT + "WHERE finished_at IS NOT NULL AND finished_at < ? ORDER BY finished_at",
                (cutoff,),
            ).fetchall()
        return [self._record(row) for row in rows]

    def add_notes(self, task_id: str, notes: list[str]) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE tasks SET notes_json = ? WHERE task_id = ?", (json.dumps(notes), task_id)
            )

    def delete(self, task_ids: list[str]) -> None:
        with self._lock:
            self._db.executemany("DELETE FROM tasks WHERE task_id = ?", [(t,) for t in task_ids])
            self._db.executemany(
                "DELETE FROM resolutions WHERE task_id = ?", [(t,) for t in task_ids]
            )
