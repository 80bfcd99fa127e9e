"""The client-side commands: ``install``, ``status``, ``cancel``, ``logs``, ``tasks``.

Every command talks HTTP to a controller through :class:`controller.client.AsyncClient`.
With ``--controller URL`` (or ``NODEFERRY_CONTROLLER``) that is a running
``nodeferry serve``. Without one, the command starts a controller *in this
process* on a free loopback port, with the same settings ``nodeferry serve``
would read (``NODEFERRY_*``, data dir, keys), and talks to it the same way. One
code path and one display serve both cases, and the in-process controller keeps
its task registry in the usual data dir, so ``nodeferry status TASK`` finds a
task that an earlier ``nodeferry install`` started (the agent on the instance
keeps running between the two).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from controller.cli import display, fleet_view
from controller.cli.exits import EXIT_CODES_HELP
from controller.cli.install_flags import add_install_flags, install_options
from controller.cli.lockfile import read_lock_file
from controller.client import (
    AsyncClient,
    BadRequest,
    ClientError,
    Conflict,
    ControllerUnreachable,
    Document,
    TaskNotFound,
    Unauthorized,
    WaitTimeout,
    is_final,
)
from controller.common.config import Settings, load_settings
from controller.common.errors import ConfigError
from controller.core.sources.registry_ids import is_registry_id
from protocol import ExitCode, ProtocolError, parse_node
from protocol.errors import count_nodes_from_one

#: ``install`` was detached from a running install (Ctrl-C, then "detach").
EXIT_DETACHED = 130
#: ``install --timeout`` ran out before the install finished.
EXIT_TIMEOUT = 124


# -- argument parsing ----------------------------------------------------------


def _add_connection_options(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXIT_CODES_HELP
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--controller",
        metavar="URL",
        default=os.environ.get("NODEFERRY_CONTROLLER") or None,
        help="a running controller (env NODEFERRY_CONTROLLER); without it a controller "
        "runs inside this command, with the settings `nodeferry serve` would use",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("NODEFERRY_TOKEN") or None,
        help="the controller's API token (env NODEFERRY_TOKEN)",
    )
    parser.add_argument(
        "--config", metavar="FILE", help="settings file for the in-process controller"
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show the controller's and libraries' logs (SSH handshakes, retries) on stderr",
    )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    install = subparsers.add_parser(
        "install",
        help="install custom nodes on an instance and watch it live",
        description="Install ComfyUI custom nodes on an instance with a live display. "
        "Ctrl-C asks whether to cancel the install or detach from it. Exit status 0 only "
        "when every node installed.",
    )
    _add_connection_options(install)
    install.add_argument(
        "--ssh",
        dest="ssh_connection",
        action="append",
        default=None,
        metavar="TARGET",
        help="'root@host -p 22', 'root@host:22', the ssh command VastAI shows, or 'local' "
        "for the controller's own machine (default: local; needs the allow_local setting, "
        "e.g. NODEFERRY_ALLOW_LOCAL=1); repeat it to install on many instances at once "
        "(one fleet, one live view)",
    )
    # Every option of the install, from its one declaration (InstallRequest).
    add_install_flags(install)
    install.add_argument(
        "--nodes-file",
        type=Path,
        help="a file with one URL[@REF][#NAME] per line (' #' starts a comment)",
    )
    install.add_argument(
        "nodes",
        nargs="*",
        metavar="NODE",
        help="URL[@REF][#NAME]: a repository, at REF, into custom_nodes/NAME",
    )
    install.add_argument(
        "--workflow",
        type=Path,
        metavar="FILE",
        help="install what a ComfyUI workflow needs (JSON in either format, or a PNG "
        "ComfyUI saved)",
    )
    install.add_argument(
        "--snapshot", type=Path, metavar="FILE", help="a ComfyUI-Manager snapshot (JSON or YAML)"
    )
    install.add_argument(
        "--lock",
        dest="lock_file",
        metavar="FILE",
        help="reproduce a lock (from `nodeferry lock`; - for stdin): its nodes at its "
        "commits, its package versions; instead of NODEs",
    )
    install.add_argument(
        "--plan",
        dest="plan_ref",
        metavar="PLAN",
        help="apply a plan (from `nodeferry plan`): its task id, or the file its --json "
        "wrote; exactly its commits and package versions, refused if the instance changed "
        "since; instead of NODEs",
    )
    install.add_argument(
        "--json", action="store_true", help="print the final progress document instead"
    )
    install.add_argument(
        "--timeout", type=float, help="give up waiting after this many seconds (exit 124)"
    )
    install.add_argument(
        "--on-interrupt",
        choices=("ask", "cancel", "detach"),
        default="ask",
        help="what Ctrl-C does (default: ask; 'detach' when stdin is not a terminal)",
    )
    install.set_defaults(func=install_command)

    ready = subparsers.add_parser(
        "ready",
        help="can a workflow run on an instance's running ComfyUI? (changes nothing)",
        description="Ask the instance's running ComfyUI (/object_info, read on the instance) "
        "which node classes it has; exit 0 when it answers and lacks none of the workflow's.",
    )
    _add_connection_options(ready)
    ready.add_argument("--ssh", dest="ssh_connection", default="local", metavar="TARGET")
    ready.add_argument("--ui-home", required=True, help="the ComfyUI folder on the instance")
    ready.add_argument("--workflow", type=Path, metavar="FILE", help="JSON or a PNG ComfyUI saved")
    ready.add_argument(
        "--wait", type=float, default=None, metavar="SECONDS", help="for one still starting"
    )
    ready.add_argument("--json", action="store_true", help="print the answer as JSON")
    ready.set_defaults(func=ready_command)

    status = subparsers.add_parser("status", help="show a task's progress")
    _add_connection_options(status)
    status.add_argument("task_id", metavar="TASK")
    status.add_argument("-f", "--follow", action="store_true", help="follow it live until done")
    status.add_argument("--json", action="store_true", help="print the progress document")
    status.set_defaults(func=status_command)

    cancel = subparsers.add_parser("cancel", help="cancel a running install")
    _add_connection_options(cancel)
    cancel.add_argument("task_id", metavar="TASK")
    cancel.add_argument("--json", action="store_true", help="print the final document")
    cancel.set_defaults(func=cancel_command)

    logs = subparsers.add_parser("logs", help="print a task's agent log")
    _add_connection_options(logs)
    logs.add_argument("task_id", metavar="TASK")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing as it grows")
    logs.add_argument("--offset", type=int, default=0, help="start at this byte offset")
    logs.set_defaults(func=logs_command)

    tasks = subparsers.add_parser("tasks", help="list the tasks the controller knows")
    _add_connection_options(tasks)
    tasks.add_argument("--json", action="store_true", help="print them as JSON")
    tasks.set_defaults(func=tasks_command)


# -- the controller connection -------------------------------------------------


@contextlib.asynccontextmanager
async def in_process_controller(settings: Settings, port: int = 0) -> AsyncIterator[str]:
    """Serve ``create_app(settings)`` in this process on loopback (``port`` 0: a free one).

    Yields its URL.
    """
    from aiohttp import web

    from controller.api.app import create_app

    runner = web.AppRunner(create_app(settings), handle_signals=False, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def in_process_settings(config_file: str | None) -> Settings:
    """What ``nodeferry serve`` would use, but listening on loopback only."""
    return load_settings(
        Path(config_file).expanduser() if config_file else None, overrides={"host": "127.0.0.1"}
    )


@contextlib.asynccontextmanager
async def connect(args: argparse.Namespace) -> AsyncIterator[AsyncClient]:
    if args.controller:
        async with AsyncClient(args.controller, token=args.token) as client:
            yield client
        return
    settings = in_process_settings(getattr(args, "config", None))
    async with (
        in_process_controller(settings) as url,
        AsyncClient(url, token=settings.token) as client,
    ):
        yield client


def run(args: argparse.Namespace, command: Callable[..., Any]) -> int:
    """Run an async command, turning client errors into a message and an exit status."""
    # soft_wrap: an error stays one line (for grep and logs); the terminal wraps it.
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        result: int = asyncio.run(command(args))
    except (BadRequest, ProtocolError) as exc:
        err.print(Text(f"error: {_message(exc)}", style="red"))
        return ExitCode.INVALID
    except AmbiguousTask as exc:
        err.print(Text(f"error: {exc.prefix} names {len(exc.matches)} tasks:", style="red"))
        for task in exc.matches:
            task_id, target, ui_home, state, _nodes = task_row(task)
            err.print(f"  {task_id}  {target} {ui_home}  {state}", markup=False)
        err.print("give more of the id")
        return ExitCode.INVALID
    except Conflict as exc:
        err.print(Text(f"error: {exc.message}", style="red"))
        if exc.task_id:
            err.print(f"follow it with: nodeferry status -f {exc.task_id}")
        return ExitCode.CONFLICT
    except TaskNotFound as exc:
        err.print(Text(f"error: {exc.message}", style="red"))
        return ExitCode.UNKNOWN_TASK
    except Unauthorized as exc:
        err.print(
            Text(
                f"error: {exc.message} (set --token or NODEFERRY_TOKEN; `nodeferry token` "
                "prints it on the controller's machine)",
                style="red",
            )
        )
        return ExitCode.INVALID
    except ControllerUnreachable as exc:
        err.print(Text(f"error: {exc}", style="red"))
        return ExitCode.INTERNAL
    except ClientError as exc:
        err.print(Text(f"error: {exc}", style="red"))
        return ExitCode.INTERNAL
    except ConfigError as exc:
        err.print(Text(f"error: {exc.message}", style="red"))
        return ExitCode.INVALID
    except KeyboardInterrupt:
        return EXIT_DETACHED
    return result


def _message(exc: Exception) -> str:
    # The API names fields from 0 (nodes.0); the command line counts NODE 1, 2, …
    return count_nodes_from_one(exc.message if isinstance(exc, BadRequest) else str(exc))


class AmbiguousTask(Exception):
    """A short task id that more than one task starts with."""

    def __init__(self, prefix: str, matches: list[Document]) -> None:
        super().__init__(prefix)
        self.prefix = prefix
        self.matches = matches


#: The shortest task id prefix accepted, like git's short commit ids.
MIN_PREFIX = 6
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_PREFIX = re.compile(r"[0-9a-f][0-9a-f-]*")


async def resolve_task(client: AsyncClient, text: str) -> str:
    """The full id of the task ``text`` names: a whole id, or a unique start of one."""
    given = text.strip().lower()
    if _UUID.fullmatch(given):
        return given
    if not _PREFIX.fullmatch(given) or len(given.replace("-", "")) < MIN_PREFIX:
        raise ProtocolError(
            "TASK",
            f"{text!r} is not a task id: give the id or its first {MIN_PREFIX} or more "
            "hex digits (`nodeferry tasks` lists them)",
        )
    matches = await client.tasks(prefix=given)
    if not matches:
        raise TaskNotFound(404, "unknown_task", f"no task id starts with {given}")
    if len(matches) > 1:
        raise AmbiguousTask(given, matches)
    return str(matches[0]["task_id"])


def exit_status(doc: Document) -> int:
    """0 only for a completed install without a failed node."""
    state = doc.get("state")
    if state == "completed" and doc.get("success") and not doc.get("failed"):
        return ExitCode.OK
    if state == "cancelled":
        return ExitCode.CANCELLED
    return ExitCode.INSTALL_FAILED


# -- nodes ---------------------------------------------------------------------


def read_nodes_file(path: Path) -> list[str]:
    """``URL[@REF]`` lines; blank lines and ``#`` comments (whole-line or trailing) skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProtocolError("--nodes-file", f"cannot read {path}: {exc.strerror}") from None
    nodes = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        if not is_registry_id(line):
            parse_node(line, f"{path}:{number}")
        nodes.append(line)
    return nodes


