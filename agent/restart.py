"""Restart the home's ComfyUI the way this instance runs it, then ask it what it has.

Found in this order, never guessed beyond it:

1. a supervisord program whose process (or a descendant of it) runs the home's
   ``main.py``: ``supervisorctl -c CONF restart NAME``;
2. a systemd unit whose cgroup holds that process and whose ExecStart runs it
   (or whose MainPID it is): ``systemctl [--user] restart UNIT``;
3. the plain process: SIGTERM, SIGKILL after a grace period, then the same argv in
   the same working directory with the same environment, detached, its output in
   the task's ``comfyui.log``;
4. the spec's ``{"command": [...]}``, run detached the same way.

"No running ComfyUI found for this home" is an answer (a ``note``), not a failure.
Every command is an argv list; nothing here builds a shell line.
"""

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from agent import comfyproc, priority, procs
from agent import ready as readymod
from agent.comfyproc import ComfyProcess
from agent.liveness import TASK_ENV
from agent.procs import Children
from agent.tasklog import TaskLog
from protocol import ReadyResult

NO_COMFYUI = "no running ComfyUI found for this home"
LOG_TAIL_LINES = 30
POLL_SECONDS = 0.5
COMMAND_TIMEOUT = 120.0


class NotReady(Exception):
    """The restart failed or the server did not answer in time; the message has its log.

    ``result`` says how far it got (how it was restarted, how long it waited)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.result = ReadyResult()


@dataclass
class System:
    """Where this machine's facts come from; unit tests hand in a made-up tree."""

    proc: Path = comfyproc.PROC
    systemd_run_dir: Path = Path("/run/systemd/system")
    path: Optional[str] = None  # PATH for which(); None: the agent's own

    def which(self, name: str) -> Optional[str]:
        return shutil.which(name, path=self.path)

    @property
    def systemd_booted(self) -> bool:
        # sd_booted(3): systemd is PID 1 exactly when this directory exists.
        return self.systemd_run_dir.is_dir()


@dataclass
class Plan:
    """How the home's ComfyUI will be restarted."""

    kind: str  # one of protocol.RESTARTED_BY
    argv: List[str]  # supervisorctl/systemctl/the process's own/the configured one
    old: Optional[ComfyProcess] = None
    service: Optional[str] = None
    user_unit: bool = False
    supervisorctl: Optional[List[str]] = None  # [ctl, "-c", conf] for `tail`


# -- detection -------------------------------------------------------------------


def _is_supervisord(argv: Sequence[str]) -> bool:
    heads = [Path(a).name for a in argv[:2]]
    return "supervisord" in heads


def supervisord_config(argv: Sequence[str], cwd: Optional[str]) -> Optional[str]:
    """The ``-c``/``--configuration`` of a supervisord command line (absolute), if any."""
    conf: Optional[str] = None
    for i, arg in enumerate(argv):
        if arg in ("-c", "--configuration") and i + 1 < len(argv):
            conf = argv[i + 1]
        elif arg.startswith("--configuration="):
            conf = arg.split("=", 1)[1]
        elif arg.startswith("-c") and len(arg) > 2 and not arg.startswith("--"):
            conf = arg[2:]
    if conf is not None and cwd is not None:
        conf = str(Path(cwd) / conf)
    return conf


def _supervisorctl(argv: Sequence[str], system: System) -> Optional[str]:
    """supervisorctl beside the supervisord that runs it (its venv), else on PATH."""
    for arg in argv[:2]:
        if Path(arg).name == "supervisord" and Path(arg).is_absolute():
            beside = Path(arg).parent / "supervisorctl"
            if os.access(beside, os.X_OK):
                return str(beside)
    return system.which("supervisorctl")


def program_for(status_lines: Sequence[str], pids: Sequence[int]) -> Optional[str]:
    """The program of ``supervisorctl status`` whose pid is one of ``pids``.

    Lines look like ``comfyui   RUNNING   pid 4242, uptime 0:01:02`` (or
    ``group:name …``).
    """
    wanted = {str(p) for p in pids}
    for line in status_lines:
        parts = line.replace(",", " ").split()
        for i, part in enumerate(parts[:-1]):
            if part == "pid" and parts[i + 1] in wanted:
                return parts[0]
    return None


