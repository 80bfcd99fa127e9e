"""The progress document: written by the agent, read by the controller and by people.

One JSON object per task at ``~/.nodeferry/tasks/<task_id>/progress.json``.
States only move forward; once a document is final it never changes again.
"""

import datetime
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, List, Mapping, Optional, Tuple

from protocol import fields as checks
from protocol.errors import ProtocolError
from protocol.redact import mask_credentials

SCHEMA_VERSION = 1

#: Task states in the order they happen. ``lost`` is never written by the agent:
#: a status reader derives it when the worker died without a final document.
#: ``queued`` neither: the controller holds a task there until its ComfyUI home is
#: free and its limits allow it to start.
STATES = (
    "queued",
    "starting",
    "cloning",
    "planning",
    "installing_requirements",
    "running_install_scripts",
    "verifying",
    "restarting",
    "completed",
    "failed",
    "cancelled",
    "lost",
)
FINAL_STATES = frozenset({"completed", "failed", "cancelled", "lost"})
#: The order running states move forward in (any of them may end in a final state).
_STATE_RANK = {state: i for i, state in enumerate(s for s in STATES if s not in FINAL_STATES)}

NODE_STATUSES = (
    "pending",
    "cloning",
    "cloned",
    "installing_requirements",
    "running_install_script",
    "verifying",
    "installed",
    "skipped",
    "failed",
    "cancelled",
    "planned",
)
#: ``planned``: a plan task looked at the node and changed nothing (its document's
#: ``plan`` says what an install would do to it).
NODE_FINAL_STATUSES = frozenset({"installed", "skipped", "failed", "cancelled", "planned"})
REQUIREMENTS_STATUSES = ("none", "pending", "running", "done", "failed")
IMPORT_STATUSES = ("ok", "failed", "timeout", "skipped")
#: Which check judged a node (``import.check``): one start of the home's ComfyUI
#: (``comfyui``), a start of it with only that node (``comfyui_alone``, after a
#: start that failed as a whole), or a bare import of the node (``import``, for a
#: home that is not a ComfyUI).
IMPORT_CHECKS = ("comfyui", "comfyui_alone", "import")
#: The same steps for a node's install.py.
INSTALL_SCRIPT_STATUSES = REQUIREMENTS_STATUSES
#: How the task changed ComfyUI's environment: ``packages[kind][name] == [old, new]``.
PACKAGE_CHANGE_KINDS = ("added", "upgraded", "downgraded", "removed")

#: Machine-readable causes of a whole-task failure, in ``error_code``.
ERROR_CODES = (
    "conflict",
    "invalid_spec",
    "agent_crashed",
    "lost",
    "cancelled",
    "start_failed",
    # A plan's policy (forbid_downgrade, forbid) would be broken: nothing was touched.
    "policy_violation",
    # Applying a plan: the instance is not what the plan saw any more.
    "plan_drift",
    # A running ComfyUI of this home uses another interpreter than the target.
    "wrong_interpreter",
    # A plan could not be made (no interpreter, the dry-run resolve failed to run).
    "plan_failed",
    # ComfyUI was restarted but did not answer in time (or the restart failed).
    "not_ready",
)
#: How the agent restarted ComfyUI after the install (``ready.restarted_by``).
RESTARTED_BY = ("supervisor", "systemd", "process", "command")
#: Class names the ready check carries in ``ready.missing`` (the rest is counted).
MAX_READY_CLASSES = 20000

#: Why one node failed, in the node's ``error_code``. Only the transient ones are
#: worth an automatic retry; the others fail the same way every time.
NODE_ERROR_CODES = (
    "network",
    "timeout",
    "repo_not_found",
    "unknown_ref",
    "auth_failed",
    "node_dir_conflict",
    "requirements_failed",
    "resolver_conflict",
    "install_script_failed",
    "import_failed",
    "cancelled",
    "failed",
)
TRANSIENT_NODE_ERROR_CODES = frozenset({"network", "timeout"})


