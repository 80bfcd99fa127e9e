"""The ``ssh`` transport: the agent on an instance, driven through the pool."""

from __future__ import annotations

import posixpath
import secrets
import stat as stat_module
import threading

import paramiko

from controller.common.config import Settings
from controller.common.stats import Stats
from controller.common.target import Target
from controller.ssh.pool import CommandResult, SSHPool
from controller.transports.base import FileStat, Transport, shell_command


class SshTransport(Transport):
    def __init__(
        self,
        target: Target,
        pool: SSHPool,
        settings: Settings,
        stats: Stats,
        bundle_data: bytes,
        bundle_sha256: str,
    ) -> None:
        super().__init__(target)
        self.pool = pool
        self.settings = settings
        self.stats = stats
        self._bundle = bundle_data
        self._sha256 = bundle_sha256
        self._lock = threading.Lock()
        self._state_dir: str | None = None
        self._agent_path: str | None = None

    def python(self) -> str:
        return self.settings.remote_python

    def state_dir(self) -> str:
        if self._state_dir is None:
            configured = self.settings.remote_state_dir

            def resolve(_sftp: paramiko.SFTPClient, home: str) -> str:
                if configured == "~":
                    return home
                if configured.startswith("~/"):
                    return posixpath.join(home, configured[2:])
                return configured

            self._state_dir = self.pool.sftp(self.target, resolve)
        return self._state_dir

    def _path(self, relative: str) -> str:
        return posixpath.join(self.state_dir(), relative)

    def ensure_agent(self) -> str:
        # Connect (through state_dir) before taking the lock: concurrent starts to a
        # host then share the pool's one connection attempt, and fail together when
        # it fails, instead of queueing on this lock for one attempt each.
        state_dir = self.state_dir()
        with self._lock:
            if self._agent_path is not None:
                return self._agent_path
            agent_dir = posixpath.join(state_dir, "agent")
            path = posixpath.join(agent_dir, f"{self._sha256}.pyz")
            size = len(self._bundle)

            def upload(sftp: paramiko.SFTPClient, _home: str) -> None:
                try:
                    if sftp.stat(path).st_size == size:
                        return
                except FileNotFoundError:
                    pass
                for directory in (state_dir, agent_dir):
                    try:
                        info = sftp.stat(directory)
                        if not stat_module.S_ISDIR(info.st_mode or 0):
                            raise NotADirectoryError(
                                f"{directory} on {self.target} is not a directory"
                            )
                    except FileNotFoundError:
                        _makedirs(sftp, directory)
                temp = posixpath.join(agent_dir, f".{self._sha256}.{secrets.token_hex(4)}.tmp")
                with sftp.open(temp, "wb") as handle:
                    handle.write(self._bundle)
                sftp.chmod(temp, 0o600)
                sftp.posix_rename(temp, path)
                self.stats.add("uploads")

            self.pool.sftp(self.target, upload)
            self._agent_path = path
            return path

    def forget_agent(self) -> None:
        with self._lock:
            self._agent_path = None

    def execute(self, argv: list[str], stdin: bytes | None, timeout: float) -> CommandResult:
        return self.pool.run(self.target, shell_command(argv), stdin, timeout)

    def stat(self, relative: str) -> FileStat | None:
        path = self._path(relative)

        def stat(sftp: paramiko.SFTPClient, _home: str) -> FileStat | None:
            try:
                info = sftp.stat(path)
            except FileNotFoundError:
                return None
            return FileStat(mtime=float(info.st_mtime or 0), size=int(info.st_size or 0))

        self.stats.add("remote_stats")
        return self.pool.sftp(self.target, stat)

    def read(self, relative: str, offset: int = 0, limit: int | None = None) -> bytes:
        path = self._path(relative)

        def read(sftp: paramiko.SFTPClient, _home: str) -> bytes:
            with sftp.open(path, "rb") as handle:
                if offset:
                    handle.seek(offset)
                return bytes(handle.read(limit) if limit is not None else handle.read())

        return self.pool.sftp(self.target, read)

    def read_absolute(self, path: str, limit: int) -> bytes | None:
        def read(sftp: paramiko.SFTPClient, home: str) -> bytes | None:
            full = posixpath.join(home, path[2:]) if path.startswith("~/") else path
            try:
                with sftp.open(full, "rb") as handle:
                    # prefetch pipelines the reads: the database is a few MB.
                    handle.prefetch()
                    return bytes(handle.read(limit))
            except (FileNotFoundError, IsADirectoryError):
                return None
            except OSError as exc:
                if getattr(exc, "errno", None) in (2, 20, 21):  # missing, not a dir
                    return None
                raise

        return self.pool.sftp(self.target, read)


def _makedirs(sftp: paramiko.SFTPClient, directory: str) -> None:
    parent = posixpath.dirname(directory)
    if parent and parent != directory:
        try:
            sftp.stat(parent)
        except FileNotFoundError:
            _makedirs(sftp, parent)
    try:
        sftp.mkdir(directory, mode=0o700)
    except OSError:
        # Made by someone else meanwhile is fine; anything else shows on the next step.
        sftp.stat(directory)
