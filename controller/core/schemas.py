"""Pydantic models of request bodies and of the progress document.

Request models check shapes and types (naming the field on error); the deep
checks of every value that reaches an instance stay in ``protocol`` (one
implementation shared with the agent). The progress model is an independent
description of ``protocol.Progress``; a test proves the two accept and reject
the same documents.
"""

from __future__ import annotations

import datetime
import re
import shlex
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from controller.common.errors import InvalidRequest
from controller.core.install_fields import Const, Hand, Valued, declared_fields, option
from protocol import ProtocolError
from protocol.spec import (
    DEFAULT_CLONE_JOBS,
    DEFAULT_JOBS,
    DEFAULT_READY_TIMEOUT,
    DEFAULT_VERIFY_TIMEOUT,
    MAX_CLONE_JOBS,
    MAX_JOBS,
    MAX_READY_CLASSES,
    MAX_READY_TIMEOUT,
    MAX_VERIFY_TIMEOUT,
    RESTART_MODES,
    restart_mode,
)

MAX_NODES = 500

_STRICT = ConfigDict(extra="forbid", strict=True)


def restart_command(text: str) -> dict[str, list[str]]:
    """``--restart-command CMD``'s value: CMD split as a shell would, run without one."""
    try:
        argv = shlex.split(text)
    except ValueError as exc:
        raise ValueError(f"cannot split it: {exc}") from None
    if not argv:
        raise ValueError("is empty: name the command that starts ComfyUI")
    try:
        restart_mode({"command": argv})  # the checks the agent makes, on the command line
    except ProtocolError as exc:
        raise ValueError(exc.message) from None
    return {"command": argv}


