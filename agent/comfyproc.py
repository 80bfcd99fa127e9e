"""The ComfyUI processes of one home, as /proc shows them: argv, working directory,
environment, parent and cgroup; and where such a process listens.

A process belongs to a home when it is a Python interpreter and one of its
arguments ending in ``main.py`` resolves (against its working directory) to that
home's ``main.py``. Nothing
here changes anything; ``agent.restart`` does. ``proc`` is a parameter so unit
tests can hand in a made-up tree.
"""

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

PROC = Path("/proc")
DEFAULT_PORT = 8188


@dataclass
class ComfyProcess:
    pid: int
    argv: List[str]
    cwd: str
    ppid: int
    env: Dict[str, str] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return port_of(self.argv)

    @property
    def host(self) -> str:
        return host_of(self.argv)


def _read(path: Path) -> Optional[bytes]:
    try:
        return path.read_bytes()
    except OSError:  # gone, or another user's
        return None


def cmdline(pid: int, proc: Path = PROC) -> Optional[List[str]]:
    raw = _read(proc / str(pid) / "cmdline")
    if raw is None:
        return None
    return [part.decode("utf-8", "surrogateescape") for part in raw.split(b"\0") if part]


def environ(pid: int, proc: Path = PROC) -> Dict[str, str]:
    raw = _read(proc / str(pid) / "environ") or b""
    env: Dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep and key:
            env[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
    return env


def cwd_of(pid: int, proc: Path = PROC) -> Optional[str]:
    try:
        return os.readlink(str(proc / str(pid) / "cwd"))
    except OSError:
        return None


def stat_fields(pid: int, proc: Path = PROC) -> Optional[List[str]]:
    """``/proc/PID/stat`` after the command name: state, ppid, …"""
    raw = _read(proc / str(pid) / "stat")
    if raw is None:
        return None
    text = raw.decode("ascii", "replace")
    # The command name is in parentheses and may itself hold spaces or ')'.
    return text[text.rfind(")") + 2 :].split()


def ppid_of(pid: int, proc: Path = PROC) -> int:
    fields_ = stat_fields(pid, proc)
    try:
        return int(fields_[1]) if fields_ else 0
    except (IndexError, ValueError):
        return 0


def is_gone(pid: int, proc: Path = PROC) -> bool:
    """No such process, or a zombie (dead, only not reaped by its parent yet)."""
    fields_ = stat_fields(pid, proc)
    return fields_ is None or not fields_ or fields_[0] in ("Z", "X")


def ancestors(pid: int, proc: Path = PROC) -> List[int]:
    """Parent, grandparent, … up to (not including) pid 0."""
    out: List[int] = []
    current = ppid_of(pid, proc)
    while current > 0 and current not in out and len(out) < 64:
        out.append(current)
        current = ppid_of(current, proc)
    return out


def cgroup_of(pid: int, proc: Path = PROC) -> List[str]:
    raw = _read(proc / str(pid) / "cgroup") or b""
    return [line.split(":", 2)[-1] for line in raw.decode("utf-8", "replace").splitlines()]


def _runs_main(argv: List[str], cwd: str, main: str) -> bool:
    return any(
        (arg == "main.py" or arg.endswith("/main.py"))
        and os.path.realpath(str(Path(cwd) / arg)) == main
        for arg in argv[1:]
    )


def find(ui_home: Path, proc: Path = PROC, with_env: bool = True) -> List[ComfyProcess]:
    """Every live process running ``ui_home``'s main.py, lowest pid first.

    ComfyUI's own ``--quick-test-for-ci`` runs (the ``verify: comfyui`` check)
    start and stop by themselves and are no server: left out.
    """
    main = os.path.realpath(str(Path(ui_home).expanduser() / "main.py"))
    found: List[ComfyProcess] = []
    try:
        entries = [int(e.name) for e in proc.iterdir() if e.name.isdigit()]
    except OSError:
        return found
    for pid in sorted(entries):
        if pid == os.getpid():
            continue
        argv = cmdline(pid, proc)
        if not argv or "--quick-test-for-ci" in argv:
            continue
        if not Path(argv[0]).name.startswith("python"):
            continue  # an editor or a shell with main.py in its argv is no server
        if not any(a == "main.py" or a.endswith("/main.py") for a in argv[1:]):
            continue
        cwd = cwd_of(pid, proc)
        if cwd is None or not _runs_main(argv, cwd, main) or is_gone(pid, proc):
            continue
        env = environ(pid, proc) if with_env else {}
        found.append(ComfyProcess(pid, argv, cwd, ppid_of(pid, proc), env))
    # A wrapper that is itself "python main.py" (a launcher re-exec) is not the server:
    # keep the innermost of a chain.
    pids = {p.pid for p in found}
    return [p for p in found if not any(c.ppid == p.pid for c in found if c.pid in pids)]


def _option(argv: List[str], name: str) -> "tuple[bool, Optional[str]]":
    """(present, value) of ``--name VALUE`` / ``--name=VALUE``; the last one wins."""
    present, value = False, None
    for i, arg in enumerate(argv):
        if arg == name:
            present = True
            following = argv[i + 1] if i + 1 < len(argv) else None
            value = following if following is not None and not following.startswith("-") else None
        elif arg.startswith(name + "="):
            present, value = True, arg.split("=", 1)[1]
    return present, value


def port_of(argv: List[str]) -> int:
    """ComfyUI's ``--port`` (8188 when absent or unreadable)."""
    _present, value = _option(argv, "--port")
    try:
        port = int(value) if value is not None else DEFAULT_PORT
    except ValueError:
        return DEFAULT_PORT
    return port if 0 < port < 65536 else DEFAULT_PORT


def host_of(argv: List[str]) -> str:
    """Where to reach it from this machine: its ``--listen`` address when that is one
    specific address, else loopback (``--listen`` alone or 0.0.0.0 mean every one)."""
    present, value = _option(argv, "--listen")
    if not present or not value:
        return "127.0.0.1"
    first = value.split(",")[0].strip()
    if first in ("", "0.0.0.0", "::", "[::]", "localhost"):  # noqa: S104 (read, not bound)
        return "127.0.0.1"
    return first
