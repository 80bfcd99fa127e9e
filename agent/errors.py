"""The agent's errors. Each carries the exit code and JSON body its CLI answers with."""

from typing import Any, Dict, Optional

from protocol import ExitCode


class AgentError(Exception):
    """A failure the CLI reports as ``{"error": code, "message": ...}``."""

    exit_code = ExitCode.INTERNAL
    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> Dict[str, Any]:
        return {"error": self.code, "message": self.message}


class InvalidInput(AgentError):
    """Bad arguments or an invalid spec; nothing was changed."""

    exit_code = ExitCode.INVALID
    code = "invalid_spec"

    def __init__(self, message: str, field: Optional[str] = None, code: str = "invalid_spec"):
        super().__init__(message)
        self.field = field
        self.code = code

    def body(self) -> Dict[str, Any]:
        return {"error": self.code, "field": self.field, "message": self.message}


class Conflict(AgentError):
    """Another install holds the lock for this ComfyUI home."""

    exit_code = ExitCode.CONFLICT
    code = "conflict"

    def __init__(self, holder: Optional[str], ui_home: str) -> None:
        who = f"task {holder}" if holder else "another install"
        super().__init__(f"{who} is already installing into {ui_home}")
        self.holder = holder

    def body(self) -> Dict[str, Any]:
        return {"error": self.code, "task_id": self.holder, "message": self.message}


class UnknownTask(AgentError):
    exit_code = ExitCode.UNKNOWN_TASK
    code = "unknown_task"


class UnreadableProgress(AgentError):
    """The task's progress document exists but does not parse."""

    exit_code = ExitCode.UNREADABLE_PROGRESS
    code = "unreadable_progress"


class Cancelled(Exception):
    """Raised inside the worker when the install is being cancelled."""


class StepFailed(Exception):
    """One step of one node failed; the message is what the node's ``error`` says."""


class Refused(Exception):
    """The task refuses to go on before touching anything (a policy, drift, the
    wrong interpreter); ``code`` is the progress document's ``error_code``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
