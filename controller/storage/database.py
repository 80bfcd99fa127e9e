"""The database behind the registry: one SQLAlchemy engine, its migrations, and
the transactions every store runs in.

Blocking: the stores call it in the app's executor.

SQLite (the default, ``<data_dir>/tasks.sqlite3``) runs every transaction as
``BEGIN IMMEDIATE``: one writer at a time, so a read-decide-write (admission,
the queue) is never interleaved with another, and readers in WAL mode are never
blocked. PostgreSQL runs at READ COMMITTED; the decisions that must not
interleave across replicas take :meth:`Database.exclusive`, a transaction-scoped
advisory lock (released at commit, rollback, or when a dead replica's connection
drops, so it can never be left held).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from controller.common.errors import ConfigError, StorageUnavailable

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: Advisory lock keys (PostgreSQL): any two distinct 64-bit numbers.
SCHEDULE_LOCK = 0x6E66_0001
MIGRATE_LOCK = 0x6E66_0002


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def normalize_url(url: str) -> str:
    """``postgresql://`` means psycopg 3 (SQLAlchemy's default would be psycopg2)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "(unparsable URL)"


class Database:
    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.url = normalize_url(url)
        try:
            parsed = sa.engine.make_url(self.url)
        except sa.exc.ArgumentError:
            raise ConfigError(f"database_url is not a database URL: {redact(url)}") from None
        self.dialect = parsed.get_backend_name()
        if self.dialect not in ("sqlite", "postgresql"):
            raise ConfigError("database_url must be sqlite:///PATH or postgresql://…")
        #: Several controllers may share this database.
        self.shared = self.dialect != "sqlite"
        self.engine = self._engine(parsed)
        self._migrated = threading.Event()
        if migrate:
            self.migrate()

    def _engine(self, parsed: sa.engine.URL) -> Engine:
        if self.dialect == "sqlite":
            if parsed.database:
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            engine = sa.create_engine(parsed, connect_args={"check_same_thread": False})

            @event.listens_for(engine, "connect")
            def _connect(dbapi: Any, _record: Any) -> None:
                # Let SQLAlchemy's BEGIN below be the only transaction control.
                dbapi.isolation_level = None
                dbapi.execute("PRAGMA journal_mode=WAL")
                dbapi.execute("PRAGMA busy_timeout=5000")
                dbapi.execute("PRAGMA foreign_keys=ON")

            @event.listens_for(engine, "begin")
            def _begin(conn: Connection) -> None:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

            return engine
        return sa.create_engine(
            parsed,
            # A connection that died with a PostgreSQL restart is replaced, not reused.
            pool_pre_ping=True,
            pool_size=8,
            max_overflow=24,
            pool_timeout=10,
            connect_args={"connect_timeout": 5, "application_name": "nodeferry"},
        )

    def close(self) -> None:
        self.engine.dispose()

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision (in one transaction;
        replicas starting together migrate one after the other)."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self.begin() as conn:
            if self.dialect == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATE_LOCK)))
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
        self._migrated.set()

    @contextlib.contextmanager
    def begin(self) -> Iterator[Connection]:
        """A transaction: committed when the block ends, rolled back on an error.
        A database that cannot be reached is :class:`StorageUnavailable`."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            raise StorageUnavailable(_unavailable(exc)) from None
        except sa.exc.DBAPIError as exc:
            if exc.connection_invalidated:
                raise StorageUnavailable(_unavailable(exc)) from None
            raise

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[Connection]:
        """A transaction no other controller's :meth:`exclusive` interleaves with:
        admission and the queue decide from counts, so two replicas must not both
        see the same free slot."""
        with self.begin() as conn:
            if self.dialect == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(SCHEDULE_LOCK)))
            yield conn

    def insert(self, table: sa.Table) -> Any:
        """An INSERT that can say ``on_conflict_do_nothing``/``…_update`` in this dialect."""
        if self.dialect == "postgresql":
            from sqlalchemy.dialects import postgresql

            return postgresql.insert(table)
        from sqlalchemy.dialects import sqlite

        return sqlite.insert(table)


def _unavailable(exc: BaseException) -> str:
    first = str(getattr(exc, "orig", exc)).strip().splitlines()
    reason = first[0] if first else type(exc).__name__
    return f"the registry database is unavailable ({reason[:300]}); try again shortly"
