"""What controllers sharing one registry must decide once for all of them:
which host key an instance has (trust on first use), and the API token.

Blocking: called in the app's executor (host keys) or at start-up (the token).
"""

from __future__ import annotations

import secrets as random_secrets
import time

import sqlalchemy as sa

from controller.storage import tables
from controller.storage.database import Database

_K = tables.host_keys
_S = tables.secrets
TOKEN = "api_token"  # noqa: S105 - the row's name


class HostKeyStore:
    """Accepted host keys in the registry's database (``host_keys``)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def lookup(self, entry: str) -> dict[str, str]:
        """key type -> base64 key recorded for ``entry``."""
        with self.db.begin() as conn:
            rows = conn.execute(
                sa.select(_K.c.key_type, _K.c.key_base64).where(_K.c.entry == entry)
            ).fetchall()
        return {key_type: key for key_type, key in rows}

    def accept_first(self, entry: str, key_type: str, key_base64: str) -> dict[str, str]:
        """Record the key unless ``entry`` already has one; returns what is recorded
        then. Exclusive: two controllers meeting a new host at once agree on the
        key the first one saw, and the other compares against it."""
        with self.db.exclusive() as conn:
            rows = conn.execute(
                sa.select(_K.c.key_type, _K.c.key_base64).where(_K.c.entry == entry)
            ).fetchall()
            if rows:
                return {key_type: key for key_type, key in rows}
            conn.execute(
                sa.insert(_K).values(
                    entry=entry, key_type=key_type, key_base64=key_base64, added_at=time.time()
                )
            )
        return {key_type: key_base64}

    def forget(self, entry: str) -> bool:
        with self.db.begin() as conn:
            done = conn.execute(sa.delete(_K).where(_K.c.entry == entry))
        return bool(done.rowcount)


def shared_token(db: Database, candidate: str | None) -> str:
    """The API token every controller on ``db`` answers to: the one stored there,
    else ``candidate`` (this controller's token file) or a new random one, stored
    by whichever controller got there first."""
    token = candidate or random_secrets.token_urlsafe(32)
    with db.begin() as conn:
        conn.execute(db.insert(_S).values(name=TOKEN, value=token).on_conflict_do_nothing())
        stored = conn.execute(sa.select(_S.c.value).where(_S.c.name == TOKEN)).scalar_one()
    return str(stored)
