"""The task registry: every task this controller started, durable in SQLite.

Blocking: the service calls it in the app's executor. One connection guarded by
a lock is plenty for the handful of writes an install makes.

Storage is bounded: a stored document is compact JSON with long error texts
cut (:func:`stored_document`), listings and history read summary columns
written beside it (never the documents), and past the retention only the
summary stays (``pruned``) until ``history_days`` have passed.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.common.target import Target
from controller.core.registry_schema import SUMMARY_ERROR_CHARS, migrate, summary_values
from protocol import FINAL_STATES, Progress

#: A stored document larger than this loses its nodes' error texts beyond a short
#: tail; an install has at most 500 nodes, so that bounds what one task stores.
MAX_STORED_DOCUMENT = 256 * 1024
#: Error texts (the tail of a failed command) kept in a stored document.
NODE_ERROR_CHARS = 2000
TASK_ERROR_CHARS = 4000

_FINAL = tuple(sorted(FINAL_STATES))
# Only placeholders are formatted into these; every value is a bound parameter.
_NOT_FINAL = "state NOT IN ({})".format(",".join("?" * len(_FINAL)))
_COLUMNS = (
    "task_id, target_kind, target_user, target_host, target_port, target_key, ui_home, "
    "spec_json, created_at, finished_at, state, launched, progress_json, "
    "not_before, retry_of, retried_by, attempt, auto_retry, target_route, notes_json"
)
#: The columns a listing row carries (``page()``), written beside each stored document.
SUMMARY_FIELDS = (
    "total_nodes",
    "processed",
    "successful",
    "failed",
    "skipped",
    "current_node",
    "error",
    "error_code",
    "updated_at",
)
#: The history's nodes too, read only on request.
_SUMMARY_COLUMNS = (*SUMMARY_FIELDS, "node_summary")
# The resolution (the selected nodes) has a table of its own (written once, read with it).
_SELECT = (
    "SELECT " + _COLUMNS + ", (SELECT plan_json FROM resolutions r WHERE r.task_id = "  # noqa: S608
    "tasks.task_id) FROM tasks "
)
_ALL_COLUMNS = _COLUMNS + ", " + ", ".join(_SUMMARY_COLUMNS)
_PLACEHOLDERS = ",".join("?" * (20 + len(_SUMMARY_COLUMNS)))
_INSERT = f"INSERT INTO tasks ({_ALL_COLUMNS}) VALUES ({_PLACEHOLDERS})"  # noqa: S608
_RUNNING = "SELECT task_id FROM tasks WHERE target_key = ? AND ui_home = ? AND " + _NOT_FINAL  # noqa: S608
#: What a listing shows of a task, without its document (nor its nodes).
_SUMMARY_SELECT = (
    "SELECT task_id, target_kind, target_user, target_host, target_port, ui_home, "
    "created_at, finished_at, state, retry_of, retried_by, attempt, auto_retry, "
    + ", ".join(SUMMARY_FIELDS)
)


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
    #: The selected nodes, when they came from a workflow, snapshot or registry ids.
    resolution: dict[str, Any] | None = None
    #: A queued task does not start before this time (an automatic retry's backoff).
    not_before: float | None = None
    #: The task this one retries, and the task that retried this one.
    retry_of: str | None = None
    retried_by: str | None = None
    #: 1 for a first install, 2 for its first retry, …
    attempt: int = 1
    #: Automatic retries left for transient failures.
    auto_retry: int = 0

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES


_COUNTS = frozenset({"total_nodes", "processed", "successful", "failed", "skipped"})


def stored_document(progress: Progress) -> str:
    """``progress`` as the registry stores it: compact JSON, error texts cut to
    their tails (where a failed command's last lines are), and cut harder when
    the document is still larger than :data:`MAX_STORED_DOCUMENT`."""
    doc = progress.to_dict()
    for limit in (NODE_ERROR_CHARS, 200, 0):
        if isinstance(doc.get("error"), str):
            doc["error"] = _tail(doc["error"], TASK_ERROR_CHARS if limit else SUMMARY_ERROR_CHARS)
        for node in doc["nodes"]:
            if isinstance(node.get("error"), str):
                node["error"] = _tail(node["error"], limit) if limit else "(cut to bound storage)"
        text = json.dumps(doc, separators=(",", ":"))
        if len(text) <= MAX_STORED_DOCUMENT:
            break
    return text


def _tail(text: str, limit: int) -> str:
    return text if len(text) <= limit else "…" + text[-limit:]


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
        migrate(self._db)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @staticmethod
    def _record(row: sqlite3.Row | tuple[Any, ...]) -> TaskRecord:
        (task_id, kind, user, host, port, _key, ui_home, spec_json, created_at, finished_at,
         state, launched, progress_json, not_before, retry_of, retried_by, attempt,
         auto_retry, route_json, notes_json, plan_json) = row  # fmt: skip
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
            not_before=not_before,
            retry_of=retry_of,
            retried_by=retried_by,
            attempt=attempt,
            auto_retry=auto_retry,
            notes=json.loads(notes_json or "[]"),
            resolution=json.loads(plan_json) if plan_json else None,
        )

    @staticmethod
    def _row(record: TaskRecord) -> tuple[Any, ...]:
        target = record.target
        document = stored_document(record.progress) if record.progress else None
        summary = summary_values(document)
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
            document,
            record.not_before,
            record.retry_of,
            record.retried_by,
            record.attempt,
            record.auto_retry,
            json.dumps(target.route()) if target.route() else None,
            json.dumps(record.notes) if record.notes else None,
            *(summary.get(name, 0 if name in _COUNTS else None) for name in _SUMMARY_COLUMNS),
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
                self._insert(record)
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
        """The task with its full document; ``None`` when unknown or pruned."""
        with self._lock:
            row = self._db.execute(
                _SELECT + "WHERE task_id = ? AND pruned = 0",
                (task_id,),
            ).fetchone()
        return self._record(row) if row else None

    def is_pruned(self, task_id: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM tasks WHERE task_id = ? AND pruned = 1", (task_id,)
            ).fetchone()
        return row is not None

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
        document = stored_document(progress)
        summary = summary_values(document)
        assignments = ", ".join(f"{name} = ?" for name in summary)
        with self._lock:
            self._db.execute(
                "UPDATE tasks SET state = ?, progress_json = ?, finished_at = ?, launched = ?, "  # noqa: S608
                + assignments
                + " WHERE task_id = ?",
                (progress.state, document, finished_at, int(launched), *summary.values(), task_id),
            )

    def all(self, limit: int = 1000) -> list[TaskRecord]:
        """Newest first."""
        with self._lock:
            rows = self._db.execute(
                _SELECT + "WHERE pruned = 0 ORDER BY created_at DESC LIMIT ?",
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
                _SELECT + "WHERE pruned = 0 AND finished_at IS NOT NULL AND finished_at < ? "
                "ORDER BY finished_at",
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

    # -- the queue ---------------------------------------------------------------

    def add(self, record: TaskRecord) -> None:
        """Insert ``record`` as it is (the scheduler decided it may be added)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._insert(record)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _insert(self, record: TaskRecord) -> None:
        """The task's row and its resolution selection; the caller holds the lock and a
        transaction."""
        self._db.execute(_INSERT, self._row(record))
        if record.resolution is not None:
            self._db.execute(
                "INSERT OR REPLACE INTO resolutions (task_id, plan_json) VALUES (?, ?)",
                (record.task_id, json.dumps(record.resolution)),
            )

    def unfinished_slots(self) -> list[tuple[str, str, str, int, str, str]]:
        """``(task_id, target_key, host, port, ui_home, state)`` of every unfinished
        task, queued ones included, oldest first: what admission and the queue
        decide from. Reads only indexed columns."""
        with self._lock:
            rows = self._db.execute(
                "SELECT task_id, target_key, target_host, target_port, ui_home, state "
                "FROM tasks WHERE " + _NOT_FINAL + " ORDER BY created_at, task_id",
                _FINAL,
            ).fetchall()
        return [tuple(row) for row in rows]

    def claim(self, task_id: str, progress: Progress) -> bool:
        """Move a queued task to ``starting`` with ``progress``; False if it is no
        longer queued (cancelled meanwhile)."""
        document = stored_document(progress)
        with self._lock:
            cursor = self._db.execute(
                "UPDATE tasks SET state = ?, progress_json = ? "
                "WHERE task_id = ? AND state = 'queued'",
                (progress.state, document, task_id),
            )
        return cursor.rowcount == 1

    def link_retry(self, task_id: str, retried_by: str) -> bool:
        """Record that ``retried_by`` retries ``task_id``; False if it already was."""
        with self._lock:
            cursor = self._db.execute(
                "UPDATE tasks SET retried_by = ? WHERE task_id = ? AND retried_by IS NULL",
                (retried_by, task_id),
            )
        return cursor.rowcount == 1

    # -- listings and history ------------------------------------------------------

    def page(
        self,
        limit: int,
        before: tuple[float, str] | None = None,
        *,
        pruned: bool | None = False,
        target_key: str | None = None,
        ui_home: str | None = None,
        before_time: float | None = None,
        with_nodes: bool = False,
        id_prefix: str | None = None,
    ) -> list[dict[str, Any]]:
        """Summaries newest first, from the summary columns only; ``before`` is the
        ``(created_at, task_id)`` of the last row of the previous page. With
        ``with_nodes``, each row has ``node_summary`` too (the history's)."""
        where: list[str] = []
        params: list[Any] = []
        if pruned is not None:
            where.append("pruned = ?")
            params.append(int(pruned))
        if target_key is not None:
            where.append("target_key = ?")
            params.append(target_key)
        if ui_home is not None:
            where.append("ui_home = ?")
            params.append(home_key(ui_home))
        if before is not None:
            where.append("(created_at < ? OR (created_at = ? AND task_id < ?))")
            params += [before[0], before[0], before[1]]
        if before_time is not None:
            where.append("created_at < ?")
            params.append(before_time)
        if id_prefix is not None:
            # The caller checked it is hex digits and '-': no LIKE wildcards.
            where.append("task_id LIKE ?")
            params.append(id_prefix + "%")
        sql = _SUMMARY_SELECT + (", node_summary" if with_nodes else "") + " FROM tasks "
        sql += ("WHERE " + " AND ".join(where) + " ") if where else ""
        sql += "ORDER BY created_at DESC, task_id DESC LIMIT ?"
        with self._lock:
            cursor = self._db.execute(sql, (*params, limit))
            names = [d[0] for d in cursor.description]
            rows = cursor.fetchall()
        return [dict(zip(names, row, strict=True)) for row in rows]

    def prune(self, task_ids: list[str]) -> None:
        """Drop the full document and spec of finished tasks; their summary stays."""
        with self._lock:
            self._db.executemany(
                "UPDATE tasks SET progress_json = NULL, spec_json = '{}', pruned = 1 "
                "WHERE task_id = ?",
                [(t,) for t in task_ids],
            )

    def forget_before(self, cutoff: float) -> int:
        """Delete the summaries of tasks finished before ``cutoff``; returns how many."""
        with self._lock:
            self._db.execute(
                "DELETE FROM resolutions WHERE task_id IN (SELECT task_id FROM tasks "
                "WHERE finished_at IS NOT NULL AND finished_at < ?)",
                (cutoff,),
            )
            cursor = self._db.execute(
                "DELETE FROM tasks WHERE finished_at IS NOT NULL AND finished_at < ?", (cutoff,)
            )
        return cursor.rowcount
