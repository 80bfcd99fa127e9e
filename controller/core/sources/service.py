"""Turning a request's sources into a selection, for the task service and the dry run.

The node database comes from, in order: the ``node_db`` setting (a directory),
the instance's own ``custom_nodes/ComfyUI-Manager`` (or ``comfyui-manager``)
checkout when the request names an instance, then the controller's kept copy
(``nodeferry node-db update``). Loaded databases are kept in memory for a while:
parsing the 4 MB of JSON takes a moment, reading it over SFTP longer.
"""

from __future__ import annotations

import posixpath
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from controller.common.config import Settings
from controller.common.errors import InvalidRequest
from controller.common.target import Target
from controller.core.sources import nodedb
from controller.core.sources.errors import SourceError
from controller.core.sources.merge import NO_SOURCE, Sources, build, read_default_nodes
from controller.core.sources.nodedb import NodeDB
from controller.core.sources.online import Online
from controller.core.sources.resolver import Selection
from controller.transports import Transports
from protocol import ProtocolError
from protocol import fields as checks

T = TypeVar("T")
#: What the database cache holds: a loader that always finds one, or one that may not.
_DB = TypeVar("_DB", NodeDB, "NodeDB | None")
Run = Callable[..., Awaitable[Any]]
#: Seconds a loaded database is reused before its source is read again.
DB_CACHE_SECONDS = 300.0


class Unresolved(InvalidRequest):
    """``strict`` was asked for and some classes did not resolve (or nothing did)."""

    code = "unresolved"

    def __init__(self, message: str, selection: Selection) -> None:
        super().__init__("workflow", message)
        self.selection = selection

    def body(self) -> dict[str, Any]:
        return {**super().body(), "resolution": self.selection.to_dict()}


class SourceService:
    def __init__(self, settings: Settings, transports: Transports | None, run: Run) -> None:
        self.settings = settings
        self.transports = transports
        self.run = run
        self._lock = threading.Lock()
        self._dbs: dict[tuple[str, ...], tuple[float, NodeDB]] = {}
        self.online = Online(settings.data_dir / "registry-cache.json")

    async def selection(
        self, sources: Sources, target: Target | None = None, ui_home: str | None = None
    ) -> Selection:
        """The selection for ``sources`` (the configured default when empty)."""
        if sources.empty:
            if self.settings.default_nodes is None:
                raise InvalidRequest("", NO_SOURCE)
            sources = await self.run(read_default_nodes, self.settings.default_nodes)
        if ui_home is not None:
            try:
                ui_home = checks.remote_path(ui_home, "ui_home")
            except ProtocolError as exc:
                raise InvalidRequest(exc.field, exc.message) from None
        selection: Selection = await self.run(self.build, sources, target, ui_home)
        return selection

    def build(self, sources: Sources, target: Target | None, ui_home: str | None) -> Selection:
        online = self.settings.online_lookups
        return build(
            sources,
            lambda: self.load_db(target, ui_home),
            online=self.online.registry if online else None,
            tags=self.online.tags if online else None,
        )

    async def selection_for_start(
        self, sources: Sources, target: Target, ui_home: str, strict: bool
    ) -> Selection:
        selection = await self.selection(sources, target, ui_home)
        if strict and selection.unresolved:
            raise Unresolved(
                f"{len(selection.unresolved)} node class(es) resolve to no custom node: "
                f"{', '.join(selection.unresolved[:20])}; nothing was installed (strict). Install "
                "them by URL in 'nodes', or send strict: false to install the rest",
                selection,
            )
        if not selection.nodes:
            why = (
                f"none of its classes resolved: {', '.join(selection.unresolved[:20])}"
                if selection.unresolved
                else "every class it uses is part of ComfyUI or its frontend"
            )
            raise Unresolved(f"nothing to install: {why}", selection)
        return selection

    # -- the node database -----------------------------------------------------

    def _cached(self, key: tuple[str, ...], load: Callable[[], _DB]) -> _DB:
        now = time.monotonic()
        with self._lock:
            hit = self._dbs.get(key)
            if hit is not None and now - hit[0] < DB_CACHE_SECONDS:
                return hit[1]
        db = load()
        if db is not None:
            with self._lock:
                self._dbs[key] = (now, db)
        return db

    def load_db(self, target: Target | None, ui_home: str | None) -> NodeDB:
        configured = self.settings.node_db
        if configured is not None:
            if not nodedb.has_db(configured):
                raise SourceError(
                    "node_db", f"the node_db setting names {configured}, which has no "
                    f"{nodedb.MAP_FILE}",
                )  # fmt: skip
            return self._cached(("dir", str(configured)), lambda: nodedb.load_dir(configured))
        if target is not None and ui_home is not None and self.transports is not None:
            db = self._cached(
                ("instance", target.key, ui_home), lambda: self._instance_db(target, ui_home)
            )
            if db is not None:
                return db
        kept = nodedb.kept_dir(self.settings.data_dir)
        if nodedb.has_db(kept):
            return self._cached(("dir", str(kept)), lambda: nodedb.load_dir(kept))
        raise SourceError(
            "node_db",
            "resolving registry ids and workflows needs ComfyUI-Manager's node database and "
            "none was found: run `nodeferry node-db update`, set node_db to a directory "
            f"holding {nodedb.MAP_FILE}, or install ComfyUI-Manager on the instance",
        )

    def _instance_db(self, target: Target, ui_home: str) -> NodeDB | None:
        if self.transports is None:  # no way to the instance: no database of its own
            return None
        transport = self.transports.get(target)
        for name in nodedb.MANAGER_DIRS:
            directory = posixpath.join(ui_home, "custom_nodes", name)
            first = transport.read_absolute(
                posixpath.join(directory, nodedb.MAP_FILE), nodedb.MAX_FILE_BYTES + 1
            )
            if first is None:
                continue

            def read(file: str, directory: str = directory, first: bytes = first) -> bytes | None:
                if file == nodedb.MAP_FILE:
                    return first
                return transport.read_absolute(
                    posixpath.join(directory, file), nodedb.MAX_FILE_BYTES + 1
                )

            return nodedb.parse_files(f"{target}:{directory}", read)
        return None
