"""The install spec: what the agent is asked to install."""

import json
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Union

from protocol import fields
from protocol.errors import ProtocolError
from protocol.lock import Lock

DEFAULT_JOBS = 4
DEFAULT_VERIFY_TIMEOUT = 120.0
MAX_VERIFY_TIMEOUT = 3600.0
#: ``verify``: True judges every node by ComfyUI's own start (``main.py
#: --quick-test-for-ci``) where the home is a ComfyUI (main.py and the ``comfy``
#: package), by a bare import of each node where it is not; "comfyui" always by
#: ComfyUI's start; "import" always by the bare import; False not at all.
VERIFY_MODES = (True, False, "comfyui", "import")
MAX_JOBS = 32
#: Clones wait on network round trips, not the CPU, so they get their own, wider
#: parallelism (16 measured fastest for 30 nodes behind 50 ms; docs/BENCHMARKS.md).
DEFAULT_CLONE_JOBS = 16
MAX_CLONE_JOBS = 64
MAX_NODES = 500
#: What installs requirements: uv if found or installable, else pip; or one of them.
INSTALLERS = ("auto", "uv", "pip")
#: ``restart``: leave ComfyUI alone (the default, as before), restart it the way
#: this instance runs it, or (an object) ``{"command": [argv…]}`` when none is found.
RESTART_MODES = ("never", "auto")
MAX_RESTART_ARGS = 64
DEFAULT_READY_TIMEOUT = 300.0
MAX_READY_TIMEOUT = 3600.0
#: Classes the ready check looks for; a workflow has at most this many distinct ones.
MAX_READY_CLASSES = 20000
MAX_CLASS_NAME = 256


def restart_mode(value: object, where: str = "restart") -> "Union[str, Dict[str, List[str]]]":
    """``"never"``, ``"auto"`` or ``{"command": [argv…]}`` (an argv list, never a shell line)."""
    if isinstance(value, str):
        if value not in RESTART_MODES:
            raise ProtocolError(where, 'must be "never", "auto" or {"command": [...]}')
        return value
    if not isinstance(value, Mapping):
        raise ProtocolError(where, 'must be "never", "auto" or {"command": [...]}')
    unknown = set(value) - {"command"}
    if unknown:
        raise ProtocolError(
            where, "unknown field(s): {}".format(", ".join(sorted(map(str, unknown))))
        )
    command = value.get("command")
    if not isinstance(command, list) or not command:
        raise ProtocolError(where + ".command", "must be a non-empty list of arguments")
    if len(command) > MAX_RESTART_ARGS:
        raise ProtocolError(where + ".command", f"must have at most {MAX_RESTART_ARGS} arguments")
    for i, arg in enumerate(command):
        if not isinstance(arg, str) or "\0" in arg or len(arg) > 4096:
            raise ProtocolError(
                f"{where}.command.{i}", "must be a string without NUL, at most 4096 characters"
            )
    if not command[0]:
        raise ProtocolError(where + ".command.0", "must name a program")
    return {"command": list(command)}


def ready_classes(value: object, where: str = "ready_classes") -> List[str]:
    """Node class names (printable, at most 256 characters), duplicates dropped."""
    if not isinstance(value, list):
        raise ProtocolError(where, "must be a list of node class names")
    if len(value) > MAX_READY_CLASSES:
        raise ProtocolError(where, f"must have at most {MAX_READY_CLASSES} entries")
    out: List[str] = []
    seen = set()
    for i, name in enumerate(value):
        if (
            not isinstance(name, str)
            or not name
            or len(name) > MAX_CLASS_NAME
            or not name.isprintable()
        ):
            raise ProtocolError(f"{where}.{i}", "must be a node class name")
        if name not in seen:
            seen.add(name)
            out.append(name)
    return out


#: ``install`` changes the home; ``plan`` says what an install would change, and
#: changes nothing (clones staged in the task folder, resolves dry-run).
MODES = ("install", "plan")
MAX_POLICY_NAMES = 200


