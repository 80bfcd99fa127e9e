"""The lock: what one ComfyUI home holds, exactly enough to reproduce it elsewhere.

Written by the agent as ``lock.json`` next to a task's ``progress.json``; read
back in a spec's ``lock`` field (to reproduce it) and by ``agent diff``.

    {"schema": 1, "created_at", "ui_home", "comfyui": <commit or null>,
     "python": {"version", "path"}, "torch": {name: version},
     "nodes": [{"name", "url", "commit"}], "packages": {name: version}}

Package names are PEP 503-normalised (``Pillow`` -> ``pillow``), so two locks
compare name by name.
"""

import json
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

from protocol import fields as checks
from protocol.errors import ProtocolError

LOCK_SCHEMA = 1
TORCH_FAMILY = ("torch", "torchvision", "torchaudio", "xformers")
MAX_PACKAGES = 5000

_COMMIT = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
_PACKAGE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")
# PEP 440 versions and the local/legacy ones pip still reports; nothing that a
# constraints file could read as an option or a second requirement.
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+!_-]*$")


def normalize_package(name: str) -> str:
    """PEP 503: lowercase, runs of ``-_.`` become one ``-``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _commit(value: object, where: str) -> str:
    if not isinstance(value, str) or not _COMMIT.match(value):
        raise ProtocolError(where, "must be a full lowercase hex commit id")
    return value


def _package_map(value: object, where: str) -> Dict[str, str]:
    if not isinstance(value, Mapping):
        raise ProtocolError(where, "must be an object of name: version")
    if len(value) > MAX_PACKAGES:
        raise ProtocolError(where, f"must have at most {MAX_PACKAGES} entries")
    out: Dict[str, str] = {}
    for name, version in value.items():
        if not isinstance(name, str) or not _PACKAGE.match(name) or len(name) > 200:
            raise ProtocolError(where, f"{name!r} is not a valid package name")
        if not isinstance(version, str) or not _VERSION.match(version) or len(version) > 200:
            raise ProtocolError(f"{where}.{name}", f"{version!r} is not a valid version")
        out[normalize_package(name)] = version
    return out


@dataclass(frozen=True)
class LockedNode:
    name: str
    url: str
    commit: str

    def to_dict(self) -> Dict[str, str]:
        return {"name": self.name, "url": self.url, "commit": self.commit}


@dataclass(frozen=True)
class Lock:
    created_at: str
    ui_home: str
    python_version: Optional[str] = None
    python_path: Optional[str] = None
    comfyui: Optional[str] = None
    torch: Dict[str, str] = field(default_factory=dict)
    nodes: List[LockedNode] = field(default_factory=list)
    packages: Dict[str, str] = field(default_factory=dict)

    # -- (de)serialisation -------------------------------------------------------

    def to_dict(self) -> Dict[str, Any]:
        return {
            "schema": LOCK_SCHEMA,
            "created_at": self.created_at,
            "ui_home": self.ui_home,
            "comfyui": self.comfyui,
            "python": {"version": self.python_version, "path": self.python_path},
            "torch": dict(sorted(self.torch.items())),
            "nodes": [n.to_dict() for n in sorted(self.nodes, key=lambda n: n.name.lower())],
            "packages": dict(sorted(self.packages.items())),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, allow_file_urls: bool = False) -> "Lock":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ProtocolError("lock", f"is not valid JSON: {exc}") from None
        return cls.from_dict(data, allow_file_urls=allow_file_urls)

    @classmethod
    def from_dict(cls, data: object, where: str = "lock", allow_file_urls: bool = False) -> "Lock":
        """A validated lock; ``where`` prefixes the field named in an error."""
        if not isinstance(data, Mapping):
            raise ProtocolError(where, "must be an object")
        known = {
            "schema",
            "created_at",
            "ui_home",
            "comfyui",
            "python",
            "torch",
            "nodes",
            "packages",
        }
        unknown = set(data) - known
        if unknown:
            raise ProtocolError(
                where, "unknown field(s): {}".format(", ".join(sorted(map(str, unknown))))
            )
        if data.get("schema") != LOCK_SCHEMA:
            raise ProtocolError(
                where + ".schema",
                f"unsupported lock schema {data.get('schema')!r} (this reader knows {LOCK_SCHEMA})",
            )
        created = data.get("created_at")
        if not isinstance(created, str):
            raise ProtocolError(where + ".created_at", "must be a timestamp string")
        ui_home = data.get("ui_home")
        if not isinstance(ui_home, str):
            raise ProtocolError(where + ".ui_home", "must be a string")
        comfyui = data.get("comfyui")
        if comfyui is not None:
            comfyui = _commit(comfyui, where + ".comfyui")
        python = data.get("python", {})
        if not isinstance(python, Mapping) or set(python) - {"version", "path"}:
            raise ProtocolError(where + ".python", "must be an object with 'version' and 'path'")
        for key in ("version", "path"):
            if python.get(key) is not None and not isinstance(python.get(key), str):
                raise ProtocolError(f"{where}.python.{key}", "must be a string")
        nodes_value = data.get("nodes", [])
        if not isinstance(nodes_value, list):
            raise ProtocolError(where + ".nodes", "must be a list")
        nodes: List[LockedNode] = []
        seen: Dict[str, int] = {}
        for i, item in enumerate(nodes_value):
            at = f"{where}.nodes.{i}"
            if not isinstance(item, Mapping) or set(item) != {"name", "url", "commit"}:
                raise ProtocolError(at, "must be an object with exactly 'name', 'url', 'commit'")
            node = LockedNode(
                name=checks.node_name(item["name"], at + ".name"),
                url=checks.git_url(item["url"], at + ".url", allow_file=allow_file_urls),
                commit=_commit(item["commit"], at + ".commit"),
            )
            key = node.name.lower()
            if key in seen:
                raise ProtocolError(at + ".name", f"repeats nodes.{seen[key]}")
            seen[key] = i
            nodes.append(node)
        return cls(
            created_at=created,
            ui_home=ui_home,
            python_version=python.get("version"),
            python_path=python.get("path"),
            comfyui=comfyui,
            torch=_package_map(data.get("torch", {}), where + ".torch"),
            nodes=nodes,
            packages=_package_map(data.get("packages", {}), where + ".packages"),
        )

    # -- using a lock --------------------------------------------------------------

    def constraints(self, instance_torch: Mapping[str, str]) -> "tuple[Dict[str, str], List[str]]":
        """Pins for a resolve that reproduces this lock on an instance, and warnings.

        Every locked package is pinned, except that the instance's own torch
        family wins where it has one: swapping the CUDA build under ComfyUI is
        never what a lock should do. Each override is a warning.
        """
        pins = dict(self.packages)
        pins.update(self.torch)
        warnings: List[str] = []
        for name in TORCH_FAMILY:
            have = instance_torch.get(name)
            if have is None:
                continue
            locked = pins.get(name)
            if locked is not None and locked != have:
                warnings.append(
                    f"{name}: the lock has {locked}, this instance has {have}; kept {have}"
                )
            pins[name] = have
        return pins, warnings


def _url_key(url: str) -> str:
    key = url.strip().rstrip("/").lower()
    return key[: -len(".git")] if key.endswith(".git") else key


def diff(locked: Lock, actual: Lock) -> Dict[str, Any]:
    """What ``actual`` (an instance now) has that differs from ``locked``.

    ``{"equal", "nodes": {"missing", "other_commit", "other_url", "extra"},
    "packages": {"missing", "other_version", "extra"}}``; nodes are matched by
    directory name, packages by normalised name.
    """
    have = {n.name: n for n in actual.nodes}
    want = {n.name: n for n in locked.nodes}
    nodes: Dict[str, List[Dict[str, Any]]] = {
        "missing": [],
        "other_commit": [],
        "other_url": [],
        "extra": [],
    }
    for name in sorted(want, key=str.lower):
        node = want[name]
        found = have.get(name)
        if found is None:
            nodes["missing"].append(node.to_dict())
            continue
        if _url_key(found.url) != _url_key(node.url):
            nodes["other_url"].append({"name": name, "locked": node.url, "actual": found.url})
        if found.commit != node.commit:
            nodes["other_commit"].append(
                {"name": name, "url": node.url, "locked": node.commit, "actual": found.commit}
            )
    for name in sorted(set(have) - set(want), key=str.lower):
        nodes["extra"].append(have[name].to_dict())
    locked_packages = dict(locked.packages)
    actual_packages = dict(actual.packages)
    packages: Dict[str, Any] = {
        "missing": {k: v for k, v in sorted(locked_packages.items()) if k not in actual_packages},
        "other_version": {
            k: {"locked": v, "actual": actual_packages[k]}
            for k, v in sorted(locked_packages.items())
            if k in actual_packages and actual_packages[k] != v
        },
        "extra": {k: v for k, v in sorted(actual_packages.items()) if k not in locked_packages},
    }
    equal = not any(nodes.values()) and not any(packages.values())
    return {"equal": equal, "nodes": nodes, "packages": packages}
