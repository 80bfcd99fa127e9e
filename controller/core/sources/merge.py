"""One request's sources (``nodes``, ``workflow``, ``snapshot``, or the configured
``default_nodes``) merged into one selection. Blocking (it may load the node
database): the service runs it in the executor."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.core.sources import registry_ids, snapshot, workflow
from controller.core.sources.errors import SourceError
from controller.core.sources.nodedb import NodeDB
from controller.core.sources.resolver import (
    Selection,
    TagLookup,
    add_registry_id,
    pin,
    resolve_workflow,
)
from protocol import ProtocolError, parse_node

MAX_DEFAULT_FILE = 4 * 1024 * 1024

NO_SOURCE = (
    "say what to install: 'nodes' (git URLs or Comfy Registry ids), 'workflow' (a ComfyUI "
    "workflow, UI or API format), 'snapshot' (a ComfyUI-Manager snapshot), or configure the "
    "controller's default_nodes setting and send none of them"
)


@dataclass
class Sources:
    nodes: list[Any] | None = None
    workflow: dict[str, Any] | None = None
    snapshot: dict[str, Any] | str | None = None

    @property
    def empty(self) -> bool:
        return not self.nodes and self.workflow is None and self.snapshot is None

    @property
    def plain(self) -> bool:
        """Only git URLs: the spec takes them as they are, no selection needed."""
        return (
            self.workflow is None
            and self.snapshot is None
            and bool(self.nodes)
            and not any(
                isinstance(n, str) and registry_ids.is_registry_id(n) for n in self.nodes or []
            )
        )


def read_default_nodes(path: Path) -> Sources:
    """The ``default_nodes`` file: a workflow, a snapshot, JSON list of nodes, or
    one ``URL[@REF]`` (or registry id) a line with ``#`` comments."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_DEFAULT_FILE + 1)
    except OSError as exc:
        raise SourceError("default_nodes", f"cannot read {path}: {exc.strerror}") from None
    if len(raw) > MAX_DEFAULT_FILE:
        raise SourceError("default_nodes", f"{path} is larger than {MAX_DEFAULT_FILE} bytes")
    return sources_from_bytes(raw, f"default_nodes ({path})")


def sources_from_bytes(raw: bytes, where: str) -> Sources:
    """What a file holds: a workflow (JSON or PNG), a snapshot (JSON or YAML), or node lines."""
    if raw.startswith(b"\x89PNG"):
        return Sources(workflow=workflow.load_bytes(raw, where))
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise SourceError(where, "is neither a PNG nor UTF-8 text") from None
    try:
        data: Any = json.loads(text)
    except (ValueError, RecursionError):
        data = None
    if isinstance(data, list):
        return Sources(nodes=data)
    if isinstance(data, dict):
        if "git_custom_nodes" in data or "cnr_custom_nodes" in data:
            return Sources(snapshot=data)
        return Sources(workflow=data)
    if "git_custom_nodes:" in text or "cnr_custom_nodes:" in text:
        return Sources(snapshot=text)
    nodes = []
    for raw_line in text.splitlines():
        line = "" if raw_line.lstrip().startswith("#") else raw_line.split(" #", 1)[0].strip()
        if line:
            nodes.append(line)
    if not nodes:
        raise SourceError(where, "names no nodes")
    return Sources(nodes=nodes)


def build(
    sources: Sources,
    load_db: Callable[[], NodeDB],
    *,
    online: registry_ids.OnlineLookup | None = None,
    tags: TagLookup | None = None,
) -> Selection:
    """The selection for ``sources``; the node database is loaded only when needed."""
    selection = Selection()
    loaded: list[NodeDB] = []

    def db() -> NodeDB:
        if not loaded:
            loaded.append(load_db())
            selection.node_db = loaded[0].source
        return loaded[0]

    ids: list[tuple[int, str, str | None]] = []
    for index, entry in enumerate(sources.nodes or []):
        where = f"nodes.{index}"
        if isinstance(entry, str) and registry_ids.is_registry_id(entry):
            ident, version = registry_ids.split_id(entry, where)
            ids.append((index, ident, version))
            continue
        try:
            node = parse_node(entry, where)
        except ProtocolError as exc:
            raise SourceError(exc.field, exc.message) from None
        if selection.add(node.url, node.ref, "explicit", name=node.name) is None:
            raise SourceError(where, selection.warnings.pop())
    for index, ident, version in ids:
        if not add_registry_id(selection, ident, version, "registry id", db(), online, tags):
            raise SourceError(
                f"nodes.{index}",
                f"registry id '{ident}' is not in the node database ({selection.node_db})"
                + ("" if online else "; online lookups are off")
                + ": give its git URL instead",
            )
    if sources.snapshot is not None:
        snap = snapshot.parse(sources.snapshot)
        selection.warnings.extend(snap.warnings)
        for url, commit in snap.git:
            try:
                selection.add(url, commit, "snapshot")
            except ProtocolError as exc:
                raise SourceError(f"snapshot.git_custom_nodes.{url}", exc.message) from None
        for ident, version in snap.cnr:
            try:
                registry_ids.split_id(ident, "snapshot")
                found = add_registry_id(selection, ident, version, "snapshot", db(), online, tags)
            except SourceError:
                found = False
            if not found:
                selection.unresolved.append(ident)
                selection.warnings.append(f"snapshot: registry id '{ident}' was not found")
    if sources.workflow is not None:
        uses = workflow.node_uses(sources.workflow)
        resolve_workflow(selection, uses, db(), online, tags)
    return selection


__all__ = ["NO_SOURCE", "Selection", "Sources", "build", "pin", "read_default_nodes"]