def systemd_unit(cgroups: Sequence[str]) -> "tuple[Optional[str], bool]":
    """(unit, is a user unit) from a process's cgroup paths: its innermost ``.service``."""
    for path in cgroups:
        parts = [p for p in path.split("/") if p]
        services = [p for p in parts if p.endswith(".service")]
        if not services:
            continue
        unit = services[-1]
        user = any(p.startswith("user@") for p in parts[: parts.index(unit)])
        if unit.startswith("user@"):
            return None, False  # the user manager itself, not a unit that runs ComfyUI
        return unit, user
    return None, False


def _run(
    argv: List[str], log: TaskLog, children: Children, timeout: float = COMMAND_TIMEOUT
) -> "tuple[bool, List[str]]":
    lines: List[str] = []
    result = procs.run(
        argv, log=log, prefix="restart", children=children, timeout=timeout, collect=lines
    )
    return result.ok, lines


def detect(
    ui_home: Path,
    restart: object,
    log: TaskLog,
    children: Children,
    system: Optional[System] = None,
) -> Optional[Plan]:
    """How to restart ``ui_home``'s ComfyUI; None when nothing runs it and no command is set."""
    system = system or System()
    found = comfyproc.find(ui_home, system.proc)
    command = restart.get("command") if isinstance(restart, dict) else None
    if not found:
        return Plan("command", list(command)) if command else None
    if len(found) > 1:
        log.line("restart", f"{len(found)} ComfyUI processes here; restarting pid {found[0].pid}")
    comfy = found[0]
    chain = [comfy.pid, *comfyproc.ancestors(comfy.pid, system.proc)]
    for i, pid in enumerate(chain[1:], start=1):
        argv = comfyproc.cmdline(pid, system.proc) or []
        if not _is_supervisord(argv):
            continue
        ctl = _supervisorctl(argv, system)
        conf = supervisord_config(argv, comfyproc.cwd_of(pid, system.proc))
        if ctl is None:
            log.line("restart", f"supervisord (pid {pid}) runs it, but no supervisorctl found")
            break
        base = [ctl] + (["-c", conf] if conf else [])
        # `status` exits non-zero when some program is not running: read it anyway.
        _ok, lines = _run([*base, "status"], log, children)
        name = program_for(lines, chain[:i])
        if name is not None:
            return Plan("supervisor", [*base, "restart", name], comfy, name, supervisorctl=base)
        log.line("restart", f"supervisord (pid {pid}) lists no program with pid in {chain[:i]}")
        break
    unit, user = systemd_unit(comfyproc.cgroup_of(comfy.pid, system.proc))
    systemctl = system.which("systemctl")
    if unit is not None and system.systemd_booted and systemctl is not None:
        scope = ["--user"] if user else []
        ok, lines = _run(
            [systemctl, *scope, "show", unit, "--property=MainPID", "--property=ExecStart"],
            log,
            children,
        )
        if ok and _unit_runs(lines, comfy, ui_home):
            return Plan("systemd", [systemctl, *scope, "restart", unit], comfy, unit, user)
        log.line("restart", f"{unit} holds the process but does not start main.py; not used")
    return Plan("process", list(comfy.argv), comfy)


def _unit_runs(show_lines: Sequence[str], comfy: ComfyProcess, ui_home: Path) -> bool:
    """Whether ``systemctl show`` says the unit's main process or ExecStart is ComfyUI
    (sshd.service holds a session's processes too, and must never be restarted)."""
    main = str(Path(ui_home).expanduser() / "main.py")
    for line in show_lines:
        key, _, value = line.partition("=")
        if key == "MainPID" and value.strip() == str(comfy.pid):
            return True
        if key == "ExecStart" and ("main.py" in value or main in value):
            return True
    return False


# -- the restart itself ----------------------------------------------------------


def _nice_of(pid: int, proc: Path) -> Optional[int]:
    fields_ = comfyproc.stat_fields(pid, proc)
    try:
        return int(fields_[16]) if fields_ else None
    except (IndexError, ValueError):
        return None


