"""The agent's command line: the argv contract in docs/ARCHITECTURE.md.

Machine-facing subcommands print one JSON object on stdout and exit with a
:class:`protocol.ExitCode`; ``install`` is for people and prints live progress.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Dict, List, NoReturn, Optional

from agent import __version__, inventory, launch, lock, procs, requirements, tasks, terminal
from agent import restart as restartmod
from agent.errors import AgentError, InvalidInput
from agent.progress_file import read_progress, write_atomic
from agent.statedir import StateDir, TaskPaths
from agent.tasklog import TaskLog
from agent.worker import run_worker
from protocol import ExitCode, InstallSpec, Lock, Progress, ProtocolError
from protocol import lock as lockdoc
from protocol.errors import count_nodes_from_one
from protocol.fields import new_task_id
from protocol.spec import (
    DEFAULT_CLONE_JOBS,
    DEFAULT_JOBS,
    DEFAULT_READY_TIMEOUT,
    DEFAULT_VERIFY_TIMEOUT,
    MAX_CLONE_JOBS,
    MAX_READY_TIMEOUT,
    ready_classes,
)

START_WAIT_SECONDS = 10.0

EXIT_CODES_HELP = """exit status:
  0  done: every node installed (or was already there)
  1  the install finished but a node failed (install/run)
  2  bad arguments or spec; nothing was changed
  3  another install holds this ComfyUI's lock
  4  no task with that id on this instance
  5  the agent itself failed (see the message)
  6  the install was cancelled"""


def _emit(body: Dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(body, sort_keys=True) + "\n")
    sys.stdout.flush()


# -- spec handling ----------------------------------------------------------------


def _read_spec_text(source: str) -> str:
    try:
        if source == "-":
            return sys.stdin.read()
        return Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read the spec: {exc}", field="spec") from None


def parse_spec(data: object) -> InstallSpec:
    """A validated spec whose ``ui_home`` exists and looks like ComfyUI."""
    try:
        spec = InstallSpec.from_json(data) if isinstance(data, str) else InstallSpec.from_dict(data)
    except ProtocolError as exc:
        raise InvalidInput(exc.message, field=exc.field or None) from None
    home = Path(spec.ui_home).expanduser()
    if not home.is_dir():
        raise InvalidInput(f"{spec.ui_home} does not exist or is not a directory", "ui_home")
    if not ((home / "main.py").is_file() or (home / "custom_nodes").is_dir()):
        raise InvalidInput(
            f"{spec.ui_home} does not look like ComfyUI (no main.py, no custom_nodes/)",
            "ui_home",
        )
    if spec.python is not None and shutil.which(str(Path(spec.python).expanduser())) is None:
        raise InvalidInput(f"{spec.python} does not exist or is not executable", "python")
    return spec


def _prepare_task(state: StateDir, spec: InstallSpec) -> "tuple[TaskPaths, int]":
    """Take the ComfyUI home's lock and create the task; nothing is created on a conflict."""
    state.ensure()
    if state.task(spec.task_id).dir.exists():
        raise InvalidInput(f"task {spec.task_id} already exists on this instance", "task_id")
    fd = lock.acquire(state.locks, str(Path(spec.ui_home).expanduser()), spec.task_id)
    try:
        paths = state.create_task(spec.task_id)
        write_atomic(paths.spec, spec.to_json())
    except BaseException:
        os.close(fd)
        raise
    return paths, fd


def _log_tail(paths: TaskPaths, lines: int = 10) -> str:
    try:
        text = paths.log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# -- subcommands ----------------------------------------------------------------------


def cmd_start(args: argparse.Namespace, state: StateDir) -> int:
    spec = parse_spec(_read_spec_text(args.spec))
    paths, fd = _prepare_task(state, spec)
    try:
        proc = launch.spawn_worker(state, spec.task_id, fd, detached=True)
    finally:
        os.close(fd)  # the worker holds the same lock from here on
    deadline = time.monotonic() + START_WAIT_SECONDS
    while not paths.progress.exists():
        if proc.poll() is not None:
            raise AgentError(
                f"the worker exited with status {proc.returncode} before starting:\n"
                + _log_tail(paths)
            )
        if time.monotonic() > deadline:
            raise AgentError(f"the worker (pid {proc.pid}) wrote no progress document in time")
        time.sleep(0.01)
    _emit({"task_id": spec.task_id, "pid": proc.pid, "progress_file": str(paths.progress)})
    return ExitCode.OK


