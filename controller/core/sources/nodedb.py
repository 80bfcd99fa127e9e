"""ComfyUI-Manager's node database: which repository provides which node class.

Three files, as ComfyUI-Manager publishes them (in its repository, in every
checkout of it, and in the ``comfyui-manager`` package): ``extension-node-map.json``
(repository → ``[classes, {"nodename_pattern", …}]``; required),
``custom-node-list.json`` (the curated list) and ``github-stats.json`` (stars).
They are read as data; ComfyUI-Manager itself is never imported.
"""

from __future__ import annotations

import json
import re
import secrets
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.core.sources.errors import SourceError
from controller.core.sources.patterns import ClassPattern, compile_pattern
from protocol import ProtocolError, parse_node

MAP_FILE = "extension-node-map.json"
LIST_FILE = "custom-node-list.json"
STATS_FILE = "github-stats.json"
FILES = (MAP_FILE, LIST_FILE, STATS_FILE)
MAX_FILE_BYTES = 64 * 1024 * 1024
#: The core's entry in the map: its classes need no custom node.
CORE_URL = "https://github.com/comfyanonymous/ComfyUI"
#: Where ``nodeferry node-db update`` fetches the files from.
UPSTREAM = "https://raw.githubusercontent.com/ltdrdata/ComfyUI-Manager/main/"
#: Directory names of a ComfyUI-Manager checkout under custom_nodes/.
MANAGER_DIRS = ("ComfyUI-Manager", "comfyui-manager")
#: Patterns come from files an instance may have written. They are matched by
#: RE2 (``patterns``), so no pattern can backtrack; the caps keep a hostile
#: database from making many large programs or long subjects.
MAX_PATTERN = 200
MAX_PATTERN_SUBJECT = 128

_REPO_PATH = re.compile(r"^(?:[a-z][a-z0-9+.-]*://)?(?:[^@/]*@)?([^/:]+)(?::\d+)?[/:](.+)$")


def repo_key(url: str) -> str:
    """One spelling per repository: host and path, lowercase, no scheme, user or .git.

    ``https://github.com/A/B.git``, ``git@github.com:a/b`` and ``http://github.com/a/b/``
    are the same repository.
    """
    text = url.strip().lower().rstrip("/")
    match = _REPO_PATH.match(text)
    if match is None:
        return text
    path = match.group(2).strip("/")
    if path.endswith(".git"):
        path = path[:-4]
    return f"{match.group(1)}/{path}"


def repo_name(url: str) -> str:
    return repo_key(url).rsplit("/", 1)[-1]


def installable(url: str) -> bool:
    """A git repository nodeferry can clone (not a single-file gist or a zip)."""
    if url.lower().endswith((".py", ".js", ".zip", ".json")):
        return False
    try:
        parse_node(url)
    except ProtocolError:
        return False
    return True