class InstallRequest(BaseModel):
    """``POST /ssh/install-custom-nodes``: the one declaration of an install's fields.

    Each :func:`option` says, beside its type and default, its help, its flag on
    ``nodeferry install``, whether it reaches the agent's spec and whether a retry
    carries it (``controller/core/install_fields.py``); the command line, the
    clients, the spec, the fleet path and retries are derived from this table.
    A new field is one entry here (and, if ``spec``, its field in InstallSpec).
    """

    model_config = _STRICT

    # -- where --------------------------------------------------------------------
    ssh_connection: str = option(
        help="the instance: 'root@host -p 22', 'root@host:22', the ssh command VastAI "
        "shows, or 'local' for the controller's own machine",
        cli=Hand(("--ssh",)),
        spec=False,  # the controller connects; the agent never sees it
        retry=True,  # the task's own (parsed) target
        max_length=512,
    )
    ui_home: str = option(
        help="the ComfyUI folder on the instance",
        cli="--ui-home",
        spec=True,
        retry=True,
        metavar="DIR",
        max_length=4096,
    )
    # -- what ---------------------------------------------------------------------
    #: ``"URL"``, ``"URL@REF"``, ``{"url", "ref", "name"}`` or a Comfy Registry id
    #: (``"id"``, ``"id@version"``); ``protocol.parse_node`` checks each URL and names
    #: the field precisely. With ``workflow`` and ``snapshot`` optional: none of the
    #: three installs the controller's ``default_nodes``; left out when ``lock``
    #: names the nodes.
    nodes: list[Any] | None = option(
        None,
        help="the nodes: URL[@REF][#NAME], {url, ref, name} or Comfy Registry ids",
        cli=Hand(("nodes", "--nodes-file")),
        spec=True,
        retry=False,  # a retry names the nodes that did not install
        max_length=MAX_NODES,
    )
    workflow: dict[str, Any] | None = option(
        None,
        help="install what a ComfyUI workflow (UI or API format) needs",
        cli=Hand(("--workflow",)),
        spec=False,  # resolved into nodes before the start
        retry=False,
    )
    snapshot: dict[str, Any] | str | None = option(
        None,
        help="a ComfyUI-Manager snapshot, as an object or its JSON/YAML text",
        cli=Hand(("--snapshot",)),
        spec=False,  # resolved into nodes before the start
        retry=False,
    )
    strict: bool = option(
        False,
        help="refuse (400) when a workflow class resolves to no custom node",
        cli="--strict",
        spec=False,  # only the resolution reads it
        retry=False,
    )
    #: A ``lock.json`` to reproduce; ``protocol.Lock`` checks it field by field.
    lock: dict[str, Any] | None = option(
        None,
        help="a lock (lock.json) to reproduce instead of nodes: its nodes at its commits, "
        "its package versions",
        cli=Hand(("--lock",)),
        spec=True,
        retry=True,  # narrowed to the nodes that did not install
    )
    #: A plan to apply (``POST /api/plan``'s task id, or its final document as saved
    #: by ``nodeferry plan --json``): its nodes at its commits, its package versions,
    #: refused when the instance drifted since; instead of nodes.
    plan: str | dict[str, Any] | None = option(
        None,
        help="apply a plan (its task id, or its saved JSON): exactly its commits and "
        "package versions, refused if the instance changed since; instead of NODEs",
        cli=Hand(("--plan",)),
        spec=False,  # the controller turns it into the spec's nodes and ``expect``
        retry=False,  # a retry re-runs the task's own spec (its nodes and ``expect``)
    )
    # -- policies -----------------------------------------------------------------
    forbid_downgrade: list[str] | None = option(
        None,
        help="refuse, before anything is touched, an install that would downgrade this "
        "package (e.g. numpy; once per package)",
        cli="--forbid-downgrade",
        spec=True,
        retry=True,
        metavar="PACKAGE",
        shown_default="none",
        max_length=200,
    )
    forbid: list[str] | None = option(
        None,
        help="refuse, before anything is touched, an install that would install or change "
        "this package (e.g. opencv-python; once per package)",
        cli="--forbid",
        spec=True,
        retry=True,
        metavar="PACKAGE",
        shown_default="none",
        max_length=200,
    )
    # -- how ----------------------------------------------------------------------
    python: str | None = option(
        None,
        help="ComfyUI's interpreter",
        cli="--python",
        spec=True,
        retry=True,
        shown_default="discovered",
        max_length=4096,
    )
    pip_args: list[str] | None = option(
        None,
        help="arguments for pip, e.g. --no-index (on the command line: --pip-arg=--no-index, "
        "once per argument)",
        cli="--pip-arg",
        spec=True,
        retry=True,
        metavar="ARG",
        shown_default="the controller's default_pip_args",
        max_length=64,
    )
    jobs: int = option(
        DEFAULT_JOBS,
        help="CPU-bound steps at a time (the import checks; clones have their own limit)",
        cli="--jobs",
        spec=True,
        retry=True,
        metavar="N",
        ge=1,
        le=MAX_JOBS,
    )
    clone_jobs: int = option(
        DEFAULT_CLONE_JOBS,
        help="git clones at a time",
        cli="--clone-jobs",
        spec=True,
        retry=True,
        metavar="N",
        ge=1,
        le=MAX_CLONE_JOBS,
    )
    update: bool = option(
        False,
        help="bring nodes already present up to date (without it they are skipped, "
        "unless another @REF than the one checked out is asked for)",
        cli="--update",
        spec=True,
        retry=True,
    )
    #: ``Any`` so an error names ``verify`` itself (a union would name its members);
    #: ``InstallSpec`` checks the value.
    verify: Any = option(
        True,
        help="check each node loads: by ComfyUI's own start where the home is a ComfyUI "
        "and by a bare import where it is not (true), always by ComfyUI's start "
        '("comfyui"), always by the bare import ("import"), or not at all (false)',
        cli=(
            Const(
                "--no-verify",
                False,
                "do not check that each node loads (checking runs the node's code)",
            ),
            Const(
                "--verify-comfyui",
                "comfyui",
                "judge the nodes by ComfyUI's own start (main.py --quick-test-for-ci --cpu), "
                "even where the home does not look like a ComfyUI",
            ),
            Const(
                "--verify-import",
                "import",
                "judge each node by importing it alone in ComfyUI's interpreter, outside "
                "ComfyUI's start (the default only where the home is not a ComfyUI)",
            ),
        ),
        spec=True,
        retry=True,
        shown_default="ComfyUI's start where the home is a ComfyUI, else a bare import",
    )
    verify_timeout: float = option(
        DEFAULT_VERIFY_TIMEOUT,
        help="seconds for each node's check: a bare import, or what ComfyUI's start gets "
        "for each node it loads",
        cli="--verify-timeout",
        spec=True,
        retry=True,
        metavar="SECONDS",
        ge=1,
        le=MAX_VERIFY_TIMEOUT,
    )
    installer: Literal["auto", "uv", "pip"] = option(
        "auto",
        help="what installs requirements: uv when found or installable (auto), uv, or pip",
        cli="--installer",
        spec=True,
        retry=True,
    )
    low_priority: bool = option(
        True,
        help="run git, pip/uv and install.py at a lower CPU and I/O priority on the instance",
        cli="--no-low-priority",
        spec=True,
        retry=True,
        flag_help="run git, pip and install.py at normal priority on the instance",
    )
    # -- after the install ----------------------------------------------------------
    #: ``Any`` so an error names ``restart`` itself; ``protocol.spec.restart_mode``
    #: checks the value.
    restart: Any = option(
        "never",
        help='after the install, restart ComfyUI the way the instance runs it: "never", '
        '"auto" (a supervisord program, a systemd unit or the plain process, in that '
        'order), or {"command": [argv...]} (auto, else that command), then ask it for '
        "the workflow's classes",
        cli=(
            Valued(
                "--restart",
                "after the install, restart ComfyUI the way the instance runs it (supervisord, "
                "systemd or the plain process) and ask it whether the workflow's classes are "
                "there; --restart alone is --restart=auto",
                metavar="[=auto|never]",
                choices=RESTART_MODES,
                bare="auto",
            ),
            Valued(
                "--restart-command",
                "like --restart, and when no running ComfyUI is found run CMD (split like a "
                "shell would, run without one) in the ComfyUI folder",
                metavar="CMD",
                parse=restart_command,
            ),
        ),
        spec=True,
        retry=True,
    )
    ready_check: bool = option(
        False,
        help="without a restart, ask the running ComfyUI for the workflow's classes afterwards",
        cli="--ready-check",
        spec=True,
        retry=True,
    )
    ready_timeout: float = option(
        DEFAULT_READY_TIMEOUT,
        help="seconds a restarted ComfyUI has to answer on its port",
        cli="--ready-timeout",
        spec=True,
        retry=True,
        metavar="SECONDS",
        ge=1,
        le=MAX_READY_TIMEOUT,
    )
    #: No flag of its own: ``--workflow`` fills it. Given in the API, it stands for the
    #: workflow's (a retry gives the original's, its workflow being gone).
    ready_classes: list[str] | None = option(
        None,
        help="the node classes the running ComfyUI must have; a missing one fails the install",
        cli=None,
        spec=True,
        retry=True,  # the retry has no workflow left to read them from
        shown_default="the workflow's",
        max_length=MAX_READY_CLASSES,
    )
    # -- admission ----------------------------------------------------------------
    queue: bool = option(
        False,
        help="when the ComfyUI home is busy or a limit is reached, wait in the queue (202, "
        "state queued) instead of answering 409 or 429",
        cli="--queue",
        spec=False,
        retry=False,  # a retry sets its own (an automatic one always queues)
    )
    auto_retry: int = option(
        0,
        help="retry transient failures (network, timeouts, a killed agent) up to this many times",
        cli="--auto-retry",
        spec=False,
        retry=False,  # a retry sets its own countdown
        metavar="N",
        ge=0,
        le=10,
    )


