"""The task registry: every task the controllers sharing it started, durable in
their database (SQLite in the data dir by default, or PostgreSQL; see
``controller.storage``), through SQLAlchemy Core.

Blocking: the service calls it in the app's executor. Each method is one short
transaction; those that decide from counts (admission, the queue, take-overs)
are exclusive across controllers (``Database.exclusive``).

Storage is bounded: a stored document is compact JSON with long error texts
cut (:func:`stored_document`), listings and history read summary columns
written beside it (never the documents), and past the retention only the
summary stays (``pruned``) until ``history_days`` have passed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from controller.common.target import Target
from controller.storage import tables
from controller.storage.database import Database, sqlite_url
from controller.storage.registry_schema import SUMMARY_ERROR_CHARS, summary_values
from protocol import FINAL_STATES, Progress

#: A stored document larger than this loses its nodes' error texts beyond a short
#: tail; an install has at most 500 nodes, so that bounds what one task stores.
MAX_STORED_DOCUMENT = 256 * 1024
#: Error texts (the tail of a failed command) kept in a stored document.
NODE_ERROR_CHARS = 2000
TASK_ERROR_CHARS = 4000

_FINAL = tuple(sorted(FINAL_STATES))
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
_T = tables.tasks
_R = tables.resolutions
#: The columns a record is read from, and the plan from its own table.
_RECORD_COLUMNS = (
    _T.c.task_id, _T.c.target_kind, _T.c.target_user, _T.c.target_host, _T.c.target_port,
    _T.c.target_key, _T.c.ui_home, _T.c.spec_json, _T.c.created_at, _T.c.finished_at,
    _T.c.state, _T.c.launched, _T.c.progress_json, _T.c.not_before, _T.c.retry_of,
    _T.c.retried_by, _T.c.attempt, _T.c.auto_retry, _T.c.target_route, _T.c.notes_json,
    _T.c.owner, _T.c.lease_until,
    sa.select(_R.c.plan_json).where(_R.c.task_id == _T.c.task_id).scalar_subquery(),
)  # fmt: skip
_SELECT = sa.select(*_RECORD_COLUMNS)
_NOT_FINAL = _T.c.state.not_in(_FINAL)
#: What a listing shows of a task, without its document (nor its nodes).
_SUMMARY_SELECT = (
    _T.c.task_id, _T.c.target_kind, _T.c.target_user, _T.c.target_host, _T.c.target_port,
    _T.c.ui_home, _T.c.created_at, _T.c.finished_at, _T.c.state, _T.c.retry_of,
    _T.c.retried_by, _T.c.attempt, _T.c.auto_retry,
    *(_T.c[name] for name in SUMMARY_FIELDS),
)  # fmt: skip


@dataclass(frozen=True)
class Slot:
    """An unfinished task as admission and the queue see it."""

    task_id: str
    target_key: str
    host: str
    port: int
    ui_home: str
    state: str
    not_before: float | None


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
    #: The controller launching the task, and until when that claim holds: past
    #: it, another controller takes the launch over (see ``Registry.take_over``).
    owner: str | None = None
    lease_until: float | None = None

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
    """``Registry(path)`` opens a SQLite file and ``Registry(url)`` any database
    (closed with it); ``Registry(database)`` uses a :class:`Database` the caller
    made and closes (the app's, shared with the fleet store)."""

    def __init__(self, where: Path | str | Database) -> None:
        self._own = not isinstance(where, Database)
        if isinstance(where, Database):
            self.db = where
        else:
            self.db = Database(sqlite_url(where) if isinstance(where, Path) else where)

    def close(self) -> None:
        if self._own:
            self.db.close()

    @staticmethod
    def _record(row: Any) -> TaskRecord:
        (task_id, kind, user, host, port, _key, ui_home, spec_json, created_at, finished_at,
         state, launched, progress_json, not_before, retry_of, retried_by, attempt,
         auto_retry, route_json, notes_json, owner, lease_until, plan_json) = row  # fmt: skip
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
            owner=owner,
            lease_until=lease_until,
        )

    @staticmethod
    def _row(record: TaskRecord) -> dict[str, Any]:
        target = record.target
        document = stored_document(record.progress) if record.progress else None
        summary = summary_values(document)
        return {
            "task_id": record.task_id,
            "target_kind": target.kind,
            "target_user": target.user,
            "target_host": target.host,
            "target_port": target.port,
            "target_key": target.key,
            "ui_home": home_key(record.ui_home),
            "spec_json": json.dumps(record.spec),
            "created_at": record.created_at,
            "finished_at": record.finished_at,
            "state": record.state,
            "launched": int(record.launched),
            "progress_json": document,
            "not_before": record.not_before,
            "retry_of": record.retry_of,
            "retried_by": record.retried_by,
            "attempt": record.attempt,
            "auto_retry": record.auto_retry,
            "target_route": json.dumps(target.route()) if target.route() else None,
            "notes_json": json.dumps(record.notes) if record.notes else None,
            "owner": record.owner,
            "lease_until": record.lease_until,
            **{
                name: summary.get(name, 0 if name in _COUNTS else None) for name in _SUMMARY_COLUMNS
            },
        }

    def _running(self, conn: Connection, target_key: str, ui_home: str) -> str | None:
        row = conn.execute(
            sa.select(_T.c.task_id)
            .where(_T.c.target_key == target_key, _T.c.ui_home == home_key(ui_home), _NOT_FINAL)
            .order_by(_T.c.created_at.desc())
            .limit(1)
        ).first()
        return str(row[0]) if row else None

    def add_if_free(self, record: TaskRecord) -> str | None:
        """Insert ``record`` unless a task on the same machine and ComfyUI home is not
        finished; then return that task's id and insert nothing."""
        with self.db.exclusive() as conn:
            holder = self._running(conn, record.target.key, record.ui_home)
            if holder is not None:
                return holder
            self._insert(conn, record)
        return None

    def adopt(self, record: TaskRecord) -> None:
        """Insert a task found on a machine (no conflict check: it already runs there)."""
        with self.db.begin() as conn:
            conn.execute(self.db.insert(_T).values(self._row(record)).on_conflict_do_nothing())

    def get(self, task_id: str) -> TaskRecord | None:
        """The task with its full document; ``None`` when unknown or pruned."""
        with self.db.begin() as conn:
            row = conn.execute(_SELECT.where(_T.c.task_id == task_id, _T.c.pruned == 0)).first()
        return self._record(row) if row else None

    def is_pruned(self, task_id: str) -> bool:
        with self.db.begin() as conn:
            row = conn.execute(
                sa.select(sa.literal(1)).where(_T.c.task_id == task_id, _T.c.pruned == 1)
            ).first()
        return row is not None

    def is_running(self, target: Target, ui_home: str) -> str | None:
        with self.db.begin() as conn:
            return self._running(conn, target.key, ui_home)

    def save_progress(
        self, task_id: str, progress: Progress, finished_at: float | None, launched: bool
    ) -> None:
        """Store a newer document. A final row is never overwritten by an unfinished
        document: replicas following the same task may write in any order."""
        document = stored_document(progress)
        values: dict[str, Any] = {
            "state": progress.state,
            "progress_json": document,
            "finished_at": finished_at,
            "launched": int(launched),
            **summary_values(document),
        }
        where = [_T.c.task_id == task_id]
        if not progress.is_final:
            where.append(_NOT_FINAL)
        with self.db.begin() as conn:
            conn.execute(sa.update(_T).where(*where).values(values))

    def all(self, limit: int = 1000) -> list[TaskRecord]:
        """Newest first."""
        with self.db.begin() as conn:
            rows = conn.execute(
                _SELECT.where(_T.c.pruned == 0).order_by(_T.c.created_at.desc()).limit(limit)
            ).fetchall()
        return [self._record(row) for row in rows]

    def unfinished(self) -> list[TaskRecord]:
        with self.db.begin() as conn:
            rows = conn.execute(_SELECT.where(_NOT_FINAL).order_by(_T.c.created_at)).fetchall()
        return [self._record(row) for row in rows]

    def finished_before(self, cutoff: float) -> list[TaskRecord]:
        with self.db.begin() as conn:
            rows = conn.execute(
                _SELECT.where(
                    _T.c.pruned == 0, _T.c.finished_at.is_not(None), _T.c.finished_at < cutoff
                ).order_by(_T.c.finished_at)
            ).fetchall()
        return [self._record(row) for row in rows]

    def add_notes(self, task_id: str, notes: list[str]) -> None:
        with self.db.begin() as conn:
            conn.execute(
                sa.update(_T).where(_T.c.task_id == task_id).values(notes_json=json.dumps(notes))
            )

    def delete(self, task_ids: list[str]) -> None:
        with self.db.begin() as conn:
            conn.execute(sa.delete(_T).where(_T.c.task_id.in_(task_ids)))
            conn.execute(sa.delete(_R).where(_R.c.task_id.in_(task_ids)))

    # -- the queue ---------------------------------------------------------------

    def add(self, record: TaskRecord) -> None:
        """Insert ``record`` as it is (the scheduler decided it may be added)."""
        with self.db.begin() as conn:
            self._insert(conn, record)

    def _insert(self, conn: Connection, record: TaskRecord) -> None:
        """The task's row and its resolution plan, in the caller's transaction."""
        conn.execute(sa.insert(_T).values(self._row(record)))
        if record.resolution is not None:
            plan = json.dumps(record.resolution)
            conn.execute(
                self.db.insert(_R)
                .values(task_id=record.task_id, plan_json=plan)
                .on_conflict_do_update(index_elements=["task_id"], set_={"plan_json": plan})
            )

    def _slots(self, conn: Connection) -> list[Slot]:
        rows = conn.execute(
            sa.select(
                _T.c.task_id, _T.c.target_key, _T.c.target_host, _T.c.target_port,
                _T.c.ui_home, _T.c.state, _T.c.not_before,
            )
            .where(_NOT_FINAL)
            .order_by(_T.c.created_at, _T.c.task_id)
        ).fetchall()  # fmt: skip
        return [Slot(*row) for row in rows]

    def unfinished_slots(self) -> list[Slot]:
        """Every unfinished task, queued ones included, oldest first: what admission
        and the queue decide from. Reads only indexed columns."""
        with self.db.begin() as conn:
            return self._slots(conn)

    def _now(self, conn: Connection) -> float:
        """One clock for every replica: the database's (PostgreSQL), else this one's."""
        if self.db.dialect == "postgresql":
            return float(
                conn.execute(sa.select(sa.extract("epoch", sa.func.clock_timestamp()))).scalar_one()
            )
        return time.time()

    def admit(self, record: TaskRecord, decide: Callable[[list[Slot]], bool]) -> None:
        """Decide and insert in one transaction no other controller interleaves with:
        ``decide`` sees every unfinished task, sets ``record``'s state and document,
        and says whether to insert it. The record's ``created_at`` is the moment of
        that decision, so the queue's order is the order of admission."""
        with self.db.exclusive() as conn:
            record.created_at = self._now(conn)
            if decide(self._slots(conn)):
                self._insert(conn, record)

    def claim_queued(
        self,
        choose: Callable[[list[Slot], float], list[str]],
        starting: Callable[[TaskRecord], Progress],
        owner: str,
        lease: float,
    ) -> list[TaskRecord]:
        """Move the queued tasks ``choose`` picks to ``starting``, claimed by
        ``owner`` for ``lease`` seconds, in one exclusive transaction: each queued
        task is claimed by exactly one controller. Returns the claimed records."""
        claimed: list[TaskRecord] = []
        with self.db.exclusive() as conn:
            now = self._now(conn)
            for task_id in choose(self._slots(conn), now):
                row = conn.execute(_SELECT.where(_T.c.task_id == task_id)).first()
                if row is None:
                    continue
                record = self._record(row)
                progress = starting(record)
                done = conn.execute(
                    sa.update(_T)
                    .where(_T.c.task_id == task_id, _T.c.state == "queued")
                    .values(
                        state=progress.state,
                        progress_json=stored_document(progress),
                        owner=owner,
                        lease_until=now + lease,
                    )
                )
                if done.rowcount == 1:
                    record.state, record.progress = progress.state, progress
                    record.owner, record.lease_until = owner, now + lease
                    claimed.append(record)
        return claimed

    def take_over(
        self, owner: str, lease: float, exclude: set[str], *, ignore_lease: bool = False
    ) -> list[TaskRecord]:
        """Claim the tasks whose launch was never confirmed and whose launcher's
        lease ran out (it died mid-launch), or every such task with
        ``ignore_lease`` (a registry no other controller uses): ``owner`` launches
        them again, which the agent refuses for a task it already has, so none
        runs twice."""
        taken: list[TaskRecord] = []
        with self.db.exclusive() as conn:
            now = self._now(conn)
            rows = conn.execute(
                _SELECT.where(
                    _T.c.state == "starting",
                    _T.c.launched == 0,
                    sa.true()
                    if ignore_lease
                    else sa.or_(_T.c.lease_until.is_(None), _T.c.lease_until < now),
                ).order_by(_T.c.created_at)
            ).fetchall()
            for row in rows:
                record = self._record(row)
                if record.task_id in exclude:
                    continue
                conn.execute(
                    sa.update(_T)
                    .where(_T.c.task_id == record.task_id)
                    .values(owner=owner, lease_until=now + lease)
                )
                record.owner, record.lease_until = owner, now + lease
                taken.append(record)
        return taken

    def has_queued(self) -> bool:
        with self.db.begin() as conn:
            row = conn.execute(
                sa.select(sa.literal(1)).where(_T.c.state == "queued").limit(1)
            ).first()
        return row is not None

    def cancel_queued(self, task_id: str, progress: Progress, finished_at: float) -> bool:
        """Store ``progress`` (cancelled) if the task is still queued; False when a
        controller started it meanwhile."""
        document = stored_document(progress)
        with self.db.exclusive() as conn:
            done = conn.execute(
                sa.update(_T)
                .where(_T.c.task_id == task_id, _T.c.state == "queued")
                .values(
                    state=progress.state,
                    progress_json=document,
                    finished_at=finished_at,
                    **summary_values(document),
                )
            )
        return bool(done.rowcount == 1)

    def link_retry(self, task_id: str, retried_by: str) -> bool:
        """Record that ``retried_by`` retries ``task_id``; False if it already was."""
        with self.db.begin() as conn:
            done = conn.execute(
                sa.update(_T)
                .where(_T.c.task_id == task_id, _T.c.retried_by.is_(None))
                .values(retried_by=retried_by)
            )
        return bool(done.rowcount == 1)

    def unlink_retry(self, task_id: str, retried_by: str) -> None:
        """Undo :meth:`link_retry` when the retry could not be started after all."""
        with self.db.begin() as conn:
            conn.execute(
                sa.update(_T)
                .where(_T.c.task_id == task_id, _T.c.retried_by == retried_by)
                .values(retried_by=None)
            )

    def retried_by(self, task_id: str) -> str | None:
        with self.db.begin() as conn:
            value = conn.execute(sa.select(_T.c.retried_by).where(_T.c.task_id == task_id)).scalar()
        return str(value) if value else None

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
        columns = [*_SUMMARY_SELECT, *((_T.c.node_summary,) if with_nodes else ())]
        query = sa.select(*columns)
        if pruned is not None:
            query = query.where(_T.c.pruned == int(pruned))
        if target_key is not None:
            query = query.where(_T.c.target_key == target_key)
        if ui_home is not None:
            query = query.where(_T.c.ui_home == home_key(ui_home))
        if before is not None:
            query = query.where(
                sa.or_(
                    _T.c.created_at < before[0],
                    sa.and_(_T.c.created_at == before[0], _T.c.task_id < before[1]),
                )
            )
        if before_time is not None:
            query = query.where(_T.c.created_at < before_time)
        if id_prefix is not None:
            # The caller checked it is hex digits and '-': no LIKE wildcards.
            query = query.where(_T.c.task_id.like(id_prefix + "%"))
        query = query.order_by(_T.c.created_at.desc(), _T.c.task_id.desc()).limit(limit)
        with self.db.begin() as conn:
            result = conn.execute(query)
            names = list(result.keys())
            rows = result.fetchall()
        return [dict(zip(names, row, strict=True)) for row in rows]

    def prune(self, task_ids: list[str]) -> None:
        """Drop the full document and spec of finished tasks; their summary stays."""
        with self.db.begin() as conn:
            conn.execute(
                sa.update(_T)
                .where(_T.c.task_id.in_(task_ids))
                .values(progress_json=None, spec_json="{}", pruned=1)
            )

    def forget_before(self, cutoff: float) -> int:
        """Delete the summaries of tasks finished before ``cutoff``; returns how many."""
        old = sa.and_(_T.c.finished_at.is_not(None), _T.c.finished_at < cutoff)
        with self.db.begin() as conn:
            conn.execute(sa.delete(_R).where(_R.c.task_id.in_(sa.select(_T.c.task_id).where(old))))
            done = conn.execute(sa.delete(_T).where(old))
        return int(done.rowcount)
