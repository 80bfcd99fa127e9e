"""A real OpenSSH ``sshd`` on 127.0.0.1 for tests and benchmarks.

No pytest in here: scripts (the benchmark) use it too. Each :class:`SshServer`
owns a directory with its own host key, client key, ``authorized_keys``,
config, pid file and log, listens on a free loopback port and is stopped by the
pid it recorded, never by name.

    with SshServer(tmp_path / "sshd-a") as server:
        ssh_connection = server.connection_string()  # "root@127.0.0.1 -p 40123"
        ...
        server.stop(); server.start()      # same port, same host key
        server.session_count()             # sessions sshd started (exec + sftp)

Notes learnt on these machines: sshd must be started by absolute path (it
re-execs itself); as root ``/run/sshd`` must exist; keys must be mode 600; sshd
forks before it binds, so we wait for the pid file and the "listening" log line
instead of trusting its exit status.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = "ssh-keygen"

#: sshd logs one such line per exec / subsystem it starts (LogLevel VERBOSE).
SESSION_MARK = "Starting session:"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_key(path: Path, comment: str = "nodeferry-test") -> Path:
    """An ed25519 key pair at ``path`` and ``path.pub``, mode 600; returns ``path``."""
    if not path.exists():
        subprocess.run(
            [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
            check=True,
            stdin=subprocess.DEVNULL,
        )
    path.chmod(0o600)
    return path


class SshServer:
    """One sshd. ``client_key`` may be shared between servers (pass the same path)."""

    def __init__(
        self,
        base_dir: Path | str,
        *,
        port: int | None = None,
        client_key: Path | None = None,
        extra_config: str = "",
        log_level: str = "VERBOSE",
    ) -> None:
        self.base_dir = Path(base_dir)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.base_dir.chmod(0o700)
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.user = getpass.getuser()
        self.host_key = make_key(self.base_dir / "ssh_host_ed25519_key", "host")
        self.client_key = make_key(client_key or self.base_dir / "client_key", "client")
        self.authorized_keys = self.base_dir / "authorized_keys"
        self.authorized_keys.write_text(
            Path(str(self.client_key) + ".pub").read_text(), encoding="utf-8"
        )
        self.authorized_keys.chmod(0o600)
        self.config_path = self.base_dir / "sshd_config"
        self.pid_file = self.base_dir / "sshd.pid"
        self.log_path = self.base_dir / "sshd.log"
        self.extra_config = extra_config
        self.log_level = log_level
        self.pid: int | None = None

    # -- lifecycle -------------------------------------------------------------

    def _write_config(self) -> None:
        sftp_server = next(
            (
                p
                for p in ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server")
                if Path(p).exists()
            ),
            "internal-sftp",
        )
        self.config_path.write_text(
            "\n".join(
                [
                    f"ListenAddress {self.host}",
                    f"Port {self.port}",
                    f"HostKey {self.host_key}",
                    f"PidFile {self.pid_file}",
                    f"AuthorizedKeysFile {self.authorized_keys}",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    "UsePAM no",
                    "StrictModes no",
                    "PrintMotd no",
                    "UseDNS no",
                    f"LogLevel {self.log_level}",
                    f"Subsystem sftp {sftp_server}",
                    self.extra_config,
                    "",
                ]
            ),
            encoding="utf-8",
        )

    def start(self, timeout: float = 15.0) -> SshServer:
        if self.pid is not None:
            raise RuntimeError("sshd already running")
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self._write_config()
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()
        log_offset = len(self.log_text())
        # Without -D sshd daemonises: the pid file names the listener we must stop.
        result = subprocess.run(
            [SSHD, "-f", str(self.config_path), "-E", str(self.log_path)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pid_file.exists():
                text = self.pid_file.read_text().strip()
                if text.isdigit():
                    self.pid = int(text)
                    break
            time.sleep(0.02)
        else:
            raise RuntimeError(
                f"sshd did not start (exit {result.returncode}): {result.stderr.strip()}\n"
                f"{self.log_text()[log_offset:]}"
            )
        while time.monotonic() < deadline:
            if "Server listening on" in self.log_text()[log_offset:] and self._accepts():
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"sshd did not start listening:\n{self.log_text()[log_offset:]}")

    def _accepts(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1.0):
                return True
        except OSError:
            return False

    def stop(self, timeout: float = 10.0, *, drop_sessions: bool = False) -> None:
        """Stop the listener by its pid. Running sessions (and what they started) live
        on, unless ``drop_sessions``: then open connections are cut too, as when the
        network goes away."""
        if self.pid is None:
            return
        if drop_sessions:
            self.kill_sessions()
        pid, self.pid = self.pid, None
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.02)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # The port must be free before a restart on the same port.
        while time.monotonic() < deadline and self._accepts():
            time.sleep(0.02)

    def kill_sessions(self) -> int:
        """SIGKILL every sshd session process this server forked (simulates a network drop)."""
        if self.pid is None:
            return 0
        killed = 0
        for child in _children(self.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
                killed += 1
        return killed

    @property
    def running(self) -> bool:
        return self.pid is not None and _alive(self.pid)

    def __enter__(self) -> SshServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what tests need to know ----------------------------------------------

    def connection_string(self) -> str:
        return f"{self.user}@{self.host} -p {self.port}"

    def host_public_key(self) -> str:
        """``TYPE BASE64`` of the host key."""
        parts = Path(str(self.host_key) + ".pub").read_text().split()
        return f"{parts[0]} {parts[1]}"

    def known_hosts_line(self) -> str:
        return f"[{self.host}]:{self.port} {self.host_public_key()}\n"

    def log_text(self) -> str:
        # Bytes, then decode: sshd ends lines with CRLF and offsets must stay exact.
        try:
            return self.log_path.read_bytes().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def session_count(self) -> int:
        """How many exec/subsystem sessions sshd has started so far (from its log)."""
        return self.log_text().count(SESSION_MARK)

    def accepted_count(self) -> int:
        """How many logins sshd has accepted so far."""
        return self.log_text().count("Accepted publickey")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, IndexError, ProcessLookupError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found