#: The table, in declaration order.
INSTALL_FIELDS = declared_fields(InstallRequest)
#: The fields the agent's spec (``protocol.InstallSpec``) takes under the same name.
SPEC_FIELDS = tuple(f.name for f in INSTALL_FIELDS if f.spec)
#: The fields a retry takes from the task's spec (``controller/core/retry.py``).
RETRIED_FIELDS = tuple(f.name for f in INSTALL_FIELDS if f.retry and f.spec)


class DiffRequest(BaseModel):
    """``POST /api/diff``: what differs on an instance from a lock."""

    model_config = _STRICT

    ssh_connection: str = Field(max_length=512)
    ui_home: str = Field(max_length=4096)
    python: str | None = Field(default=None, max_length=4096)
    lock: dict[str, Any]


class ReadyRequest(BaseModel):
    """``POST /api/ready``: ask an instance's running ComfyUI whether a workflow can run."""

    model_config = _STRICT

    ssh_connection: str = Field(max_length=512)
    ui_home: str = Field(max_length=4096)
    #: The workflow (UI or API format) whose classes must be there; without it the
    #: answer only counts the classes.
    workflow: dict[str, Any] | None = None
    #: Seconds to wait for it to answer (a ComfyUI that is still starting).
    timeout: float = Field(default=30.0, ge=1, le=MAX_READY_TIMEOUT)


class ResolveRequest(BaseModel):
    """``POST /api/resolve``: the sources of a start request, resolved without installing.

    With ``ssh_connection`` and ``ui_home`` the instance's own ComfyUI-Manager node
    database may be read (nothing is written there)."""

    model_config = _STRICT

    nodes: list[Any] | None = Field(default=None, max_length=MAX_NODES)
    workflow: dict[str, Any] | None = None
    snapshot: dict[str, Any] | str | None = Field(default=None)
    ssh_connection: str | None = Field(default=None, max_length=512)
    ui_home: str | None = Field(default=None, max_length=4096)


class RetryRequest(BaseModel):
    """``POST /api/tasks/{id}/retry`` (the body is optional)."""

    model_config = _STRICT

    queue: bool = False
    auto_retry: int | None = Field(default=None, ge=0, le=10)