def _run_foreground(
    state: StateDir, spec: InstallSpec, on_progress: Optional[Callable[[Progress], None]]
) -> Progress:
    paths, fd = _prepare_task(state, spec)
    try:
        proc = launch.spawn_worker(state, spec.task_id, fd, detached=False)
    finally:
        os.close(fd)

    def forward(signum: int, _frame: Optional[FrameType]) -> None:
        # Ctrl-C reaches the worker too (same process group); forwarding makes
        # a signal sent to this process alone stop the install the same way.
        if proc.poll() is None:
            proc.send_signal(signum)

    previous = {
        sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    }
    try:
        while True:
            try:
                proc.wait(timeout=0.1)
                break
            except subprocess.TimeoutExpired:
                pass
            if on_progress is not None:
                current = _read_quietly(paths)
                if current is not None:
                    on_progress(current)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    try:
        final = tasks.status(paths)
    except AgentError:
        raise AgentError(
            f"the worker exited with status {proc.returncode} without a progress document:\n"
            + _log_tail(paths)
        ) from None
    if on_progress is not None:
        on_progress(final)
    return final


def _read_quietly(paths: TaskPaths) -> Optional[Progress]:
    try:
        return read_progress(paths.progress)
    except ProtocolError:
        return None


def _exit_code_of(progress: Progress) -> int:
    if progress.state == "lost" or progress.exit_code is None:
        return ExitCode.INTERNAL
    return progress.exit_code


def cmd_run(args: argparse.Namespace, state: StateDir) -> int:
    spec = parse_spec(_read_spec_text(args.spec))
    final = _run_foreground(state, spec, None)
    _emit(final.to_dict())
    return _exit_code_of(final)


def _read_lock_json(source: str) -> object:
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
        return json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput(f"cannot read the lock: {exc}", field="lock") from None


def cmd_install(args: argparse.Namespace, state: StateDir) -> int:
    if args.lock is None and not args.nodes:
        raise InvalidInput("name at least one node URL, or give --lock FILE", "nodes")
    chosen = [a for a in ("no_verify", "verify_comfyui", "verify_import") if getattr(args, a)]
    if len(chosen) > 1:
        flags = " and ".join("--" + a.replace("_", "-") for a in chosen)
        raise InvalidInput(f"{flags} contradict each other", "verify")
    data: Dict[str, Any] = {
        "task_id": new_task_id(),
        "ui_home": str(Path(args.ui_home).expanduser().absolute()),
        "nodes": list(args.nodes),
        "jobs": args.jobs,
        "clone_jobs": args.clone_jobs,
        "update": args.update,
        "pip_args": list(args.pip_arg),
        "allow_file_urls": args.allow_file_urls,
        "verify": False
        if args.no_verify
        else ("comfyui" if args.verify_comfyui else ("import" if args.verify_import else True)),
        "verify_timeout": args.verify_timeout,
        "installer": args.installer,
        "restart": args.restart,
        "ready_check": args.ready_check,
        "ready_timeout": args.ready_timeout,
        "ready_classes": _read_classes(args.ready_classes, "ready_classes"),
        "low_priority": args.low_priority,
        "mode": args.mode,
        "forbid_downgrade": list(args.forbid_downgrade),
        "forbid": list(args.forbid),
    }
    if args.expect is not None:
        data["expect"] = json.loads(Path(args.expect).read_text(encoding="utf-8"))
    if args.lock is not None:
        data["lock"] = _read_lock_json(args.lock)
    if args.python:
        data["python"] = args.python
    spec = parse_spec(data)
    out = sys.stdout
    display = terminal.Display(out)
    out.write(f"installing {len(spec.nodes)} node(s) into {spec.ui_home} (task {spec.task_id})\n")
    out.flush()
    final = _run_foreground(state, spec, display.update)
    display.summary(final)
    if final.plan is not None:
        out.write(json.dumps(final.plan, indent=1, sort_keys=True) + "\n")
    if final.skipped:
        out.write("skipped nodes were already there at the asked ref; --update updates them\n")
    if final.ready is not None:
        out.write(f"ComfyUI: {ready_line(final.ready.to_dict())}\n")
    if final.succeeded:
        return ExitCode.OK
    return _exit_code_of(final) or ExitCode.INSTALL_FAILED


