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
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from controller.core.errors import InvalidRequest

MAX_NODES = 500

_STRICT = ConfigDict(extra="forbid", strict=True)


class InstallRequest(BaseModel):
    """``POST /ssh/install-custom-nodes``."""

    model_config = _STRICT

    ssh_connection: str = Field(max_length=512)
    ui_home: str = Field(max_length=4096)
    #: ``"URL"``, ``"URL@REF"``, ``{"url", "ref", "name"}`` or a Comfy Registry id
    #: (``"id"``, ``"id@version"``); ``protocol.parse_node`` checks each URL and names
    #: the field precisely. With ``workflow`` and ``snapshot`` optional: none of the
    #: three installs the controller's ``default_nodes``; left out when ``lock``
    #: names the nodes.
    nodes: list[Any] | None = Field(default=None, max_length=MAX_NODES)
    #: A ComfyUI workflow, UI or API format (``controller.core.sources.workflow``).
    workflow: dict[str, Any] | None = None
    #: A ComfyUI-Manager snapshot, as an object or its JSON/YAML text.
    snapshot: dict[str, Any] | str | None = Field(default=None)
    #: Refuse (400) when a workflow class resolves to no custom node.
    strict: bool = False
    python: str | None = Field(default=None, max_length=4096)
    pip_args: list[str] | None = Field(default=None, max_length=64)
    jobs: int = Field(default=4, ge=1, le=32)
    clone_jobs: int = Field(default=16, ge=1, le=64)
    update: bool = False
    #: Import each node as ComfyUI does (true), not at all (false), or run
    #: ComfyUI itself once and read its import report ("comfyui"). ``Any`` here so
    #: an error names ``verify`` itself (a union would name its members);
    #: ``InstallSpec`` checks the value.
    verify: Any = True
    verify_timeout: float = Field(default=120.0, ge=1, le=3600)
    #: A ``lock.json`` to reproduce; ``protocol.Lock`` checks it field by field.
    lock: dict[str, Any] | None = None
    #: What installs requirements: uv when found or installable (auto), uv, pip.
    installer: Literal["auto", "uv", "pip"] = "auto"
    #: Run git, pip/uv and install.py at a lower CPU and I/O priority on the instance.
    low_priority: bool = True
    #: When the ComfyUI home is busy or a limit is reached: wait in the queue (202,
    #: state ``queued``) instead of answering 409 or 429.
    queue: bool = False
    #: Retry transient failures (network, timeouts, a killed agent) up to this many times.
    auto_retry: int = Field(default=0, ge=0, le=10)
    #: After the install: "never" (the default, as before), "auto" (supervisord,
    #: systemd, the plain process, in that order) or {"command": [argv…]} (auto,
    #: else this command). ``Any`` so an error names ``restart``;
    #: ``protocol.spec.restart_mode`` checks the value.
    restart: Any = "never"
    #: Without a restart, still ask the running ComfyUI for the workflow's classes.
    ready_check: bool = False
    #: Seconds a restarted ComfyUI has to answer on its port.
    ready_timeout: float = Field(default=300.0, ge=1, le=3600)


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
    timeout: float = Field(default=30.0, ge=1, le=3600)


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
    "conflict", "invalid_spec", "agent_crashed", "lost", "cancelled", "start_failed", "not_ready"
]


class ImportResultModel(BaseModel):
    model_config = _STRICT

    status: Literal["ok", "failed", "timeout", "skipped"]
    seconds: Annotated[float, Field(ge=0)] | None = None
    error: str | None = None
    node_classes: Count | None = None


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

    def to_document(self) -> dict[str, Any]:
        doc = self.model_dump(by_alias=True)
        if doc.get("ready") is None:
            doc.pop("ready", None)  # as protocol.Progress writes it
        return doc