def _package_names(value: object, where: str) -> List[str]:
    """A policy's package names, PEP 503-normalised (``OpenCV_Python`` is ``opencv-python``)."""
    if not isinstance(value, list):
        raise ProtocolError(where, "must be a list of package names")
    if len(value) > MAX_POLICY_NAMES:
        raise ProtocolError(where, f"must have at most {MAX_POLICY_NAMES} entries")
    out: List[str] = []
    for i, item in enumerate(value):
        if not isinstance(item, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$", item):
            raise ProtocolError(f"{where}.{i}", "must be a package name like 'numpy'")
        name = re.sub(r"[-_.]+", "-", item).lower()
        if name not in out:
            out.append(name)
    return out


def _expectation(value: object) -> Optional[Dict[str, Any]]:
    """``expect``: the plan being applied, as the controller hands it over."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ProtocolError("expect", "must be an object")
    for key, kinds in (("plan_id", str), ("heads", dict), ("packages", dict), ("pins", dict)):
        if not isinstance(value.get(key), kinds):
            raise ProtocolError(f"expect.{key}", f"must be a {kinds.__name__}")
    for key in ("packages", "pins"):
        for name, version in value[key].items():
            if not isinstance(name, str) or not isinstance(version, str):
                raise ProtocolError(f"expect.{key}", "must map package names to versions")
    for name, head in value["heads"].items():
        if not isinstance(name, str) or not (head is None or isinstance(head, str)):
            raise ProtocolError("expect.heads", "must map node names to commits or null")
    fields.task_id(value["plan_id"], "expect.plan_id")
    return dict(value)


@dataclass(frozen=True)
class NodeSpec:
    url: str
    ref: Optional[str] = None
    name: Optional[str] = None

    @property
    def dir_name(self) -> str:
        return self.name if self.name is not None else fields.name_from_url(self.url)

    def to_dict(self) -> Dict[str, Any]:
        return {"url": self.url, "ref": self.ref, "name": self.name}


def _split_ref(text: str) -> "tuple[str, Optional[str]]":
    """Split ``URL@REF`` shorthand, ignoring an ``@`` that belongs to the URL's user."""
    if "://" in text:
        scheme, rest = text.split("://", 1)
        slash = rest.find("/")
        if slash < 0:
            return text, None
        path_start = len(scheme) + 3 + slash
    else:
        colon = text.find(":")
        path_start = colon + 1 if colon >= 0 else 0
    at = text.rfind("@", path_start)
    if at < 0:
        return text, None
    return text[:at], text[at + 1 :]


def parse_node(value: object, field_name: str = "node", allow_file: bool = False) -> NodeSpec:
    """A node from ``"URL"``, ``"URL@REF"``, ``"URL@REF#NAME"`` or ``{"url", "ref", "name"}``."""
    if isinstance(value, str):
        # ``URL[@REF][#NAME]``: git URLs have no fragment, so '#' can name the
        # node's directory where a command line has no room for an object.
        text, _, given_name = value.partition("#")
        url, ref = _split_ref(text)
        url_field = field_name
        ref_field = field_name
        name: Optional[str] = given_name if "#" in value else None
        name_field = field_name
    elif isinstance(value, Mapping):
        unknown = set(value) - {"url", "ref", "name"}
        if unknown:
            raise ProtocolError(
                field_name, "unknown field(s): {}".format(", ".join(sorted(map(str, unknown))))
            )
        if "url" not in value:
            raise ProtocolError(field_name + ".url", "is required")
        url = value["url"]
        ref = value.get("ref")
        name = value.get("name")
        url_field = field_name + ".url"
        ref_field = field_name + ".ref"
        name_field = field_name + ".name"
    else:
        raise ProtocolError(field_name, "must be a URL string or an object with 'url'")
    url = fields.git_url(url, url_field, allow_file=allow_file)
    if ref is not None:
        ref = fields.git_ref(ref, ref_field)
    if name is not None:
        name = fields.node_name(name, name_field)
    else:
        derived = fields.name_from_url(url)
        try:
            fields.node_name(derived, name_field)
        except ProtocolError:
            raise ProtocolError(
                name_field,
                "cannot derive a safe directory name from the URL; give 'name' (URL#NAME)",
            ) from None
    return NodeSpec(url=url, ref=ref, name=name)


@dataclass(frozen=True)
class InstallSpec:
    """Everything one install needs. Validated on construction through :meth:`from_dict`."""

    task_id: str
    ui_home: str
    nodes: List[NodeSpec]
    python: Optional[str] = None
    pip_args: List[str] = field(default_factory=list)
    jobs: int = DEFAULT_JOBS
    update: bool = False
    #: Clones at a time; ``jobs`` caps the CPU-bound work.
    clone_jobs: int = DEFAULT_CLONE_JOBS
    #: Allow ``file://`` URLs; only a person on the instance (or a test) sets this.
    allow_file_urls: bool = False
    verify: "bool | str" = True
    verify_timeout: float = DEFAULT_VERIFY_TIMEOUT
    #: Reproduce this lock: its nodes at its commits, its package versions.
    lock: Optional[Lock] = None
    installer: str = "auto"
    #: Run git, pip/uv and install.py at a lower CPU and I/O priority, so a ComfyUI
    #: serving on the same machine stays responsive.
    low_priority: bool = True
    #: After the install: "never" (as before), "auto" (supervisord, systemd, the
    #: plain process, in that order) or {"command": [...]} (auto, else this argv).
    restart: "Union[str, Dict[str, List[str]]]" = "never"
    #: Without a restart: still ask a running ComfyUI which classes it has.
    ready_check: bool = False
    #: Seconds a restarted ComfyUI has to answer on its port.
    ready_timeout: float = DEFAULT_READY_TIMEOUT
    #: The classes the workflow needs (its ``ready.missing`` is what the server lacks).
    ready_classes: List[str] = field(default_factory=list)

    @property
    def wants_ready(self) -> bool:
        return self.restart != "never" or self.ready_check

    #: ``plan``: say what an install would change, touching nothing.
    mode: str = "install"
    #: Policies, checked before anything is touched: these packages must not be
    #: downgraded, these must not be installed or changed at all.
    forbid_downgrade: List[str] = field(default_factory=list)
    forbid: List[str] = field(default_factory=list)
    #: Applying a plan (the controller's copy of it): the node heads and packages
    #: the plan saw (any other is drift, refused), the package versions it chose.
    expect: Optional[Dict[str, Any]] = None

    @classmethod
    def from_dict(cls, data: object) -> "InstallSpec":
        if not isinstance(data, Mapping):
            raise ProtocolError("", "the spec must be a JSON object")
        known = {
            "task_id",
            "ui_home",
            "nodes",
            "python",
            "pip_args",
            "jobs",
            "clone_jobs",
            "update",
            "allow_file_urls",
            "verify",
            "verify_timeout",
            "lock",
            "installer",
            "low_priority",
            "restart",
            "ready_check",
            "ready_timeout",
            "ready_classes",
            "mode",
            "forbid_downgrade",
            "forbid",
            "expect",
        }
        unknown = set(data) - known
        if unknown:
            raise ProtocolError(
                "", "unknown field(s): {}".format(", ".join(sorted(map(str, unknown))))
            )
        for required in ("task_id", "ui_home"):
            if required not in data:
                raise ProtocolError(required, "is required")
        allow_file = data.get("allow_file_urls", False)
        if not isinstance(allow_file, bool):
            raise ProtocolError("allow_file_urls", "must be true or false")
        lock = None
        if data.get("lock") is not None:
            lock = Lock.from_dict(data["lock"], "lock", allow_file_urls=allow_file)
        nodes_value = data.get("nodes", [] if lock is not None else None)
        if nodes_value is None:
            raise ProtocolError("nodes", "is required (or give a 'lock' to reproduce)")
        if not isinstance(nodes_value, list):
            raise ProtocolError("nodes", "must be a list")
        if lock is not None:
            if nodes_value:
                raise ProtocolError("nodes", "give 'nodes' or 'lock', not both")
            if not lock.nodes:
                raise ProtocolError("lock.nodes", "the lock has no nodes to install")
            nodes_value = [n.to_dict() for n in lock.nodes]
            for item in nodes_value:
                item["ref"] = item.pop("commit")
        if not nodes_value:
            raise ProtocolError("nodes", "must name at least one node")
        if len(nodes_value) > MAX_NODES:
            raise ProtocolError("nodes", f"must have at most {MAX_NODES} entries")
        where = "lock.nodes" if lock is not None else "nodes"
        nodes = [
            parse_node(item, f"{where}.{i}", allow_file=allow_file)
            for i, item in enumerate(nodes_value)
        ]
        seen: Dict[str, int] = {}
        for i, node in enumerate(nodes):
            key = node.dir_name.lower()
            if key in seen:
                raise ProtocolError(
                    f"nodes.{i}",
                    f"installs into '{node.dir_name}' like nodes.{seen[key]}; "
                    "give one of them a 'name' (URL#NAME on a command line)",
                )
            seen[key] = i
        python = data.get("python")
        if python is not None:
            python = fields.python_command(python, "python")
        jobs = data.get("jobs", DEFAULT_JOBS)
        if isinstance(jobs, bool) or not isinstance(jobs, int) or not 1 <= jobs <= MAX_JOBS:
            raise ProtocolError("jobs", f"must be a whole number from 1 to {MAX_JOBS}")
        clone_jobs = data.get("clone_jobs", DEFAULT_CLONE_JOBS)
        if (
            isinstance(clone_jobs, bool)
            or not isinstance(clone_jobs, int)
            or not 1 <= clone_jobs <= MAX_CLONE_JOBS
        ):
            raise ProtocolError("clone_jobs", f"must be a whole number from 1 to {MAX_CLONE_JOBS}")
        update = data.get("update", False)
        if not isinstance(update, bool):
            raise ProtocolError("update", "must be true or false")
        verify = data.get("verify", True)
        if verify not in VERIFY_MODES or (verify in (0, 1) and not isinstance(verify, bool)):
            raise ProtocolError("verify", 'must be true, false, "comfyui" or "import"')
        verify_timeout = data.get("verify_timeout", DEFAULT_VERIFY_TIMEOUT)
        if (
            isinstance(verify_timeout, bool)
            or not isinstance(verify_timeout, (int, float))
            or not 1 <= verify_timeout <= MAX_VERIFY_TIMEOUT
        ):
            raise ProtocolError(
                "verify_timeout", f"must be a number of seconds from 1 to {MAX_VERIFY_TIMEOUT:.0f}"
            )
        installer = data.get("installer", "auto")
        if installer not in INSTALLERS:
            raise ProtocolError("installer", "must be one of: {}".format(", ".join(INSTALLERS)))
        low_priority = data.get("low_priority", True)
        if not isinstance(low_priority, bool):
            raise ProtocolError("low_priority", "must be true or false")
        restart = restart_mode(data.get("restart", "never"))
        ready_check = data.get("ready_check", False)
        if not isinstance(ready_check, bool):
            raise ProtocolError("ready_check", "must be true or false")
        ready_timeout = data.get("ready_timeout", DEFAULT_READY_TIMEOUT)
        if (
            isinstance(ready_timeout, bool)
            or not isinstance(ready_timeout, (int, float))
            or not 1 <= ready_timeout <= MAX_READY_TIMEOUT
        ):
            raise ProtocolError(
                "ready_timeout", f"must be a number of seconds from 1 to {MAX_READY_TIMEOUT:.0f}"
            )
        mode = data.get("mode", "install")
        if mode not in MODES:
            raise ProtocolError("mode", "must be one of: {}".format(", ".join(MODES)))
        expect = _expectation(data.get("expect"))
        if expect is not None and mode != "install":
            raise ProtocolError("expect", "only an install applies a plan")
        return cls(
            task_id=fields.task_id(data["task_id"]),
            ui_home=fields.remote_path(data["ui_home"], "ui_home"),
            nodes=nodes,
            python=python,
            pip_args=fields.pip_args(data.get("pip_args", [])),
            jobs=jobs,
            # A lock moves nodes already there to the locked commits.
            update=update or lock is not None,
            clone_jobs=clone_jobs,
            allow_file_urls=allow_file,
            verify=verify,
            verify_timeout=float(verify_timeout),
            lock=lock,
            installer=str(installer),
            low_priority=low_priority,
            restart=restart,
            ready_check=ready_check,
            ready_timeout=float(ready_timeout),
            ready_classes=ready_classes(data.get("ready_classes", [])),
            mode=str(mode),
            forbid_downgrade=_package_names(data.get("forbid_downgrade") or [], "forbid_downgrade"),
            forbid=_package_names(data.get("forbid") or [], "forbid"),
            expect=expect,
        )

    @classmethod
    def from_json(cls, text: str) -> "InstallSpec":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ProtocolError("", f"the spec is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {
            "task_id": self.task_id,
            "ui_home": self.ui_home,
            "python": self.python,
            "pip_args": list(self.pip_args),
            "jobs": self.jobs,
            "clone_jobs": self.clone_jobs,
            "update": self.update,
            "allow_file_urls": self.allow_file_urls,
            "verify": self.verify,
            "verify_timeout": self.verify_timeout,
            "installer": self.installer,
            "low_priority": self.low_priority,
            # The controller ships its own agent (by the bundle's hash), so the agent
            # that reads this knows every field: each is written, defaults too.
            "restart": (
                {"command": list(self.restart["command"])}
                if isinstance(self.restart, dict)
                else self.restart
            ),
            "ready_check": self.ready_check,
            "ready_timeout": self.ready_timeout,
            "ready_classes": list(self.ready_classes),
            "mode": self.mode,
            "forbid_downgrade": list(self.forbid_downgrade),
            "forbid": list(self.forbid),
            "expect": self.expect,
        }
        if self.lock is not None:
            out["lock"] = self.lock.to_dict()  # the nodes come from it
        else:
            out["nodes"] = [node.to_dict() for node in self.nodes]
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)