class Restarter:
    """Restart per a :class:`Plan`, wait for the port, read ``/object_info``."""

    def __init__(
        self,
        ui_home: Path,
        log: TaskLog,
        children: Children,
        log_file: Path,
        *,
        grace: float = 15.0,
        system: Optional[System] = None,
    ) -> None:
        self.ui_home = ui_home
        self.log = log
        self.children = children
        self.log_file = log_file
        self.grace = grace
        self.system = system or System()
        self.started: Optional[subprocess.Popen[bytes]] = None

    def restart(self, plan: Plan) -> None:
        """Stop and start it; :class:`NotReady` when the restart command itself failed."""
        self.log.line("restart", f"restarting ComfyUI via {plan.kind}: {plan.argv}")
        if plan.kind in ("supervisor", "systemd"):
            ok, lines = _run(plan.argv, self.log, self.children)
            if not ok:
                raise NotReady(
                    f"{plan.kind} could not restart {plan.service}:\n"
                    + "\n".join(lines[-15:])
                    + self._service_tail(plan)
                )
            return
        if plan.kind == "process":
            if plan.old is None:  # detect() makes a process plan only with its process
                raise NotReady("no process to restart in a plain-process plan")
            nice = _nice_of(plan.old.pid, self.system.proc)
            self._stop(plan.old.pid)
            env = {k: v for k, v in plan.old.env.items() if k != TASK_ENV}
            self._spawn(plan.argv, plan.old.cwd, env, nice)
            return
        env = {k: v for k, v in os.environ.items() if k != TASK_ENV}
        self._spawn(plan.argv, str(self.ui_home), env, priority.original_nice)

    def _stop(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        while not comfyproc.is_gone(pid, self.system.proc):
            if time.monotonic() > deadline:
                self.log.line("restart", f"pid {pid} still there after {self.grace:.0f}s: SIGKILL")
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 10.0
                while not comfyproc.is_gone(pid, self.system.proc):
                    if time.monotonic() > deadline:
                        raise NotReady(f"pid {pid} survived SIGKILL")
                    time.sleep(0.05)
                return
            # Not cancellable here: a half-stopped server is worse than a short wait.
            time.sleep(0.05)
        self.log.line("restart", f"pid {pid} stopped")

    def _spawn(self, argv: List[str], cwd: str, env: Dict[str, str], nice: Optional[int]) -> None:
        with open(self.log_file, "ab") as out:
            try:
                self.started = subprocess.Popen(
                    argv,
                    cwd=cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # outlives the worker; not one of its children
                    close_fds=True,
                )
            except OSError as exc:
                raise NotReady(f"could not start {argv[0]}: {exc}") from None
        self.log.line("restart", f"started pid {self.started.pid}, output in {self.log_file}")
        if nice is not None:
            # The worker runs at a lower priority; the server must not inherit it.
            try:
                os.setpriority(os.PRIO_PROCESS, self.started.pid, nice)
            except OSError as exc:
                self.log.line("restart", f"could not restore niceness {nice}: {exc}")

    # -- waiting -----------------------------------------------------------------

    def wait(
        self, plan: Optional[Plan], timeout: float, started_at: float
    ) -> "Tuple[Optional[ComfyProcess], Dict[str, object], str, int]":
        """Until the home's (new) ComfyUI serves ``/object_info``; cancellable."""
        deadline = started_at + timeout
        old = plan.old.pid if plan is not None and plan.old is not None else None
        fallback = plan.argv if plan is not None and plan.kind in ("command", "process") else []
        host, port = comfyproc.host_of(fallback), comfyproc.port_of(fallback)
        why = "not started"
        while True:
            self.children.check()
            running = comfyproc.find(self.ui_home, self.system.proc, False)
            current = [p for p in running if p.pid != old]
            if current:
                host, port = current[0].host, current[0].port
            if current or (plan is not None and plan.kind == "command"):
                try:
                    left = max(1.0, deadline - time.monotonic())
                    info = readymod.object_info(host, port, timeout=min(30.0, left))
                    return (current[0] if current else None), info, host, port
                except readymod.NotAnswering as exc:
                    why = str(exc)
            self._check_started(plan)
            if time.monotonic() > deadline:
                raise NotReady(
                    f"ComfyUI did not answer on {host}:{port} within {timeout:.0f}s "
                    f"({why}); the end of its log:\n" + self.tail(plan)
                )
            self.children.sleep(POLL_SECONDS)

    def _check_started(self, plan: Optional[Plan]) -> None:
        if self.started is None or plan is None:
            return
        code = self.started.poll()
        # A command may start ComfyUI and exit 0 (a script); a server never exits 0 early.
        if code is None or (code == 0 and plan.kind == "command"):
            return
        raise NotReady(
            f"ComfyUI ({plan.kind}) exited with status {code} before it answered; "
            "the end of its log:\n" + self.tail(plan)
        )

    def tail(self, plan: Optional[Plan]) -> str:
        if plan is not None and plan.kind in ("supervisor", "systemd"):
            return self._service_tail(plan).lstrip("\n")
        try:
            with open(self.log_file, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 64 * 1024))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-LOG_TAIL_LINES:])

    def _service_tail(self, plan: Plan) -> str:
        if plan.kind == "supervisor" and plan.supervisorctl and plan.service:
            lines: List[str] = []
            for stream in ("stderr", "stdout"):
                argv = [*plan.supervisorctl, "tail", "8000", plan.service, stream]
                _ok, got = _run(argv, self.log, self.children)
                lines += got
            return "\n" + "\n".join(lines[-LOG_TAIL_LINES:])
        journalctl = self.system.which("journalctl")
        if plan.kind == "systemd" and journalctl and plan.service:
            scope = ["--user"] if plan.user_unit else []
            argv = [journalctl, *scope, "-u", plan.service, "-n", str(LOG_TAIL_LINES)]
            _ok, got = _run([*argv, "--no-pager", "-o", "cat"], self.log, self.children)
            return "\n" + "\n".join(got[-LOG_TAIL_LINES:])
        return ""


