"""A real PostgreSQL server on 127.0.0.1 for tests and benchmarks.

Debian's ``postgresql`` package (``/usr/lib/postgresql/<N>/bin``). ``initdb`` and
``postgres`` refuse to run as root, and tests run as root: as root both run as
the unprivileged ``postgres`` user the package made (``os.setuid`` in the child),
with the data dir and the socket dir in a folder of their own that user owns.
The server listens on a free loopback port, trusts local connections (a test
server only) and is stopped by the pid it recorded, never by name.

No pytest in here: the benchmark uses it too.

    with PostgresServer(tmp_path / "pg") as server:
        url = server.url("nodeferry")        # a fresh database
        server.stop(); server.start()        # same port, same data: a restart
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

RUN_AS = "postgres"


def find_bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin folder, or None when none is installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=_major, reverse=True)
    return Path(found[0]).parent if found else None


def _major(path: str) -> int:
    try:
        return int(Path(path).parent.parent.name)
    except ValueError:
        return 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    def __init__(self, root: Path, bin_dir: Path | None = None, *, durable: bool = False) -> None:
        found = bin_dir or find_bin_dir()
        if found is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
        self.bin = found
        #: fsync on (a benchmark against SQLite's durable commits); off for tests.
        self.durable = durable
        self.root = root
        self.data = root / "data"
        self.sockets = root / "sockets"
        self.log = root / "postgres.log"
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._uid: int | None = None
        self._gid: int | None = None
        if os.geteuid() == 0:
            entry = pwd.getpwnam(RUN_AS)
            self._uid, self._gid = entry.pw_uid, entry.pw_gid
        self.user = RUN_AS if self._uid is not None else pwd.getpwuid(os.geteuid()).pw_name
        self._databases = 0

    # -- running as the unprivileged user ------------------------------------------

    def _demote(self) -> None:
        if self._gid is not None and self._uid is not None:
            os.setgid(self._gid)
            os.setuid(self._uid)

    def _own(self, path: Path) -> None:
        if self._uid is not None and self._gid is not None:
            os.chown(path, self._uid, self._gid)

    def _run(self, argv: list[str]) -> None:
        done = subprocess.run(
            argv,
            check=False,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=self._demote,
            cwd=self.root,
            timeout=120,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{Path(argv[0]).name} failed ({done.returncode}): "
                + done.stderr.decode(errors="replace")[-2000:]
            )

    # -- life cycle -----------------------------------------------------------------

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.sockets.mkdir(exist_ok=True)
        # The folder is the postgres user's (it lies in a world-searchable one:
        # mkdtemp in /tmp, not a 0700 test folder).
        self._own(self.root)
        self._own(self.sockets)
        self._run(
            [
                str(self.bin / "initdb"),
                "-D",
                str(self.data),
                "-U",
                self.user,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
                "--locale=C",
            ]
        )

    def start(self, timeout: float = 60.0) -> None:
        log = open(self.log, "ab")  # noqa: SIM115 - the server's own log, kept open
        try:
            self.proc = subprocess.Popen(
                [
                    str(self.bin / "postgres"),
                    "-D",
                    str(self.data),
                    "-p",
                    str(self.port),
                    "-k",
                    str(self.sockets),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    f"fsync={'on' if self.durable else 'off'}",
                    "-c",
                    "max_connections=200",
                    "-c",
                    "shared_buffers=32MB",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                preexec_fn=self._demote,
                cwd=self.root,
            )
        finally:
            log.close()
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.log.read_text(errors='replace')}")
            ready = subprocess.run(
                [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("postgres did not become ready in time")

    def stop(self, *, fast: bool = True) -> None:
        """Stop the server by its pid (SIGINT: fast shutdown, clients cut off)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT if fast else signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self) -> PostgresServer:
        self.init()
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- databases ------------------------------------------------------------------

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; returns its name."""
        self._databases += 1
        name = name or f"nodeferry_{os.getpid()}_{self._databases}"
        self._run(
            [
                str(self.bin / "createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                self.user,
                name,
            ]
        )
        return name

    def url(self, database: str | None = None) -> str:
        """A SQLAlchemy URL of a new database (or of ``database``)."""
        name = database or self.create_database()
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{name}"
