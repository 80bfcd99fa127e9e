"""The node classes a ComfyUI workflow uses, from either of its two formats.

UI format (what the frontend saves and what a PNG's ``workflow`` chunk holds):
``{"nodes": [{"type": "KSampler", "properties": {"cnr_id", "aux_id", "ver"}}, …]}``
with subgraphs under ``definitions.subgraphs`` and legacy group nodes under
``extra.groupNodes``. API format (``/prompt``, a PNG's ``prompt`` chunk):
``{"3": {"class_type": "KSampler", "inputs": {…}}, …}``, optionally wrapped
in ``{"prompt": …}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from controller.core.sources import png
from controller.core.sources.errors import SourceError

#: More node entries than any real workflow has; past it the input is refused.
MAX_NODES = 20000
MAX_CLASS_NAME = 256
#: Subgraphs inside subgraphs: deeper than this is refused.
MAX_DEPTH = 16
MAX_FILE_BYTES = png.MAX_PNG_BYTES


@dataclass(frozen=True)
class NodeUse:
    """One node class a workflow uses, with what the frontend saved about its pack."""

    class_type: str
    cnr_id: str | None = None
    aux_id: str | None = None
    ver: str | None = None


def _text(value: Any, limit: int = MAX_CLASS_NAME) -> str | None:
    if isinstance(value, str) and value and len(value) <= limit and value.isprintable():
        return value
    return None


class _Collector:
    def __init__(self) -> None:
        self.uses: list[NodeUse] = []
        self._seen: set[NodeUse] = set()
        self.count = 0

    def add(self, use: NodeUse) -> None:
        self.count += 1
        if self.count > MAX_NODES:
            raise SourceError("workflow", f"has more than {MAX_NODES} nodes")
        if use not in self._seen:
            self._seen.add(use)
            self.uses.append(use)


def _ui_nodes(
    nodes: Any, subgraphs: dict[str, Any], groups: dict[str, Any], out: _Collector, depth: int
) -> None:
    if depth > MAX_DEPTH:
        raise SourceError("workflow", f"nests subgraphs deeper than {MAX_DEPTH} levels")
    if not isinstance(nodes, list):
        raise SourceError("workflow.nodes", "must be a list of nodes")
    for index, node in enumerate(nodes):
        if not isinstance(node, dict):
            raise SourceError(f"workflow.nodes.{index}", "must be an object")
        class_type = _text(node.get("type"))
        if class_type is None:
            raise SourceError(f"workflow.nodes.{index}.type", "must be a node class name")
        if class_type in subgraphs:
            _ui_nodes(subgraphs.pop(class_type), subgraphs, groups, out, depth + 1)
            continue
        group = class_type.split(">", 1)[-1].split("/", 1)[-1]
        if class_type.startswith("workflow") and group in groups:
            inner = groups.pop(group)
            _ui_nodes(inner.get("nodes") if isinstance(inner, dict) else None,
                      subgraphs, groups, out, depth + 1)  # fmt: skip
            continue
        props = node.get("properties")
        props = props if isinstance(props, dict) else {}
        out.add(
            NodeUse(
                class_type,
                cnr_id=_text(props.get("cnr_id"), 100),
                aux_id=_text(props.get("aux_id"), 200),
                ver=_text(props.get("ver"), 100),
            )
        )


def _ui_format(data: dict[str, Any]) -> list[NodeUse]:
    out = _Collector()
    definitions = data.get("definitions")
    subgraphs: dict[str, Any] = {}
    if isinstance(definitions, dict) and isinstance(definitions.get("subgraphs"), list):
        for graph in definitions["subgraphs"]:
            if isinstance(graph, dict) and isinstance(graph.get("id"), str):
                subgraphs[graph["id"]] = graph.get("nodes", [])
    extra = data.get("extra")
    groups = extra.get("groupNodes") if isinstance(extra, dict) else None
    _ui_nodes(data["nodes"], subgraphs, dict(groups) if isinstance(groups, dict) else {}, out, 0)
    # A subgraph defined but never placed still has to load with the workflow.
    while subgraphs:
        _ui_nodes(subgraphs.pop(next(iter(subgraphs))), subgraphs, {}, out, 1)
    return out.uses


def _api_format(data: dict[str, Any]) -> list[NodeUse]:
    out = _Collector()
    for key, node in data.items():
        if not isinstance(node, dict):
            raise SourceError(f"workflow.{key}", "must be an object with 'class_type'")
        class_type = _text(node.get("class_type"))
        if class_type is None:
            raise SourceError(f"workflow.{key}.class_type", "must be a node class name")
        out.add(NodeUse(class_type))
    return out.uses


def node_uses(data: object) -> list[NodeUse]:
    """The classes ``data`` (a decoded workflow, either format) uses, first use first."""
    if not isinstance(data, dict):
        raise SourceError("workflow", "must be a JSON object (a ComfyUI workflow)")
    if isinstance(data.get("nodes"), list):
        return _ui_format(data)
    if isinstance(data.get("prompt"), dict) and len(data) <= 4:
        return _api_format(data["prompt"])
    if isinstance(data.get("workflow"), dict) and isinstance(data["workflow"].get("nodes"), list):
        return _ui_format(data["workflow"])
    if data and all(isinstance(v, dict) and "class_type" in v for v in data.values()):
        return _api_format(data)
    raise SourceError(
        "workflow",
        "is neither a UI-format workflow (with 'nodes') nor an API-format one "
        "({id: {'class_type': …}})",
    )


def load_bytes(raw: bytes, field: str = "workflow") -> dict[str, Any]:
    """A workflow object from a file's bytes: JSON, or a PNG ComfyUI saved."""
    if len(raw) > MAX_FILE_BYTES:
        raise SourceError(field, f"is larger than {MAX_FILE_BYTES} bytes")
    if png.is_png(raw):
        chunks = png.text_chunks(raw)
        # The UI format keeps cnr_id/aux_id/ver; the API prompt is the fallback.
        text = chunks.get("workflow") or chunks.get("prompt")
        if text is None:
            raise SourceError(field, "the PNG carries no ComfyUI workflow (no 'workflow' chunk)")
    else:
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise SourceError(field, "is neither a PNG nor UTF-8 JSON") from None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise SourceError(field, f"is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise SourceError(field, "must hold a JSON object (a ComfyUI workflow)")
    return data