def collect_nodes(args: argparse.Namespace) -> list[str]:
    nodes: list[str] = []
    if args.nodes_file is not None:
        nodes.extend(read_nodes_file(args.nodes_file))
    for index, node in enumerate(args.nodes):
        if not is_registry_id(node):
            parse_node(node, f"NODE {index + 1}")
        nodes.append(node)
    if not nodes:
        raise ProtocolError("NODE", "name at least one node (arguments or --nodes-file)")
    return nodes


# -- following a task live -----------------------------------------------------


class Follower:
    """Follows one task to its end with the live display, handling Ctrl-C.

    Ctrl-C pauses the display and asks whether to cancel the install on the
    instance or to detach and leave it running (a second Ctrl-C detaches).
    """

    def __init__(
        self,
        client: AsyncClient,
        task_id: str,
        *,
        title: str = "",
        on_interrupt: str = "ask",
        console: Console | None = None,
        poll_interval: float = 2.0,
    ) -> None:
        self.client = client
        self.task_id = task_id
        self.title = title
        self.console = console or Console(highlight=False)
        self.on_interrupt = on_interrupt
        if on_interrupt == "ask" and not sys.stdin.isatty():
            self.on_interrupt = "detach"
        self.poll_interval = poll_interval
        self.last: Document | None = None
        self.detached = False
        self._interrupts: asyncio.Queue[None] = asyncio.Queue()
        self._live: Live | None = None
        self._changes = display.ChangeLog()

    async def _show(self, doc: Document) -> None:
        self.last = doc
        if self._live is not None:
            self._live.update(display.render(doc, title=self.title))
        elif not self.console.is_terminal:
            for line in self._changes.lines(doc):
                self.console.print(line, markup=False)

    async def run(self, timeout: float | None = None) -> Document | None:
        """The final document, or None when the user detached."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, self._interrupts.put_nowait, None)
        try:
            return await self._run(timeout)
        finally:
            loop.remove_signal_handler(signal.SIGINT)

    def _start_live(self) -> None:
        if self.console.is_terminal:
            initial = display.render(self.last or {"task_id": self.task_id}, title=self.title)
            self._live = Live(initial, console=self.console, refresh_per_second=4, transient=False)
            self._live.start()

    def _stop_live(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    async def _run(self, timeout: float | None) -> Document | None:
        self._start_live()
        waiter = asyncio.ensure_future(
            self.client.wait(
                self.task_id,
                on_progress=self._show,
                timeout=timeout,
                poll_interval=self.poll_interval,
            )
        )
        try:
            while True:
                interrupted = asyncio.ensure_future(self._interrupts.get())
                racing: set[asyncio.Future[Any]] = {waiter, interrupted}
                await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
                if waiter.done():
                    interrupted.cancel()
                    final = waiter.result()
                    await self._show(final)
                    return final
                self._stop_live()
                choice = await self._ask()
                if choice == "detach":
                    self.detached = True
                    waiter.cancel()
                    return None
                self.console.print("cancelling the install…")
                await self.client.cancel(self.task_id)
                self._start_live()
        finally:
            self._stop_live()
            if not waiter.done():
                waiter.cancel()
                with contextlib.suppress(asyncio.CancelledError, ClientError):
                    await waiter

    async def _ask(self) -> str:
        if self.on_interrupt != "ask":
            return self.on_interrupt
        prompt = Text.assemble(
            ("\nInterrupted. ", "bold"),
            "[c]ancel the install on the instance, or [d]etach and leave it running? [c/d] (d): ",
        )
        self.console.print(prompt, end="")
        answer = await _read_line(sys.stdin, self._interrupts)
        self.console.print()
        return "cancel" if answer.strip().lower() in ("c", "cancel") else "detach"


async def _read_line(stream: TextIO, interrupts: asyncio.Queue[None]) -> str:
    """One line from a terminal without blocking the loop; '' on EOF or another Ctrl-C."""
    loop = asyncio.get_running_loop()
    line: asyncio.Future[str] = loop.create_future()

    def readable() -> None:
        if not line.done():
            line.set_result(stream.readline())

    fd = stream.fileno()
    loop.add_reader(fd, readable)
    interrupted = asyncio.ensure_future(interrupts.get())
    try:
        pending: set[asyncio.Future[Any]] = {line, interrupted}
        await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    finally:
        loop.remove_reader(fd)
        interrupted.cancel()
    return line.result() if line.done() else ""


def print_detached(console: Console, task_id: str) -> None:
    console.print(
        f"detached; the install keeps running. Follow it with: nodeferry status -f {task_id}",
        highlight=False,
    )


async def follow_and_report(
    client: AsyncClient,
    task_id: str,
    *,
    title: str,
    as_json: bool,
    timeout: float | None,
    on_interrupt: str,
) -> int:
    """Follow a task to its end (live, or silently for ``--json``); the exit status."""
    console = Console(highlight=False)
    if as_json:
        try:
            final = await client.wait(task_id, timeout=timeout)
        except WaitTimeout as exc:
            print(json.dumps(exc.last, indent=2, sort_keys=True))
            return EXIT_TIMEOUT
        print(json.dumps(final, indent=2, sort_keys=True))
        return exit_status(final)
    follower = Follower(client, task_id, title=title, on_interrupt=on_interrupt, console=console)
    try:
        final_doc = await follower.run(timeout)
    except WaitTimeout as exc:
        console.print(Text(f"✗ {exc}", style="bold red"))
        return EXIT_TIMEOUT
    if final_doc is None:
        print_detached(console, task_id)
        return EXIT_DETACHED
    # Without a terminal the change lines already showed every node: the summary
    # closes them (a final table would repeat each line).
    console.print(display.summary(final_doc))
    return exit_status(final_doc)


# -- the commands --------------------------------------------------------------


async def task_title(client: AsyncClient, task_id: str) -> str:
    """``user@host:port /ui/home`` as the controller parsed the target, for the header."""
    listed = await client.tasks(prefix=task_id)
    if not listed:
        return ""
    task = listed[0]
    return f"{task.get('target') or ''} {task.get('ui_home') or ''}".strip()


async def _install(args: argparse.Namespace) -> int:
    from controller.cli.resolve import read_snapshot_file, read_workflow_file

    workflow = read_workflow_file(args.workflow) if args.workflow else None
    snapshot = read_snapshot_file(args.snapshot) if args.snapshot else None
    lock = None
    nodes: list[str] | None
    if getattr(args, "lock_file", None) is not None:
        if args.nodes or args.nodes_file is not None or workflow or snapshot:
            raise ProtocolError(
                "--lock",
                "the lock names the nodes: give NODEs or --lock, not both",
            )
        lock = read_lock_file(args.lock_file, "--lock")
        nodes = None
    elif getattr(args, "plan_ref", None) is not None:
        if args.nodes or args.nodes_file is not None or workflow or snapshot:
            raise ProtocolError(
                "--plan", "the plan names the nodes: give NODEs or --plan, not both"
            )
        nodes = None
    else:
        # Nothing named at all: the controller installs its default_nodes (or says how).
        named = args.nodes or args.nodes_file is not None
        nodes = collect_nodes(args) if named else None
    targets = args.ssh_connection or ["local"]
    # One set of options for one instance and for many: what the person gave.
    options = install_options(args)
    options.update(
        {
            name: value
            for name, value in (
                ("workflow", workflow),
                ("snapshot", snapshot),
                ("lock", lock),
                ("plan", read_plan_ref(getattr(args, "plan_ref", None))),
            )
            if value is not None
        }
    )
    if len(targets) > 1:
        async with connect(args) as client:
            return await fleet_view.install(args, client, targets, nodes, options)
    args.ssh_connection = targets[0]
    async with connect(args) as client:
        task_id = await client.start(args.ssh_connection, nodes=nodes, **options)
        if not args.json:
            Console(highlight=False).print(f"task {task_id}", style="dim")
        return await follow_and_report(
            client,
            task_id,
            title=await task_title(client, task_id),
            as_json=args.json,
            timeout=args.timeout,
            on_interrupt=args.on_interrupt,
        )


def read_plan_ref(text: str | None) -> str | dict[str, Any] | None:
    """``--plan``: a task id (or a unique prefix is not enough: a plan is named whole), or
    the file ``nodeferry plan --json`` wrote."""
    if text is None:
        return None
    path = Path(text)
    if not path.is_file():
        return text  # a task id; the controller checks it
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError("--plan", f"cannot read the plan {text}: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError("--plan", f"{text} is not a plan's JSON document")
    return data


def install_command(args: argparse.Namespace) -> int:
    return run(args, _install)


async def _ready(args: argparse.Namespace) -> int:
    from controller.cli.resolve import read_workflow_file

    workflow = read_workflow_file(args.workflow) if args.workflow else None
    async with connect(args) as client:
        body = await client.ready(args.ssh_connection, args.ui_home, workflow, timeout=args.wait)
    if args.json:
        print(json.dumps(body, indent=1, sort_keys=True))
    else:
        Console(highlight=False).print(display.ready_text(body.get("ready") or {}))
    return ExitCode.OK if body.get("can_run") else ExitCode.INSTALL_FAILED


def ready_command(args: argparse.Namespace) -> int:
    return run(args, _ready)


async def _status(args: argparse.Namespace) -> int:
    async with connect(args) as client:
        args.task_id = await resolve_task(client, args.task_id)
        if args.follow:
            return await follow_and_report(
                client,
                args.task_id,
                title=await task_title(client, args.task_id),
                as_json=args.json,
                timeout=None,
                on_interrupt="detach",
            )
        doc = await client.progress(args.task_id, allow_stale=True)
        if args.json:
            print(json.dumps(doc, indent=2, sort_keys=True))
        else:
            console = Console(highlight=False)
            title = await task_title(client, args.task_id)
            console.print(display.render(doc, title=title))
            if is_final(doc):
                console.print(display.summary(doc))
        return exit_status(doc) if is_final(doc) else ExitCode.OK


def status_command(args: argparse.Namespace) -> int:
    return run(args, _status)


async def _cancel(args: argparse.Namespace) -> int:
    async with connect(args) as client:
        args.task_id = await resolve_task(client, args.task_id)
        doc = await client.cancel(args.task_id)
        if args.json:
            print(json.dumps(doc, indent=2, sort_keys=True))
        else:
            Console(highlight=False).print(display.summary(doc))
        return ExitCode.OK


def cancel_command(args: argparse.Namespace) -> int:
    return run(args, _cancel)


async def _logs(args: argparse.Namespace) -> int:
    out = sys.stdout
    async with connect(args) as client:
        args.task_id = await resolve_task(client, args.task_id)
        if args.offset == 0:
            first = await client.logs(args.task_id, 0)
            for note in first.notes:
                out.write(f"nodeferry: {note}\n")
        if args.follow:
            async for chunk in client.follow_logs(args.task_id, args.offset, poll_interval=0.5):
                out.write(chunk.data)
                out.flush()
            return ExitCode.OK
        offset = args.offset
        while True:
            chunk = await client.logs(args.task_id, offset)
            out.write(chunk.data)
            offset = chunk.next_offset
            if chunk.eof or not chunk.data:
                break
        out.flush()
        return ExitCode.OK


def logs_command(args: argparse.Namespace) -> int:
    return run(args, _logs)


def task_row(task: Document) -> tuple[str, str, str, str, str]:
    """(id, target, ui_home, state, progress) for one entry of ``GET /api/tasks``."""
    nested = task.get("progress")
    progress: Document = nested if isinstance(nested, dict) else task
    total = progress.get("total_nodes") or 0
    done = progress.get("processed") or 0
    target = task.get("target") or task.get("ssh_connection") or ""
    if isinstance(target, dict):
        target = target.get("display") or target.get("host") or json.dumps(target)
    return (
        str(task.get("task_id", "")),
        str(target),
        str(task.get("ui_home") or progress.get("ui_home") or ""),
        str(progress.get("state") or task.get("state") or ""),
        f"{done}/{total}" if total else "",
    )


async def _tasks(args: argparse.Namespace) -> int:
    async with connect(args) as client:
        tasks = await client.tasks()
    if args.json:
        print(json.dumps(tasks, indent=2, sort_keys=True))
        return ExitCode.OK
    console = Console(highlight=False)
    if not tasks:
        console.print("no tasks")
        return ExitCode.OK
    # Short ids (every command takes them) leave the width to target and ui_home,
    # which wrap rather than shrink to "ui_h…" on an 80-column terminal.
    table = Table(box=None, header_style="bold dim")
    table.add_column("task", no_wrap=True)
    table.add_column("target", overflow="fold")
    table.add_column("ui_home", overflow="fold")
    table.add_column("state", no_wrap=True)
    table.add_column("nodes", no_wrap=True)
    for task in tasks:
        task_id, target, ui_home, state, nodes = task_row(task)
        table.add_row(task_id[:8], target, ui_home, display.status_text(state), nodes)
    console.print(table)
    return ExitCode.OK


def tasks_command(args: argparse.Namespace) -> int:
    return run(args, _tasks)
