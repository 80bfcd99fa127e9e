"""Comfy Registry ids (``comfyui-kjnodes``, ``comfyui-kjnodes@1.1.0``) → repositories.

Offline, an id is matched against the node database: a repository whose name is
the id (case-insensitively; registry ids are mostly the repository's name
lowercased), else the curated list's own ``id``. Online (optional), the Comfy
Registry's API answers for ids the database cannot, cached on disk.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from controller.core.sources.errors import SourceError
from controller.core.sources.nodedb import NodeDB, repo_key

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
#: What an online lookup is: registry id → repository URL, or None.
OnlineLookup = Callable[[str], "str | None"]


def is_registry_id(text: str) -> bool:
    """A ``nodes`` entry without ':' or '/' cannot be a URL: it names a registry id."""
    return ":" not in text and "/" not in text


def split_id(text: str, field: str) -> tuple[str, str | None]:
    ident, _, version = text.partition("@")
    if not _ID.match(ident):
        raise SourceError(
            field, "is neither a git URL nor a Comfy Registry id (letters, digits, '._-')"
        )
    if version and not _VERSION.match(version):
        raise SourceError(field, f"'{version}' is not a valid version")
    return ident, version or None


def _pick(db: NodeDB, urls: list[str]) -> str:
    """Of several repositories with one name: the curated one, then the most starred."""
    return sorted(
        urls,
        key=lambda u: (repo_key(u) not in db.listed, -db.stars.get(repo_key(u), 0), u),
    )[0]


def find(ident: str, db: NodeDB | None, online: OnlineLookup | None) -> tuple[str, str] | None:
    """(repository URL, how it was found) for a registry id, or None."""
    lowered = ident.lower()
    if db is not None:
        urls = db.by_name.get(lowered)
        if urls:
            return _pick(db, urls), "repository name in the node database"
        if lowered in db.list_ids:
            return db.list_ids[lowered], "id in custom-node-list.json"
    if online is not None:
        url = online(lowered)
        if url:
            return url, "Comfy Registry API"
    return None
