"""The registry's hand-written SQLite schema (``PRAGMA user_version`` 1 to 3),
kept so Alembic's first revision can bring an old registry to version 3 in place,
and the summary columns every write fills.

Version 1 is the first release's table. Version 2 adds the queue (``not_before``),
retry links, and summary columns that listings and history read instead of
parsing stored documents; ``pruned`` marks a task whose full document is gone
(past the retention) while its summary stays for the history. Version 3 adds how
a task reaches its machine (``target_route``: key files, jump host), the
controller's own notes on it, and the ``resolutions`` table (how a workflow or
snapshot became its node list). Later changes are Alembic revisions
(``controller/storage/migrations``).
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.engine import Connection

VERSION = 3

_V1 = """
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
    progress_json TEXT
);
CREATE INDEX IF NOT EXISTS tasks_running ON tasks (target_key, ui_home, state);
CREATE INDEX IF NOT EXISTS tasks_created ON tasks (created_at);
CREATE TABLE IF NOT EXISTS resolutions (
    task_id   TEXT PRIMARY KEY,
    plan_json TEXT NOT NULL
);
"""

#: (name, declaration) of every column added since version 1.
ADDED_COLUMNS = (
    ("not_before", "REAL"),
    ("retry_of", "TEXT"),
    ("retried_by", "TEXT"),
    ("attempt", "INTEGER NOT NULL DEFAULT 1"),
    ("auto_retry", "INTEGER NOT NULL DEFAULT 0"),
    ("total_nodes", "INTEGER NOT NULL DEFAULT 0"),
    ("processed", "INTEGER NOT NULL DEFAULT 0"),
    ("successful", "INTEGER NOT NULL DEFAULT 0"),
    ("failed", "INTEGER NOT NULL DEFAULT 0"),
    ("skipped", "INTEGER NOT NULL DEFAULT 0"),
    ("current_node", "TEXT"),
    ("error", "TEXT"),
    ("error_code", "TEXT"),
    ("updated_at", "TEXT"),
    ("node_summary", "TEXT"),
    ("pruned", "INTEGER NOT NULL DEFAULT 0"),
    # version 3
    ("target_route", "TEXT"),
    ("notes_json", "TEXT"),
)

_V2_INDEXES = """
CREATE INDEX IF NOT EXISTS tasks_page ON tasks (pruned, created_at, task_id);
CREATE INDEX IF NOT EXISTS tasks_home_history ON tasks (target_key, ui_home, created_at);
CREATE INDEX IF NOT EXISTS tasks_finished ON tasks (finished_at);
"""

#: The longest error text kept in a summary column.
SUMMARY_ERROR_CHARS = 500


def summary_values(progress_json: str | None) -> dict[str, Any]:
    """The summary columns for a stored document (one parse, at write time)."""
    if not progress_json:
        return {}
    doc = json.loads(progress_json)
    error = doc.get("error")
    return {
        "total_nodes": doc.get("total_nodes", 0),
        "processed": doc.get("processed", 0),
        "successful": doc.get("successful", 0),
        "failed": doc.get("failed", 0),
        "skipped": doc.get("skipped", 0),
        "current_node": doc.get("current_node"),
        "error": error[-SUMMARY_ERROR_CHARS:] if isinstance(error, str) else None,
        "error_code": doc.get("error_code"),
        "updated_at": doc.get("updated_at"),
        "node_summary": json.dumps(
            [
                [
                    n.get("name"),
                    n.get("url"),
                    n.get("ref"),
                    n.get("status"),
                    n.get("commit"),
                    n.get("error_code"),
                ]
                for n in doc.get("nodes", [])
            ],
            separators=(",", ":"),
        ),
    }


def upgrade_legacy(conn: Connection) -> None:
    """Bring a registry written before Alembic to version 3, in the caller's
    transaction (Alembic's revision 0001 calls this; a column already there is
    left as it is)."""
    for statement in _V1.split(";"):
        if statement.strip():
            conn.exec_driver_sql(statement)
    present = {row[1] for row in conn.exec_driver_sql("PRAGMA table_info(tasks)")}
    for name, declaration in ADDED_COLUMNS:
        if name not in present:
            conn.exec_driver_sql(f"ALTER TABLE tasks ADD COLUMN {name} {declaration}")
    for statement in _V2_INDEXES.split(";"):
        if statement.strip():
            conn.exec_driver_sql(statement)
    if present >= {name for name, _ in ADDED_COLUMNS}:
        return  # already version 3: its summaries were filled when they were added
    # Rows of version 1: fill their summaries once, here, so no listing ever
    # parses a stored document again.
    rows = conn.exec_driver_sql(
        "SELECT task_id, progress_json FROM tasks WHERE progress_json IS NOT NULL"
    ).fetchall()
    for task_id, progress_json in rows:
        values = summary_values(progress_json)
        assignments = ", ".join(f"{name} = ?" for name in values)
        conn.exec_driver_sql(
            f"UPDATE tasks SET {assignments} WHERE task_id = ?",  # noqa: S608
            (*values.values(), task_id),
        )
