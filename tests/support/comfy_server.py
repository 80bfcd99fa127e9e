"""The real ComfyUI (``tests.support.realcomfy``) running as a server for the restart
tier (#22): as a plain process, or as a program of a supervisord of its own.

Everything is ended by pid, never by name: :func:`end_servers` stops every process
running a home's ``main.py`` (found through /proc independently of the agent's own
lookup), and :class:`Supervisord` stops the daemon it started. No pytest in here.

    server = start_plain(home, python, port, log)        # python main.py --cpu ...
    wait_ready(port, timeout=120)                        # /object_info answers
    pids = server_pids(home)                             # what runs that main.py now
    end_servers(home)                                    # SIGTERM, then SIGKILL
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

SUPERVISORD = "/usr/bin/supervisord"
SUPERVISORCTL = "/usr/bin/supervisorctl"
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def server_argv(python: Path, port: int) -> list[str]:
    """How the tier runs ComfyUI: on the CPU, on loopback only."""
    return [str(python), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port)]


def start_plain(home: Path, python: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """ComfyUI as a plain process, the way a start script on an instance runs it."""
    with log.open("ab") as out:
        return subprocess.Popen(
            server_argv(python, port),
            cwd=home,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def object_info(port: int, timeout: float = 10.0) -> dict[str, object] | None:
    """The server's /object_info, or None while nothing answers."""
    try:
        with _NO_PROXY.open(f"http://127.0.0.1:{port}/object_info", timeout=timeout) as reply:
            data = json.loads(reply.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def wait_ready(port: int, timeout: float, log: Path | None = None) -> dict[str, object]:
    """Poll /object_info until it answers (startup imports torch: seconds under load)."""
    deadline = time.monotonic() + timeout
    while True:
        info = object_info(port)
        if info is not None:
            return info
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise TimeoutError(f"ComfyUI on port {port} did not answer in {timeout}s\n{tail}")
        time.sleep(0.2)


def _state(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()[0]


def _alive(pid: int) -> bool:
    return _state(pid) not in (None, "Z", "X")


def server_pids(home: Path) -> dict[int, list[str]]:
    """pid → argv of every live process whose working directory is ``home`` and whose
    argv runs ``main.py`` (the agent finds them its own way; this is the check)."""
    found: dict[int, list[str]] = {}
    real = os.path.realpath(home)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = [a.decode() for a in (entry / "cmdline").read_bytes().split(b"\0") if a]
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if "main.py" in argv and os.path.realpath(cwd) == real and _alive(int(entry.name)):
            found[int(entry.name)] = argv
    return found


def end_pid(pid: int, grace: float = 20.0) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def end_servers(home: Path) -> list[int]:
    """Stop every ComfyUI of ``home`` by pid; returns the pids it stopped."""
    pids = list(server_pids(home))
    for pid in pids:
        end_pid(pid)
    return pids


SUPERVISORD_CONF = """\
[unix_http_server]
file={dir}/supervisor.sock

[supervisord]
logfile={dir}/supervisord.log
pidfile={dir}/supervisord.pid
childlogdir={dir}
nodaemon=true

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{dir}/supervisor.sock

[program:{name}]
command={command}
directory={home}
autostart=true
autorestart=true
startsecs=1
stopsignal=TERM
stopwaitsecs=30
redirect_stderr=true
stdout_logfile={dir}/{name}.log
"""


class Supervisord:
    """A supervisord of its own (config and socket in ``directory``) running ComfyUI
    as program ``name``, the way VastAI's and ai-dock's images do."""

    def __init__(self, directory: Path, home: Path, python: Path, port: int, name: str) -> None:
        self.dir = directory
        self.home = home
        self.name = name
        self.conf = directory / "supervisord.conf"
        self.log = directory / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(
            SUPERVISORD_CONF.format(
                dir=directory, name=name, home=home, command=" ".join(server_argv(python, port))
            )
        )

    def start(self) -> Supervisord:
        self.proc = subprocess.Popen(
            [SUPERVISORD, "-c", str(self.conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        return self

    def ctl(self, *args: str) -> str:
        result = subprocess.run(
            [SUPERVISORCTL, "-c", str(self.conf), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return result.stdout + result.stderr

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # supervisord stops its programs on SIGTERM (stopwaitsecs each).
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        end_servers(self.home)

    def __enter__(self) -> Supervisord:
        return self.start()

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.stop()