def utc_now() -> str:
    """An ISO 8601 UTC timestamp with milliseconds, e.g. ``2026-11-29T03:40:00.123Z``."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def parse_time(value: str) -> datetime.datetime:
    """The inverse of :func:`utc_now`."""
    return datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc
    )


def _check_time(value: object, where: str, optional: bool) -> Optional[str]:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ProtocolError(where, "must be an ISO 8601 timestamp string")
    try:
        parse_time(value)
    except ValueError:
        raise ProtocolError(where, "must look like 2026-01-31T12:00:00.000Z") from None
    return value


def _check(value: object, where: str, kinds: "Tuple[type, ...]", optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if isinstance(value, bool) and bool not in kinds:
        raise ProtocolError(where, "must not be a boolean")
    if not isinstance(value, kinds):
        raise ProtocolError(where, "must be {}".format(" or ".join(k.__name__ for k in kinds)))
    return value


def _check_choice(value: object, where: str, choices: "Tuple[str, ...]") -> str:
    if value not in choices:
        raise ProtocolError(where, "must be one of: {}".format(", ".join(choices)))
    return str(value)


def _check_warnings(value: object, where: str) -> List[str]:
    items = _check(value, where, (list,))
    for i, item in enumerate(items):
        _check(item, f"{where}.{i}", (str,))
    return list(items)


def _check_packages(value: object, where: str) -> Dict[str, Dict[str, List[Optional[str]]]]:
    """``{"downgraded": {"numpy": ["2.4.6", "1.26.4"]}, ...}``; old or new may be null."""
    kinds = _check(value, where, (dict,))
    out: Dict[str, Dict[str, List[Optional[str]]]] = {}
    for kind, changes in kinds.items():
        _check_choice(kind, f"{where}.{kind}", PACKAGE_CHANGE_KINDS)
        _check(changes, f"{where}.{kind}", (dict,))
        out[kind] = {}
        for name, pair in changes.items():
            at = f"{where}.{kind}.{name}"
            if not isinstance(pair, list) or len(pair) != 2:
                raise ProtocolError(at, "must be [old version, new version]")
            for version in pair:
                _check(version, at, (str,), optional=True)
            out[kind][str(name)] = list(pair)
    return out


def _check_count(value: object, where: str) -> int:
    number = _check(value, where, (int,))
    if number < 0:
        raise ProtocolError(where, "must not be negative")
    return int(number)


@dataclass
class ImportResult:
    """How importing a node the way ComfyUI does went (``import`` in a node's document).

    ``error`` is the exception's last line; ``node_classes`` the number of node
    classes it registers (None when not known, e.g. read from ComfyUI's own log);
    ``check`` which check judged it (``IMPORT_CHECKS``); ``traceback`` the lines
    ComfyUI printed for a node that failed.
    """

    status: str
    seconds: Optional[float] = None
    error: Optional[str] = None
    node_classes: Optional[int] = None
    check: Optional[str] = None
    traceback: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object, where: str = "import") -> "ImportResult":
        if not isinstance(data, Mapping):
            raise ProtocolError(where, "must be an object")
        _reject_unknown(data, cls, where)
        if "status" not in data:
            raise ProtocolError(where + ".status", "is required")
        seconds = _check(data.get("seconds"), where + ".seconds", (int, float), optional=True)
        if seconds is not None and seconds < 0:
            raise ProtocolError(where + ".seconds", "must not be negative")
        classes = data.get("node_classes")
        if classes is not None:
            classes = _check_count(classes, where + ".node_classes")
        return cls(
            status=_check_choice(data["status"], where + ".status", IMPORT_STATUSES),
            seconds=None if seconds is None else float(seconds),
            error=_check(data.get("error"), where + ".error", (str,), optional=True),
            node_classes=None
            if classes is None
            else _check_count(classes, where + ".node_classes"),
            check=None
            if data.get("check") is None
            else _check_choice(data["check"], where + ".check", IMPORT_CHECKS),
            traceback=_check(data.get("traceback"), where + ".traceback", (str,), optional=True),
        )


def _masked(value: Any) -> Any:
    """``value`` with credentials in every URL of every string in it masked."""
    if isinstance(value, str):
        return mask_credentials(value)
    if isinstance(value, list):
        return [_masked(item) for item in value]
    if isinstance(value, dict):
        return {key: _masked(item) for key, item in value.items()}
    return value


@dataclass
class ReadyResult:
    """What the running ComfyUI said after the install (``ready`` in the document).

    ``restarted_by`` is how it was restarted (None: it was not, only asked);
    ``classes`` how many node classes its ``/object_info`` lists (None: no server
    answered); ``missing`` the classes the workflow needs that it lacks; ``seconds``
    the restart and wait; ``note`` an honest answer that is not a failure, such as
    "no running ComfyUI found for this home"; ``service`` the supervisord program
    or systemd unit.
    """

    restarted_by: Optional[str] = None
    classes: Optional[int] = None
    missing: List[str] = field(default_factory=list)
    seconds: Optional[float] = None
    port: Optional[int] = None
    pid: Optional[int] = None
    service: Optional[str] = None
    note: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object, where: str = "ready") -> "ReadyResult":
        if not isinstance(data, Mapping):
            raise ProtocolError(where, "must be an object")
        _reject_unknown(data, cls, where)
        restarted_by = data.get("restarted_by")
        if restarted_by is not None:
            _check_choice(restarted_by, where + ".restarted_by", RESTARTED_BY)
        classes = data.get("classes")
        missing = _check_warnings(data.get("missing", []), where + ".missing")
        if len(missing) > MAX_READY_CLASSES:
            raise ProtocolError(where + ".missing", f"must have at most {MAX_READY_CLASSES}")
        seconds = _check(data.get("seconds"), where + ".seconds", (int, float), optional=True)
        if seconds is not None and seconds < 0:
            raise ProtocolError(where + ".seconds", "must not be negative")
        port = data.get("port")
        pid = data.get("pid")
        return cls(
            restarted_by=restarted_by,
            classes=None if classes is None else _check_count(classes, where + ".classes"),
            missing=missing,
            seconds=None if seconds is None else float(seconds),
            port=None if port is None else _check_count(port, where + ".port"),
            pid=None if pid is None else _check_count(pid, where + ".pid"),
            service=_check(data.get("service"), where + ".service", (str,), optional=True),
            note=_check(data.get("note"), where + ".note", (str,), optional=True),
        )


#: ``NodeProgress.import_result`` travels as ``import`` (a keyword in Python).
_NODE_ALIASES = {"import_result": "import"}


@dataclass
class NodeProgress:
    name: str
    url: str
    ref: Optional[str] = None
    status: str = "pending"
    commit: Optional[str] = None
    requirements_status: str = "none"
    error: Optional[str] = None
    started_at: Optional[str] = None
    finished_at: Optional[str] = None
    import_result: Optional[ImportResult] = None
    install_script_status: str = "none"
    #: What the node's steps reported without failing (install.py errors that
    #: exited 0, requirements installed alone), quoting the lines.
    warnings: List[str] = field(default_factory=list)
    #: One of ``NODE_ERROR_CODES`` when the node failed (absent from older agents).
    error_code: Optional[str] = None

    def __post_init__(self) -> None:
        # The spec keeps the URL git clones; every document shows it masked.
        self.url = mask_credentials(self.url)

    @property
    def is_final(self) -> bool:
        return self.status in NODE_FINAL_STATUSES

    def to_dict(self) -> Dict[str, Any]:
        doc = {_NODE_ALIASES.get(k, k): v for k, v in asdict(self).items()}
        return {key: _masked(value) for key, value in doc.items()}

    @classmethod
    def from_dict(cls, data: object, where: str = "node") -> "NodeProgress":
        if not isinstance(data, Mapping):
            raise ProtocolError(where, "must be an object")
        _reject_unknown(data, cls, where, _NODE_ALIASES)
        imported = data.get("import")
        for required in ("name", "url", "status"):
            if required not in data:
                raise ProtocolError(f"{where}.{required}", "is required")
        return cls(
            name=_check(data["name"], where + ".name", (str,)),
            url=_check(data["url"], where + ".url", (str,)),
            ref=_check(data.get("ref"), where + ".ref", (str,), optional=True),
            status=_check_choice(data["status"], where + ".status", NODE_STATUSES),
            commit=_check(data.get("commit"), where + ".commit", (str,), optional=True),
            requirements_status=_check_choice(
                data.get("requirements_status", "none"),
                where + ".requirements_status",
                REQUIREMENTS_STATUSES,
            ),
            error=_check(data.get("error"), where + ".error", (str,), optional=True),
            started_at=_check_time(data.get("started_at"), where + ".started_at", True),
            finished_at=_check_time(data.get("finished_at"), where + ".finished_at", True),
            import_result=None
            if imported is None
            else ImportResult.from_dict(imported, where + ".import"),
            install_script_status=_check_choice(
                data.get("install_script_status", "none"),
                where + ".install_script_status",
                INSTALL_SCRIPT_STATUSES,
            ),
            warnings=_check_warnings(data.get("warnings", []), where + ".warnings"),
            error_code=(
                None
                if data.get("error_code") is None
                else _check_choice(data["error_code"], where + ".error_code", NODE_ERROR_CODES)
            ),
        )


def _reject_unknown(
    data: "Mapping[str, Any]",
    cls: type,
    where: str,
    aliases: "Optional[Mapping[str, str]]" = None,
) -> None:
    aliases = aliases or {}
    unknown = set(data) - {aliases.get(f.name, f.name) for f in fields(cls)}
    if unknown:
        raise ProtocolError(
            where, "unknown field(s): {}".format(", ".join(sorted(map(str, unknown))))
        )


@dataclass
class Progress:
    task_id: str
    ui_home: str
    state: str = "starting"
    schema: int = SCHEMA_VERSION
    pid: Optional[int] = None
    boot_id: Optional[str] = None
    started_at: str = field(default_factory=utc_now)
    updated_at: str = field(default_factory=utc_now)
    finished_at: Optional[str] = None
    total_nodes: int = 0
    processed: int = 0
    successful: int = 0
    failed: int = 0
    skipped: int = 0
    current_node: Optional[str] = None
    current_status: Optional[str] = None
    has_requirements: bool = False
    requirements_status: str = "none"
    nodes: List[NodeProgress] = field(default_factory=list)
    exit_code: Optional[int] = None
    error: Optional[str] = None
    error_code: Optional[str] = None
    log_file: Optional[str] = None
    #: "uv" or "pip": what installed the requirements (None until chosen).
    installer: Optional[str] = None
    #: Things the user should know that did not fail the install: downgrades and
    #: what forced them, installer fallbacks, a lock's torch that this instance's
    #: own torch overrode.
    warnings: List[str] = field(default_factory=list)
    packages: Dict[str, Dict[str, List[Optional[str]]]] = field(default_factory=dict)
    #: The restart and the running server's answer (None: neither was asked for).
    ready: Optional[ReadyResult] = None
    #: A plan task's answer (agent/planner.py): what an install would change.
    plan: Optional[Dict[str, Any]] = None

    # -- state -----------------------------------------------------------------

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def succeeded(self) -> bool:
        """Completed, every node installed, and the running ComfyUI lacks no class
        the workflow needs: a missing class fails the task as a failed node does."""
        missing = self.ready is not None and bool(self.ready.missing)
        return self.state == "completed" and self.failed == 0 and not missing

    def can_move_to(self, state: str) -> bool:
        """Whether ``state`` is a legal next state: forward only, nothing after final."""
        if state not in STATES or self.is_final:
            return False
        if state in FINAL_STATES:
            return True
        return _STATE_RANK[state] >= _STATE_RANK[self.state]

    def move_to(self, state: str) -> None:
        if not self.can_move_to(state):
            raise ValueError(f"cannot move from {self.state} to {state}")
        self.state = state

    def recount(self) -> None:
        """Derive the counters from the per-node statuses."""
        self.total_nodes = len(self.nodes)
        self.successful = sum(1 for n in self.nodes if n.status == "installed")
        self.skipped = sum(1 for n in self.nodes if n.status == "skipped")
        self.failed = sum(1 for n in self.nodes if n.status in ("failed", "cancelled"))
        self.processed = sum(1 for n in self.nodes if n.is_final)
        self.has_requirements = any(n.requirements_status != "none" for n in self.nodes)

    # -- (de)serialisation -----------------------------------------------------

    def to_dict(self) -> Dict[str, Any]:
        doc = asdict(self)
        doc["nodes"] = [node.to_dict() for node in self.nodes]
        if self.ready is None:
            del doc["ready"]  # the document older readers know, when nothing was asked
        # Error texts and warnings quote git's and pip's words, URLs included.
        return {key: _masked(value) for key, value in doc.items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Progress":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ProtocolError("", f"progress document is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: object) -> "Progress":
        if not isinstance(data, Mapping):
            raise ProtocolError("", "progress document must be an object")
        _reject_unknown(data, cls, "")
        schema = data.get("schema")
        if schema != SCHEMA_VERSION:
            raise ProtocolError(
                "schema", f"unsupported schema {schema!r} (this reader knows {SCHEMA_VERSION})"
            )
        for required in ("task_id", "ui_home", "state", "started_at", "updated_at"):
            if required not in data:
                raise ProtocolError(required, "is required")
        nodes_value = _check(data.get("nodes", []), "nodes", (list,))
        error_code = data.get("error_code")
        if error_code is not None:
            _check_choice(error_code, "error_code", ERROR_CODES)
        return cls(
            schema=SCHEMA_VERSION,
            task_id=checks.task_id(data["task_id"]),
            ui_home=_check(data["ui_home"], "ui_home", (str,)),
            state=_check_choice(data["state"], "state", STATES),
            pid=_check(data.get("pid"), "pid", (int,), optional=True),
            boot_id=_check(data.get("boot_id"), "boot_id", (str,), optional=True),
            started_at=str(_check_time(data["started_at"], "started_at", False)),
            updated_at=str(_check_time(data["updated_at"], "updated_at", False)),
            finished_at=_check_time(data.get("finished_at"), "finished_at", True),
            total_nodes=_check_count(data.get("total_nodes", 0), "total_nodes"),
            processed=_check_count(data.get("processed", 0), "processed"),
            successful=_check_count(data.get("successful", 0), "successful"),
            failed=_check_count(data.get("failed", 0), "failed"),
            skipped=_check_count(data.get("skipped", 0), "skipped"),
            current_node=_check(data.get("current_node"), "current_node", (str,), optional=True),
            current_status=_check(
                data.get("current_status"), "current_status", (str,), optional=True
            ),
            has_requirements=_check(
                data.get("has_requirements", False), "has_requirements", (bool,)
            ),
            requirements_status=_check_choice(
                data.get("requirements_status", "none"),
                "requirements_status",
                REQUIREMENTS_STATUSES,
            ),
            nodes=[
                NodeProgress.from_dict(item, f"nodes.{i}") for i, item in enumerate(nodes_value)
            ],
            exit_code=_check(data.get("exit_code"), "exit_code", (int,), optional=True),
            error=_check(data.get("error"), "error", (str,), optional=True),
            error_code=error_code,
            log_file=_check(data.get("log_file"), "log_file", (str,), optional=True),
            installer=_check(data.get("installer"), "installer", (str,), optional=True),
            warnings=_check_warnings(data.get("warnings", []), "warnings"),
            packages=_check_packages(data.get("packages", {}), "packages"),
            ready=None if data.get("ready") is None else ReadyResult.from_dict(data["ready"]),
            plan=_check(data.get("plan"), "plan", (dict,), optional=True),
        )
