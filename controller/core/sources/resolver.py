"""The selection: which repositories to install and why, chosen deterministically.

Sources are added in a fixed order — explicit ``nodes`` first (they win), then a
snapshot, then registry ids, then a workflow's classes — and merged by
repository. A workflow's classes are resolved in the issue's order: core and
frontend-only classes need nothing; ``aux_id`` names the repository;
``cnr_id`` names a registry id; a class one pack provides → that pack; a class
several provide → one this selection already needs, then one the curated list names,
then the most stars, then URL order; ``nodename_pattern``; anything left is
unresolved, listed by name.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from controller.core.sources import registry_ids
from controller.core.sources.errors import SourceError
from controller.core.sources.nodedb import NodeDB, repo_key
from controller.core.sources.workflow import NodeUse
from protocol import ProtocolError, mask_credentials
from protocol import fields as checks

#: Classes the ComfyUI frontend itself draws; no backend pack is needed for them.
FRONTEND_ONLY = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode"})
CORE_CNR_ID = "comfy-core"
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_AUX_ID = re.compile(r"^[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100}$")

TagLookup = Callable[[str], "set[str] | None"]


@dataclass
class Choice:
    url: str
    ref: str | None
    name: str | None
    rule: str
    classes: list[str] = field(default_factory=list)

    @property
    def dir_name(self) -> str:
        return self.name or checks.name_from_url(self.url)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.dir_name,
            "url": mask_credentials(self.url),
            "ref": self.ref,
            "classes": list(self.classes),
            "rule": self.rule,
        }

    def node(self) -> dict[str, Any]:
        """The entry an install spec's ``nodes`` takes."""
        entry: dict[str, Any] = {"url": self.url, "ref": self.ref}
        if self.name is not None:
            entry["name"] = self.name
        return entry


@dataclass
class Selection:
    nodes: list[Choice] = field(default_factory=list)
    unresolved: list[str] = field(default_factory=list)
    ambiguous: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: Where the node database came from, when one was needed.
    node_db: str | None = None
    _by_key: dict[str, Choice] = field(default_factory=dict, repr=False)
    _dirs: dict[str, str] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "nodes": [choice.to_dict() for choice in self.nodes],
            "unresolved": list(self.unresolved),
            "ambiguous": list(self.ambiguous),
            "warnings": [mask_credentials(w) for w in self.warnings],
            "node_db": self.node_db,
        }

    def needs(self, url: str) -> bool:
        return repo_key(url) in self._by_key

    def add(
        self,
        url: str,
        ref: str | None,
        rule: str,
        *,
        classes: tuple[str, ...] = (),
        name: str | None = None,
    ) -> Choice | None:
        """Add a repository, or merge into the entry it already has (the first wins)."""
        # Everything resolved still passes the protocol's validators.
        url = checks.git_url(url, "url", allow_file=False)
        if ref is not None:
            ref = checks.git_ref(ref, "ref")
        key = repo_key(url)
        choice = self._by_key.get(key)
        if choice is None:
            choice = Choice(url, ref, name, rule)
            holder = self._dirs.get(choice.dir_name.lower())
            if holder is not None:
                self.warnings.append(
                    f"{url} would install into '{choice.dir_name}' like {holder}; skipped"
                    + (f" (needed for {', '.join(classes)})" if classes else "")
                )
                return None
            self._dirs[choice.dir_name.lower()] = url
            self._by_key[key] = choice
            self.nodes.append(choice)
        elif ref is not None and ref != choice.ref:
            self.warnings.append(
                f"{choice.url}: {rule} asks for {ref}, keeping "
                f"{choice.ref or 'the default branch'} ({choice.rule})"
            )
        for name_ in classes:
            if name_ not in choice.classes:
                choice.classes.append(name_)
        return choice


def pin(selection: Selection, url: str, ver: str | None, tags: TagLookup | None) -> str | None:
    """The ref for a saved ``ver``: a commit as is, a version as its tag when there is one."""
    if not ver:
        return None
    if _COMMIT.match(ver.lower()):
        return ver.lower()
    found = tags(url) if tags is not None else None
    if found is not None:
        for tag in (ver, "v" + ver, "V" + ver):
            if tag in found:
                return tag
    why = "it has no such tag" if found is not None else "its tags were not looked up (offline)"
    selection.warnings.append(f"{url}: version {ver} installs the default branch: {why}")
    return None


def add_registry_id(
    selection: Selection,
    ident: str,
    version: str | None,
    rule: str,
    db: NodeDB | None,
    online: registry_ids.OnlineLookup | None,
    tags: TagLookup | None,
    classes: tuple[str, ...] = (),
) -> bool:
    found = registry_ids.find(ident, db, online)
    if found is None:
        return False
    url, _how = found
    selection.add(url, pin(selection, url, version, tags), rule, classes=classes)
    return True


def _choose(selection: Selection, db: NodeDB, candidates: list[str]) -> tuple[str, str]:
    needed = [url for url in candidates if selection.needs(url)]
    listed = [url for url in candidates if repo_key(url) in db.listed]
    if needed:
        pool, why = needed, "already needed"
    elif listed:
        pool, why = listed, "listed in custom-node-list.json"
    else:
        pool, why = candidates, "most GitHub stars"
    if len(pool) > 1 and why != "most GitHub stars":
        why += ", then most GitHub stars"
    best = sorted(pool, key=lambda url: (-db.stars.get(repo_key(url), 0), url))[0]
    return best, why


def resolve_workflow(
    selection: Selection,
    uses: list[NodeUse],
    db: NodeDB,
    online: registry_ids.OnlineLookup | None = None,
    tags: TagLookup | None = None,
) -> None:
    pending: list[str] = []
    for use in uses:
        name = use.class_type
        if name in FRONTEND_ONLY or name in db.core or use.cnr_id == CORE_CNR_ID:
            continue
        if use.aux_id and _AUX_ID.match(use.aux_id):
            url = f"https://github.com/{use.aux_id}"
            try:
                selection.add(url, pin(selection, url, use.ver, tags), "aux_id", classes=(name,))
                continue
            except ProtocolError:
                pass
        if use.cnr_id:
            try:
                ident, _ = registry_ids.split_id(use.cnr_id, "cnr_id")
            except SourceError:
                ident = ""
            if ident and add_registry_id(
                selection, ident, use.ver, "cnr_id", db, online, tags, classes=(name,)
            ):
                continue
            selection.warnings.append(
                f"{name}: registry id {use.cnr_id} is not in the node database"
            )
        if name not in pending:
            pending.append(name)
    several: list[str] = []
    rest: list[str] = []
    for name in pending:
        providers = db.by_class.get(name, [])
        if len(providers) == 1:
            selection.add(providers[0], None, "only provider", classes=(name,))
        elif providers:
            several.append(name)
        else:
            rest.append(name)
    for name in several:
        candidates = db.by_class[name]
        chosen, why = _choose(selection, db, candidates)
        selection.add(chosen, None, f"several provide it: {why}", classes=(name,))
        selection.ambiguous.append(
            {"class": name, "chosen": chosen, "candidates": list(candidates), "reason": why}
        )
    for name in rest:
        matched = db.match_pattern(name)
        if matched is not None:
            selection.add(matched, None, "nodename_pattern", classes=(name,))
        else:
            selection.unresolved.append(name)
