"""The controller's errors. Each knows the HTTP status and the machine-readable
code it is answered with; the error middleware turns them into
``{"success": false, "error": code, "message": text}``."""

from __future__ import annotations

from typing import Any


class ControllerError(Exception):
    status = 500
    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"success": False, "error": self.code, "message": self.message}

    def headers(self) -> dict[str, str]:
        """Extra response headers (``Retry-After`` of a 429)."""
        return {}


class ConfigError(ControllerError):
    code = "config"


class InvalidRequest(ControllerError):
    """A request body or parameter is wrong; ``field`` names the offending one."""

    status = 400
    code = "invalid_request"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field

    def body(self) -> dict[str, Any]:
        return {**super().body(), "field": self.field}


class Unauthorized(ControllerError):
    status = 401
    code = "unauthorized"


class Forbidden(ControllerError):
    """A request from another site (CSRF) or another origin."""

    status = 403
    code = "forbidden"


class MisdirectedRequest(ControllerError):
    """A ``Host`` that does not name this controller (DNS rebinding)."""

    status = 421
    code = "wrong_host"


class UnsupportedMediaType(ControllerError):
    status = 415
    code = "unsupported_media_type"


class UnknownTask(ControllerError):
    status = 404
    code = "unknown_task"

    def __init__(self, task_id: str, detail: str = "") -> None:
        super().__init__(f"no task {task_id} is known to this controller{detail}")
        self.task_id = task_id

    def body(self) -> dict[str, Any]:
        return {**super().body(), "in_progress": False, "task_id": self.task_id}


class UnknownFleet(ControllerError):
    status = 404
    code = "unknown_fleet"

    def __init__(self, fleet_id: str) -> None:
        super().__init__(f"no fleet {fleet_id} is known to this controller")


class NoLock(ControllerError):
    """A task has no lock to serve: it has not finished, or it never ran."""

    status = 404
    code = "no_lock"

    def __init__(self, task_id: str, message: str) -> None:
        super().__init__(message)
        self.task_id = task_id

    def body(self) -> dict[str, Any]:
        return {**super().body(), "task_id": self.task_id}


class Conflict(ControllerError):
    status = 409
    code = "conflict"

    def __init__(self, message: str, task_id: str) -> None:
        super().__init__(message)
        self.task_id = task_id

    def body(self) -> dict[str, Any]:
        return {**super().body(), "task_id": self.task_id}


class TooManyTasks(ControllerError):
    """A limit on running installs is reached and the start did not ask to queue."""

    status = 429
    code = "too_many_tasks"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class StorageUnavailable(ControllerError):
    """The registry's database cannot be reached (a PostgreSQL restart, a network
    cut): nothing was written; the request may be sent again."""

    status = 503
    code = "database_unavailable"
    retry_after = 2

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class ExpiredTask(UnknownTask):
    """Finished longer ago than the retention: only its summary is left."""

    def __init__(self, task_id: str) -> None:
        super().__init__(task_id)
        self.message = (
            f"task {task_id} finished longer ago than the retention; only its summary "
            "is left: see GET /api/history"
        )
        self.args = (self.message,)

    def body(self) -> dict[str, Any]:
        return {**super().body(), "expired": True}


class RemoteError(ControllerError):
    """Something went wrong talking to an instance."""

    status = 502
    code = "remote_error"


class Unreachable(RemoteError):
    """The instance cannot be reached (refused, timed out, connection dropped)."""

    status = 503
    code = "unreachable"


class UnreadableProgress(RemoteError):
    """The instance is up, but the task's progress document does not parse."""

    code = "unreadable_progress"


class NotRegularFile(RemoteError):
    """A file the controller would read on the instance is a FIFO, device, socket
    or directory: never opened (a FIFO would block the read, and the host's SFTP
    session with it)."""

    code = "not_a_regular_file"


class ReadDeadline(RemoteError):
    """A read from the instance did not finish in time (a file served slowly)."""

    code = "read_timeout"


class AuthFailed(RemoteError):
    code = "auth_failed"


class HostKeyError(RemoteError):
    code = "host_key_unknown"


class HostKeyChanged(HostKeyError):
    code = "host_key_changed"


class RemoteCommandError(RemoteError):
    """A command on the instance failed; keeps everything needed to explain why."""

    code = "remote_command_failed"

    def __init__(
        self, message: str, *, command: str, exit_status: int, stdout: str, stderr: str
    ) -> None:
        super().__init__(message)
        self.command = command
        self.exit_status = exit_status
        self.stdout = stdout
        self.stderr = stderr


class AgentMissingPython(RemoteCommandError):
    code = "no_python"
