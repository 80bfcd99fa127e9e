"""The ``local`` transport: the same agent on the controller's own machine.

For trying nodeferry without a remote machine, and for running the controller
on the GPU box itself. Same bundle, same argv, same files as over SSH.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

from controller.common.config import Settings
from controller.common.errors import RemoteError
from controller.common.stats import Stats
from controller.common.target import Target
from controller.ssh.pool import CommandResult
from controller.transports.base import FileStat, Transport, shell_command


class LocalTransport(Transport):
    def __init__(
        self, settings: Settings, stats: Stats, bundle_data: bytes, bundle_sha256: str
    ) -> None:
        super().__init__(Target.local())
        self.settings = settings
        self.stats = stats
        self._bundle = bundle_data
        self._sha256 = bundle_sha256
        self._root = Path(settings.local_state_dir).expanduser().absolute()

    def python(self) -> str:
        return sys.executable

    def state_dir(self) -> str:
        return str(self._root)

    def ensure_agent(self) -> str:
        agent_dir = self._root / "agent"
        path = agent_dir / f"{self._sha256}.pyz"
        if path.exists() and path.stat().st_size == len(self._bundle):
            return str(path)
        self._root.mkdir(mode=0o700, parents=True, exist_ok=True)
        agent_dir.mkdir(mode=0o700, exist_ok=True)
        temp = agent_dir / f".{self._sha256}.{secrets.token_hex(4)}.tmp"
        temp.write_bytes(self._bundle)
        temp.chmod(0o600)
        temp.replace(path)
        self.stats.add("uploads")
        return str(path)

    def forget_agent(self) -> None:
        # Nothing cached: ensure_agent looks at the file every time here.
        return None

    def execute(self, argv: list[str], stdin: bytes | None, timeout: float) -> CommandResult:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        try:
            completed = subprocess.run(
                argv,
                input=stdin or b"",
                capture_output=True,
                timeout=timeout,
                check=False,
                env=env,
            )
        except subprocess.TimeoutExpired:
            raise RemoteError(
                f"a local agent command did not finish within {timeout:g} s: {shell_command(argv)}"
            ) from None
        self.stats.add("commands")
        return CommandResult(
            shell_command(argv), completed.returncode, completed.stdout, completed.stderr
        )

    def stat(self, relative: str) -> FileStat | None:
        self.stats.add("remote_stats")
        try:
            info = (self._root / relative).stat()
        except FileNotFoundError:
            return None
        return FileStat(mtime=info.st_mtime, size=info.st_size)

    def read(self, relative: str, offset: int = 0, limit: int | None = None) -> bytes:
        with open(self._root / relative, "rb") as handle:
            handle.seek(offset)
            return handle.read(limit if limit is not None else -1)

    def read_absolute(self, path: str, limit: int) -> bytes | None:
        try:
            with open(Path(path).expanduser(), "rb") as handle:
                return handle.read(limit)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