def ready_line(ready: Dict[str, Any]) -> str:
    """One line for people: how ComfyUI was restarted and what it has."""
    if ready.get("classes") is None:
        return str(ready.get("note") or "not asked")
    how = ready.get("restarted_by")
    head = f"restarted by {how}" if how else "running"
    if ready.get("service"):
        head += f" ({ready['service']})"
    missing = ready.get("missing") or []
    tail = f"missing {', '.join(missing)}" if missing else "every workflow class present"
    return f"{head}, {ready['classes']} classes, {tail} ({float(ready.get('seconds') or 0):.1f}s)"


def _read_classes(source: Optional[str], where: str = "classes") -> List[str]:
    if source is None:
        return []
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
        data = json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput(f"cannot read the classes: {exc}", field=where) from None
    try:
        return ready_classes(data, where)
    except ProtocolError as exc:
        raise InvalidInput(exc.message, field=exc.field) from None


def cmd_ready(args: argparse.Namespace, state: StateDir) -> int:
    """Ask the home's running ComfyUI which classes it has (and which it lacks); no restart."""
    home = Path(args.ui_home).expanduser()
    if not (home / "main.py").is_file():
        raise InvalidInput(f"{args.ui_home} has no main.py: not a ComfyUI home", "ui_home")
    if not 1 <= args.timeout <= MAX_READY_TIMEOUT:
        raise InvalidInput(f"must be from 1 to {MAX_READY_TIMEOUT:.0f} seconds", "timeout")
    classes = _read_classes(args.classes)
    # Commands it runs are logged to stderr, so stdout stays one JSON object.
    log = TaskLog(sys.stderr)
    try:
        result = restartmod.bring_up(
            home,
            "never",
            classes,
            args.timeout,
            log=log,
            children=procs.Children(),
            log_file=Path(os.devnull),
        )
    except restartmod.NotReady as exc:
        body = exc.result.to_dict()
        body["note"] = str(exc)
        _emit({"ready": body})
        return ExitCode.INSTALL_FAILED
    _emit({"ready": result.to_dict()})
    answered = result.classes is not None and not result.missing
    return ExitCode.OK if answered else ExitCode.INSTALL_FAILED


def cmd_diff(args: argparse.Namespace, state: StateDir) -> int:
    """What differs on this instance from a lock; changes nothing."""
    try:
        locked = Lock.from_dict(_read_lock_json(args.lock), allow_file_urls=True)
    except ProtocolError as exc:
        raise InvalidInput(exc.message, field=exc.field or "lock") from None
    home = Path(args.ui_home).expanduser()
    if not (home / "custom_nodes").is_dir():
        raise InvalidInput(f"{args.ui_home} has no custom_nodes/ directory", "ui_home")
    python, why = requirements.find_interpreter(args.python, home)
    if python is None:
        raise InvalidInput(f"cannot list the packages: {why}", "python")
    actual = inventory.take(home, python)
    body = lockdoc.diff(locked, actual)
    _emit(body)
    return ExitCode.OK if body["equal"] else ExitCode.INSTALL_FAILED


def cmd_worker(args: argparse.Namespace, state: StateDir) -> int:
    paths = state.task(args.task_id)
    spec = parse_spec(_read_spec_text(str(paths.spec)))
    if args.lock_fd is None:
        # Started by hand: take the lock here. Normally it is inherited.
        args.lock_fd = lock.acquire(state.locks, str(Path(spec.ui_home).expanduser()), spec.task_id)
    return run_worker(spec, paths)


def cmd_status(args: argparse.Namespace, state: StateDir) -> int:
    _emit(tasks.status(state.task(args.task_id)).to_dict())
    return ExitCode.OK


def cmd_cancel(args: argparse.Namespace, state: StateDir) -> int:
    _emit(tasks.cancel(state.task(args.task_id)).to_dict())
    return ExitCode.OK


def cmd_list(args: argparse.Namespace, state: StateDir) -> int:
    _emit({"tasks": tasks.list_tasks(state)})
    return ExitCode.OK