@dataclass
class NodeDB:
    source: str
    #: Repository URL (as the map spells it) → its classes, in the map's order.
    packs: dict[str, list[str]] = field(default_factory=dict)
    by_class: dict[str, list[str]] = field(default_factory=dict)
    core: set[str] = field(default_factory=set)
    patterns: list[tuple[ClassPattern, str]] = field(default_factory=list)
    #: repo_key of every installable repository the curated list names.
    listed: set[str] = field(default_factory=set)
    #: The curated list's own ids (lowercase) → URL.
    list_ids: dict[str, str] = field(default_factory=dict)
    #: repo_key → stars.
    stars: dict[str, int] = field(default_factory=dict)
    #: lowercase repository name → URLs (map and list), first seen first.
    by_name: dict[str, list[str]] = field(default_factory=dict)

    @property
    def summary(self) -> dict[str, Any]:
        return {"source": self.source, "packs": len(self.packs), "classes": len(self.by_class)}

    def _name(self, url: str) -> None:
        urls = self.by_name.setdefault(repo_name(url), [])
        if url not in urls:
            urls.append(url)

    @classmethod
    def from_data(
        cls, source: str, node_map: object, node_list: object = None, stats: object = None
    ) -> NodeDB:
        if not isinstance(node_map, dict) or not node_map:
            raise SourceError("node_db", f"{source}: {MAP_FILE} is not a repository map")
        db = cls(source=source)
        for url, entry in node_map.items():
            if not (isinstance(url, str) and isinstance(entry, list) and entry):
                continue
            listed = entry[0] if isinstance(entry[0], list) else []
            names = [c for c in listed if isinstance(c, str)]
            meta = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
            if repo_key(url) == repo_key(CORE_URL):
                db.core.update(names)
                continue
            if not installable(url):
                continue
            db.packs[url] = names
            db._name(url)
            for name in names:
                db.by_class.setdefault(name, []).append(url)
            pattern = meta.get("nodename_pattern")
            if isinstance(pattern, str) and len(pattern) <= MAX_PATTERN:
                compiled = compile_pattern(pattern)
                if compiled is not None:
                    db.patterns.append((compiled, url))
        entries = node_list.get("custom_nodes") if isinstance(node_list, dict) else None
        for item in entries if isinstance(entries, list) else []:
            if not isinstance(item, dict) or item.get("install_type") != "git-clone":
                continue
            files = item.get("files")
            url = files[0] if isinstance(files, list) and files else item.get("reference")
            if not isinstance(url, str) or not installable(url):
                continue
            db.listed.add(repo_key(url))
            db._name(url)
            ident = item.get("id")
            if isinstance(ident, str):
                db.list_ids.setdefault(ident.lower(), url)
        if isinstance(stats, dict):
            for url, info in stats.items():
                if isinstance(url, str) and isinstance(info, dict):
                    count = info.get("stars")
                    if isinstance(count, int):
                        db.stars[repo_key(url)] = count
        return db

    def match_pattern(self, class_type: str) -> str | None:
        if len(class_type) > MAX_PATTERN_SUBJECT:
            return None
        for pattern, url in self.patterns:
            if pattern.search(class_type):
                return url
        return None


def parse_files(source: str, read: Callable[[str], bytes | None]) -> NodeDB:
    """A NodeDB from ``read(name)`` (bytes, or None when that file is missing)."""
    decoded: dict[str, object] = {}
    for name in FILES:
        raw = read(name)
        if raw is None:
            if name == MAP_FILE:
                raise SourceError("node_db", f"{source} has no {MAP_FILE}")
            continue
        if len(raw) > MAX_FILE_BYTES:
            raise SourceError("node_db", f"{source}/{name} is larger than {MAX_FILE_BYTES} bytes")
        try:
            decoded[name] = json.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise SourceError("node_db", f"{source}/{name} is not valid JSON: {exc}") from None
    return NodeDB.from_data(
        source, decoded[MAP_FILE], decoded.get(LIST_FILE), decoded.get(STATS_FILE)
    )


def read_dir(directory: Path) -> Callable[[str], bytes | None]:
    def read(name: str) -> bytes | None:
        path = directory / name
        try:
            with open(path, "rb") as handle:
                return handle.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return None

    return read


def load_dir(directory: Path) -> NodeDB:
    return parse_files(str(directory), read_dir(directory))


def has_db(directory: Path) -> bool:
    return (directory / MAP_FILE).is_file()


def kept_dir(data_dir: Path) -> Path:
    """The controller's own copy, refreshed by ``nodeferry node-db update``."""
    return data_dir / "node-db"


def update(data_dir: Path, base_url: str = UPSTREAM, timeout: float = 60.0) -> list[Path]:
    """Download the files into the kept copy (each replaced atomically). Online."""
    target = kept_dir(data_dir)
    target.mkdir(parents=True, exist_ok=True)
    fetched: dict[str, bytes] = {}
    for name in FILES:
        url = base_url + name
        if not url.startswith(("https://", "http://")):
            raise SourceError("node_db", f"refusing to fetch {url}: only http(s) is used")
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
            fetched[name] = response.read(MAX_FILE_BYTES + 1)
    # Check them all before replacing any, so a bad download leaves the old copy.
    parse_files(base_url, fetched.get)
    written = []
    for name, data in fetched.items():
        temp = target / f".{name}.{secrets.token_hex(4)}.tmp"
        temp.write_bytes(data)
        temp.replace(target / name)
        written.append(target / name)
    return written
