"""ComfyUI-Manager snapshots: ``git_custom_nodes`` (URL → ``{"hash", "disabled"}``)
and ``cnr_custom_nodes`` (registry id → version), as JSON or YAML.

``comfyui`` (the core's commit), ``file_custom_nodes`` (single .py files) and
``pips`` are not custom-node repositories; they are reported, not installed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from controller.core.sources.errors import SourceError

MAX_TEXT = 4 * 1024 * 1024
MAX_ENTRIES = 2000
_COMMIT = re.compile(r"^[0-9a-fA-F]{7,40}$")


@dataclass
class Snapshot:
    #: (url, commit or None), in the snapshot's order.
    git: list[tuple[str, str | None]] = field(default_factory=list)
    #: (registry id, version or None).
    cnr: list[tuple[str, str | None]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def parse_text(text: str, field_name: str = "snapshot") -> dict[str, Any]:
    """A snapshot file's text (JSON or YAML) as a mapping."""
    if len(text) > MAX_TEXT:
        raise SourceError(field_name, f"is longer than {MAX_TEXT} characters")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        try:
            # safe_load builds plain dicts, lists and scalars only.
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SourceError(field_name, f"is neither JSON nor YAML: {exc}") from None
    if not isinstance(data, dict):
        raise SourceError(field_name, "must be a ComfyUI-Manager snapshot (a mapping)")
    return data


def parse(value: object, field_name: str = "snapshot") -> Snapshot:
    """A snapshot from its decoded object, or from its JSON/YAML text."""
    data = parse_text(value, field_name) if isinstance(value, str) else value
    if not isinstance(data, dict):
        raise SourceError(field_name, "must be a ComfyUI-Manager snapshot object or its text")
    git = data.get("git_custom_nodes") or {}
    cnr = data.get("cnr_custom_nodes") or {}
    if not isinstance(git, dict) or not isinstance(cnr, dict):
        raise SourceError(
            field_name, "git_custom_nodes and cnr_custom_nodes must be mappings (URL → entry)"
        )
    if not git and not cnr:
        raise SourceError(
            field_name, "names no custom nodes (no git_custom_nodes or cnr_custom_nodes)"
        )
    if len(git) + len(cnr) > MAX_ENTRIES:
        raise SourceError(field_name, f"has more than {MAX_ENTRIES} entries")
    snap = Snapshot()
    for url, entry in git.items():
        where = f"{field_name}.git_custom_nodes.{url}"
        if not isinstance(url, str):
            raise SourceError(where, "the key must be a repository URL")
        entry = entry if isinstance(entry, dict) else {}
        if entry.get("disabled") is True:
            snap.warnings.append(f"snapshot: {url} is disabled there; skipped")
            continue
        commit = entry.get("hash")
        if commit is not None and not (isinstance(commit, str) and _COMMIT.match(commit)):
            raise SourceError(where + ".hash", "must be a git commit hash")
        snap.git.append((url, commit))
    for ident, version in cnr.items():
        where = f"{field_name}.cnr_custom_nodes.{ident}"
        if not isinstance(ident, str):
            raise SourceError(where, "the key must be a registry id")
        if version is not None and not isinstance(version, str | int | float):
            raise SourceError(where, "the version must be a string")
        snap.cnr.append((ident, None if version is None else str(version)))
    files = data.get("file_custom_nodes")
    if isinstance(files, list) and files:
        snap.warnings.append(
            f"snapshot: {len(files)} single-file node(s) (file_custom_nodes) are not "
            "repositories and were not installed"
        )
    return snap