def cmd_cleanup(args: argparse.Namespace, state: StateDir) -> int:
    if args.older_than < 0:
        raise InvalidInput("--older-than must not be negative", "older_than", "invalid_argument")
    _emit({"removed": tasks.cleanup(state, args.older_than)})
    return ExitCode.OK


# -- argv -------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as the contract's JSON (exit 2)."""

    def error(self, message: str) -> NoReturn:
        raise InvalidInput(f"{self.prog}: {message}", code="invalid_argument")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="nodeferry-agent",
        description="Install ComfyUI custom nodes.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="state directory (default $NODEFERRY_STATE_DIR or ~/.nodeferry)",
    )
    parser.add_argument("--version", action="store_true", help="print version and bundle hash")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")

    def add(
        name: str, func: Callable[[argparse.Namespace, StateDir], int], **kw: Any
    ) -> argparse.ArgumentParser:
        if "help" in kw:
            kw.setdefault("epilog", EXIT_CODES_HELP)
            kw.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        p = sub.add_parser(name, **kw)
        p.add_argument("--state-dir", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        p.set_defaults(func=func)
        return p

    p = add("start", cmd_start, help="start a detached install; prints task id and pid")
    p.add_argument("--spec", required=True, help="spec JSON file, or - for stdin")
    p = add("run", cmd_run, help="run an install in the foreground; prints the final document")
    p.add_argument("--spec", required=True, help="spec JSON file, or - for stdin")
    for name, func, text in (
        ("status", cmd_status, "print a task's progress document"),
        ("cancel", cmd_cancel, "cancel a task"),
    ):
        p = add(name, func, help=text)
        p.add_argument("--task-id", required=True)
    add("list", cmd_list, help="tasks on this instance, newest first")
    p = add("cleanup", cmd_cleanup, help="remove finished tasks older than SECONDS")
    p.add_argument("--older-than", type=float, required=True, metavar="SECONDS")
    p = add("install", cmd_install, help="install nodes in the foreground with live output")
    p.add_argument("--ui-home", required=True)
    p.add_argument("--python", default=None, help="ComfyUI's interpreter")
    p.add_argument(
        "--jobs",
        type=int,
        default=DEFAULT_JOBS,
        help="CPU-bound steps at a time (default 4); clones use --clone-jobs",
    )
    p.add_argument(
        "--clone-jobs",
        type=int,
        default=DEFAULT_CLONE_JOBS,
        help=f"clones at a time, 1..{MAX_CLONE_JOBS} (default {DEFAULT_CLONE_JOBS})",
    )
    p.add_argument(
        "--update",
        action="store_true",
        help="bring nodes already present up to date (without it they are skipped, "
        "unless another @REF than the one checked out is asked for)",
    )
    p.add_argument(
        "--pip-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="an allowed pip option, e.g. --pip-arg=--no-index (repeatable)",
    )
    p.add_argument("--allow-file-urls", action="store_true", help="allow file:// URLs")
    p.add_argument(
        "--no-verify", action="store_true", help="do not import the nodes to check they load"
    )
    p.add_argument(
        "--verify-comfyui",
        action="store_true",
        help="judge the nodes by ComfyUI's own start (main.py --quick-test-for-ci --cpu) "
        "even where the home does not look like a ComfyUI (the default where it does)",
    )
    p.add_argument(
        "--verify-import",
        action="store_true",
        help="judge each node by a bare import in ComfyUI's interpreter, outside ComfyUI's "
        "start (the default only where the home is no ComfyUI)",
    )
    p.add_argument(
        "--verify-timeout",
        type=float,
        default=DEFAULT_VERIFY_TIMEOUT,
        metavar="SECONDS",
        help=f"per node import (default {DEFAULT_VERIFY_TIMEOUT:g})",
    )
    p.add_argument("--lock", default=None, metavar="FILE", help="reproduce a lock.json (- stdin)")
    p.add_argument(
        "--installer",
        choices=("auto", "uv", "pip"),
        default="auto",
        help="what installs requirements: uv if found or installable (auto), uv or pip",
    )
    p.add_argument(
        "--restart",
        default="never",
        choices=("auto", "never"),
        metavar="[=auto|never]",
        help="after the install, restart ComfyUI the way it runs here "
        "(supervisord, systemd or the plain process) and ask it for its classes",
    )
    p.add_argument(
        "--ready-check",
        action="store_true",
        help="without a restart, ask the running ComfyUI for its classes afterwards",
    )
    p.add_argument(
        "--ready-timeout",
        type=float,
        default=DEFAULT_READY_TIMEOUT,
        metavar="SECONDS",
        help=f"how long a restarted ComfyUI has to answer (default {DEFAULT_READY_TIMEOUT:g})",
    )
    p.add_argument(
        "--ready-classes",
        default=None,
        metavar="FILE",
        help="JSON list of the node classes ComfyUI must have (- for stdin); "
        "a missing one fails the install",
    )
    p.add_argument(
        "--no-low-priority",
        dest="low_priority",
        action="store_false",
        help="run git, pip and install.py at normal priority (default: lowered)",
    )
    p.add_argument(
        "--plan",
        dest="mode",
        action="store_const",
        const="plan",
        default="install",
        help="say what the install would change (printed as JSON at the end); change nothing",
    )
    p.add_argument(
        "--forbid-downgrade",
        action="append",
        default=[],
        metavar="PACKAGE",
        help="refuse (before touching anything) an install that would downgrade PACKAGE",
    )
    p.add_argument(
        "--forbid",
        action="append",
        default=[],
        metavar="PACKAGE",
        help="refuse (before touching anything) an install that would install or change PACKAGE",
    )
    p.add_argument(
        "--expect",
        default=None,
        metavar="FILE",
        help="apply a plan: its 'expect' object (heads, packages, pins, plan_id) as JSON",
    )
    p.add_argument(
        "nodes",
        nargs="*",
        metavar="URL[@REF][#NAME]",
        help="a repository, at REF if given, into custom_nodes/NAME if given (none with --lock)",
    )
    p = add("diff", cmd_diff, help="what differs on this instance from a lock (changes nothing)")
    p.add_argument("--ui-home", required=True)
    p.add_argument("--python", default=None, help="ComfyUI's interpreter")
    p.add_argument("--lock", required=True, metavar="FILE", help="lock JSON file, or - for stdin")
    p = add(
        "ready",
        cmd_ready,
        help="ask the home's running ComfyUI which node classes it has (changes nothing)",
    )
    p.add_argument("--ui-home", required=True)
    p.add_argument(
        "--classes", default=None, metavar="FILE", help="JSON list of class names, or - for stdin"
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_READY_TIMEOUT,
        metavar="SECONDS",
        help="how long to wait for it to answer",
    )
    # Internal (started by start/run): no help, so --help does not list it.
    p = add("worker", cmd_worker)
    p.add_argument("--task-id", required=True)
    p.add_argument("--lock-fd", type=int, default=None)
    return parser


def _require_command(args: argparse.Namespace) -> None:
    if args.command is None:
        raise InvalidInput("a subcommand is required (see --help)", code="invalid_argument")


def bare_option(argv: List[str], option: str, value: str) -> List[str]:
    """``--restart`` alone means ``--restart=auto``: an optional value would swallow the
    node URL that follows it, so the value is only ever given with ``=``."""
    return [f"{option}={value}" if arg == option else arg for arg in argv]


def main(argv: Optional[List[str]] = None) -> int:
    human = False
    try:
        argv = bare_option(list(sys.argv[1:] if argv is None else argv), "--restart", "auto")
        args = build_parser().parse_args(argv)
        human = args.command == "install"
        if args.version:
            bundle = launch.running_bundle()
            sys.stdout.write(f"nodeferry-agent {__version__} sha256:{bundle.sha256}\n")
            return ExitCode.OK
        _require_command(args)
        state = StateDir(args.state_dir)
        return int(args.func(args, state))
    except AgentError as exc:
        if human:
            field = exc.body().get("field")
            text = f"{field}: {exc.message}" if field else exc.message
            sys.stderr.write(f"error: {count_nodes_from_one(text)}\n")
        else:
            _emit(exc.body())
        return int(exc.exit_code)
    except KeyboardInterrupt:
        return int(ExitCode.CANCELLED)
    except Exception as exc:
        body = {"error": "internal", "message": f"{type(exc).__name__}: {exc}"}
        if human:
            sys.stderr.write(f"internal error: {body['message']}\n")
        else:
            _emit(body)
        return int(ExitCode.INTERNAL)


if __name__ == "__main__":
    sys.exit(main())