class ProgressRequest(BaseModel):
    """``POST /ssh/install-custom-nodes/progress``."""

    model_config = _STRICT

    task_id: str = Field(max_length=64)
    ssh_connection: str | None = Field(default=None, max_length=512)


def parse_body(model: type[BaseModel], data: object) -> Any:
    """``model`` from a decoded JSON body, or :class:`InvalidRequest` naming the field."""
    if not isinstance(data, dict):
        raise InvalidRequest("", "the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        location = ".".join(str(part) for part in error["loc"])
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "is not a known field"
        elif error["type"] == "missing":
            message = "is required"
        raise InvalidRequest(location, message) from None


# -- the progress document -----------------------------------------------------

_UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def _uuid4(value: str) -> str:
    if not _UUID4.match(value):
        raise ValueError("must be a UUID4 in canonical (lowercase) form")
    return value


def _timestamp(value: str) -> str:
    if not value.endswith("Z"):
        raise ValueError("must look like 2026-01-31T12:00:00.000Z")
    try:
        datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        raise ValueError("must look like 2026-01-31T12:00:00.000Z") from None
    return value


Timestamp = Annotated[str, AfterValidator(_timestamp)]
Count = Annotated[int, Field(ge=0)]
State = Literal[
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
]
NodeStatus = Literal[
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
]
RequirementsStatus = Literal["none", "pending", "running", "done", "failed"]
NodeErrorCode = Literal[
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
]
ErrorCode = Literal[
    "conflict",
    "invalid_spec",
    "agent_crashed",
    "lost",
    "cancelled",
    "start_failed",
    "not_ready",
    "policy_violation",
    "plan_drift",
    "wrong_interpreter",
    "plan_failed",
]


class ImportResultModel(BaseModel):
    model_config = _STRICT

    status: Literal["ok", "failed", "timeout", "skipped"]
    seconds: Annotated[float, Field(ge=0)] | None = None
    error: str | None = None
    node_classes: Count | None = None
    check: Literal["comfyui", "comfyui_alone", "import"] | None = None
    traceback: str | None = None


class NodeProgressModel(BaseModel):
    model_config = _STRICT

    name: str
    url: str
    ref: str | None = None
    status: NodeStatus
    commit: str | None = None
    requirements_status: RequirementsStatus = "none"
    error: str | None = None
    started_at: Timestamp | None = None
    finished_at: Timestamp | None = None
    import_: ImportResultModel | None = Field(default=None, alias="import")
    install_script_status: RequirementsStatus = "none"
    warnings: list[str] = Field(default_factory=list)
    error_code: NodeErrorCode | None = None


class ReadyModel(BaseModel):
    """``ready``: how ComfyUI was restarted and what its ``/object_info`` lists."""

    model_config = _STRICT

    restarted_by: Literal["supervisor", "systemd", "process", "command"] | None = None
    classes: Count | None = None
    missing: Annotated[list[str], Field(max_length=20000)] = Field(default_factory=list)
    seconds: Annotated[float, Field(ge=0)] | None = None
    port: Count | None = None
    pid: Count | None = None
    service: str | None = None
    note: str | None = None


PackageChangeKind = Literal["added", "upgraded", "downgraded", "removed"]
VersionPair = Annotated[list[str | None], Field(min_length=2, max_length=2)]


class ProgressModel(BaseModel):
    """``progress.json``, schema 1."""

    model_config = _STRICT

    schema_: Literal[1] = Field(alias="schema")
    task_id: Annotated[str, AfterValidator(_uuid4)]
    ui_home: str
    state: State
    pid: int | None = None
    boot_id: str | None = None
    started_at: Timestamp
    updated_at: Timestamp
    finished_at: Timestamp | None = None
    total_nodes: Count = 0
    processed: Count = 0
    successful: Count = 0
    failed: Count = 0
    skipped: Count = 0
    current_node: str | None = None
    current_status: str | None = None
    has_requirements: bool = False
    requirements_status: RequirementsStatus = "none"
    nodes: list[NodeProgressModel] = Field(default_factory=list)
    exit_code: int | None = None
    error: str | None = None
    error_code: ErrorCode | None = None
    log_file: str | None = None
    installer: str | None = None
    warnings: list[str] = Field(default_factory=list)
    packages: dict[PackageChangeKind, dict[str, VersionPair]] = Field(default_factory=dict)
    ready: ReadyModel | None = None
    #: A plan task's answer (agent/planner.py); its shape is the agent's.
    plan: dict[str, Any] | None = None

    def to_document(self) -> dict[str, Any]:
        doc = self.model_dump(by_alias=True)
        if doc.get("ready") is None:
            doc.pop("ready", None)  # as protocol.Progress writes it
        return doc
