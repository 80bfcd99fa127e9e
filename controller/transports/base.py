"""What the task service needs from a machine, whichever way it is reached.

Blocking methods: the service calls them in the app's executor. Paths are
relative to the agent's state dir on that machine.
"""

from __future__ import annotations

import abc
import json
import shlex
from dataclasses import dataclass
from typing import Any

from controller.common.errors import AgentMissingPython, RemoteCommandError
from controller.common.target import Target
from controller.ssh.pool import CommandResult

#: Exit status of a POSIX shell that could not find the command.
COMMAND_NOT_FOUND = 127


@dataclass(frozen=True)
class FileStat:
    mtime: float
    size: int


@dataclass
class AgentReply:
    """An agent subcommand's exit status and its one JSON object on stdout."""

    exit_status: int
    document: dict[str, Any]
    result: CommandResult


class Transport(abc.ABC):
    def __init__(self, target: Target) -> None:
        self.target = target

    @abc.abstractmethod
    def state_dir(self) -> str:
        """The agent's ``--state-dir`` on the machine, absolute."""

    @abc.abstractmethod
    def ensure_agent(self) -> str:
        """The agent bundle's path on the machine, uploading it if missing."""

    @abc.abstractmethod
    def execute(self, argv: list[str], stdin: bytes | None, timeout: float) -> CommandResult:
        """Run ``argv`` on the machine (no shell interpretation of its words)."""

    @abc.abstractmethod
    def stat(self, relative: str) -> FileStat | None:
        """``None`` when the file does not exist."""

    @abc.abstractmethod
    def read(self, relative: str, offset: int = 0, limit: int | None = None) -> bytes:
        """Bytes from ``offset``; raises FileNotFoundError when the file does not exist."""

    def read_absolute(self, path: str, limit: int) -> bytes | None:
        """Up to ``limit`` bytes of any file on the machine (``~/`` is the login's home);
        None when it does not exist. For files outside the state dir, such as a
        ComfyUI-Manager checkout's node database."""
        raise NotImplementedError

    @abc.abstractmethod
    def python(self) -> str:
        """The interpreter that runs the agent."""

    @abc.abstractmethod
    def forget_agent(self) -> None:
        """Forget that the bundle is on the machine, so the next use checks again."""

    def run_agent(
        self, args: list[str], *, stdin: bytes | None = None, timeout: float
    ) -> AgentReply:
        """``AGENT --state-dir DIR ARGS…``, its JSON reply parsed."""
        for attempt in (1, 2):
            argv = [self.python(), self.ensure_agent(), "--state-dir", self.state_dir(), *args]
            result = self.execute(argv, stdin, timeout)
            stdout = result.stdout.decode("utf-8", errors="replace")
            stderr = result.stderr.decode("utf-8", errors="replace")
            if attempt == 1 and result.exit_status != 0 and "can't open file" in stderr:
                # The bundle we uploaded earlier was removed from the machine.
                self.forget_agent()
                continue
            break
        if result.exit_status == COMMAND_NOT_FOUND:
            raise AgentMissingPython(
                f"'{self.python()}' was not found on {self.target}: the agent needs Python "
                "3.8 or newer there (set remote_python if it has another name)",
                command=result.command,
                exit_status=result.exit_status,
                stdout=stdout,
                stderr=stderr,
            )
        try:
            document = json.loads(stdout)
        except ValueError:
            document = None
        if not isinstance(document, dict):
            tail = (stderr.strip() or stdout.strip())[-500:]
            raise RemoteCommandError(
                f"the agent on {self.target} answered '{args[0]}' with exit status "
                f"{result.exit_status} and no JSON reply: {tail or '(no output)'}",
                command=result.command,
                exit_status=result.exit_status,
                stdout=stdout,
                stderr=stderr,
            )
        return AgentReply(result.exit_status, document, result)


def shell_command(argv: list[str]) -> str:
    """One command line for a remote shell; every word quoted."""
    return shlex.join(argv)