def bring_up(
    ui_home: Path,
    restart: object,
    classes: List[str],
    timeout: float,
    *,
    log: TaskLog,
    children: Children,
    log_file: Path,
    system: Optional[System] = None,
    grace: Optional[float] = None,
) -> ReadyResult:
    """Restart (unless ``restart`` is "never") and ask; :class:`NotReady` on failure."""
    started = time.monotonic()
    system = system or System()
    if grace is None:
        grace = _env_seconds("NODEFERRY_AGENT_RESTART_GRACE", 15.0)
    restarter = Restarter(ui_home, log, children, log_file, grace=grace, system=system)
    plan: Optional[Plan] = None
    if restart != "never":
        plan = detect(ui_home, restart, log, children, system)
        if plan is None:
            log.line("restart", NO_COMFYUI + "; not restarted")
            return ReadyResult(note=NO_COMFYUI, seconds=round(time.monotonic() - started, 3))
    elif not comfyproc.find(ui_home, system.proc, False):
        log.line("restart", NO_COMFYUI + "; nothing to ask")
        return ReadyResult(note=NO_COMFYUI, seconds=round(time.monotonic() - started, 3))
    try:
        if plan is not None:
            restarter.restart(plan)
        proc, info, host, port = restarter.wait(plan, timeout, started)
    except NotReady as exc:
        exc.result = ReadyResult(
            restarted_by=plan.kind if plan is not None else None,
            seconds=round(time.monotonic() - started, 3),
            service=plan.service if plan is not None else None,
        )
        raise
    lacking = readymod.missing(info, classes)
    result = ReadyResult(
        restarted_by=plan.kind if plan is not None else None,
        classes=len(info),
        missing=lacking,
        seconds=round(time.monotonic() - started, 3),
        port=port,
        pid=proc.pid if proc is not None else None,
        service=plan.service if plan is not None else None,
    )
    log.line(
        "restart",
        f"ComfyUI answers on {host}:{port}: {len(info)} classes"
        + (f", missing {', '.join(lacking)}" if lacking else ", none missing")
        + f" ({result.seconds:.1f}s)",
    )
    return result


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    try:
        return max(0.0, float(raw)) if raw else default
    except ValueError:
        return default
