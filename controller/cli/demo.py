"""``nodeferry demo``: the whole thing on one machine, with nothing to set up.

Builds a sandbox (a ComfyUI-like folder with its own venv, a local wheelhouse, a
``git daemon`` on 127.0.0.1 serving sample nodes), starts the controller in this
process with the ``local`` transport, installs the sample nodes with the live
display, then keeps serving the dashboard until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.text import Text

from controller.cli import console as commands
from controller.cli.server import dashboard_line
from controller.client import AsyncClient
from controller.common.config import Settings, load_settings
from controller.sandbox import playground as sandboxes
from controller.sandbox.errors import SandboxError
from controller.sandbox.gitserver import free_port
from protocol import ExitCode


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="try nodeferry on this machine: sandbox ComfyUI, local git server, live install",
        description="Build a sandbox ComfyUI folder and a local git server with sample nodes, "
        "start the controller with the local transport, install the nodes with the live "
        "display and serve the dashboard until Ctrl-C. Needs git; no network.",
    )
    demo.add_argument(
        "--dir",
        type=Path,
        help="build the sandbox here and keep it (default: a temporary directory, removed "
        "at the end)",
    )
    demo.add_argument(
        "--port",
        type=int,
        default=8765,
        help="dashboard port on 127.0.0.1 (default 8765; a free one if that is taken)",
    )
    demo.add_argument(
        "--exit",
        "--no-serve",
        dest="serve",
        action="store_false",
        help="exit after the install instead of serving the dashboard",
    )
    demo.set_defaults(func=demo_command)


def demo_settings(sandbox: sandboxes.Sandbox) -> Settings:
    """Settings for the sandbox alone: no environment or user config leaks in."""
    return load_settings(
        environ={},
        overrides={
            "host": "127.0.0.1",
            "data_dir": sandbox.data_dir,
            "local_state_dir": sandbox.state_dir,
            "refresh_interval": 0.25,
            # The demo installs into its sandbox on this machine.
            "allow_local": True,
        },
    )


def _isolate_pip() -> None:
    # The sandbox resolves requirements from its own wheelhouse only; a
    # machine-wide pip config (extra indexes, constraints) must not leak into
    # the agent, which inherits this environment through the local transport.
    os.environ["PIP_CONFIG_FILE"] = os.devnull
    for name in list(os.environ):
        if name.startswith("PIP_") and name != "PIP_CONFIG_FILE":
            del os.environ[name]


def demo_installer(sandbox: sandboxes.Sandbox, uv: str | None) -> tuple[str, str]:
    """What installs the sandbox's requirements, and the line that tells the person.

    The demo is offline, so the agent cannot fetch uv the way it does on an
    instance; uv from this machine (``uv`` on PATH, or beside this Python, as
    ``pip install nodeferry[test]`` puts it) goes into the sandbox's tools folder,
    where the agent looks first. Without one, pip installs, and that is no fault
    worth a warning: the demo says so once, as information."""
    if uv is None:
        return "pip", "installer: pip (this machine has no uv, and the demo stays offline)"
    shipped = sandbox.state_dir / "tools" / "uv" / "bin" / "uv"
    shipped.parent.mkdir(parents=True, exist_ok=True)
    shipped.unlink(missing_ok=True)
    shipped.symlink_to(uv)
    return "uv", f"installer: uv ({uv})"


def find_uv() -> str | None:
    """uv on PATH, else next to this interpreter (a venv not activated)."""
    beside = Path(sys.executable).parent / "uv"
    if beside.is_file() and os.access(beside, os.X_OK):
        found: str | None = str(beside)
    else:
        found = shutil.which("uv")
    return found


def _port_or_free(port: int) -> int:
    import socket

    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return free_port()
    return port


async def _serve_until_interrupted() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await stop.wait()
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        loop.remove_signal_handler(signal.SIGTERM)


def _check_imports(sandbox: sandboxes.Sandbox) -> list[str]:
    """The wheelhouse modules ComfyUI's own interpreter can now import."""
    found = []
    for wheel in sandboxes.WHEELS:
        result = subprocess.run(
            [str(sandbox.python), "-c", f"import {wheel.module}"],
            capture_output=True,
            check=False,
        )
        if result.returncode == 0:
            found.append(wheel.module)
    return found


async def run_demo(
    sandbox: sandboxes.Sandbox, git_url: str, port: int, serve: bool, out: Console
) -> int:
    settings = demo_settings(sandbox)
    async with commands.in_process_controller(settings, port) as url:
        out.print(f"controller on {url} (local transport)", style="dim")
        installer, about = demo_installer(sandbox, find_uv())
        out.print(about, style="dim")
        async with AsyncClient(url, token=settings.token) as client:
            task_id = await client.start(
                "local",
                str(sandbox.ui_home),
                sandbox.node_refs(git_url),
                python=str(sandbox.python),
                pip_args=sandbox.pip_args,
                installer=installer,
            )
            out.print(f"task {task_id}", style="dim")
            status = await commands.follow_and_report(
                client,
                task_id,
                title=f"local {sandbox.ui_home}",
                as_json=False,
                timeout=None,
                on_interrupt="ask",
            )
        if status == commands.EXIT_DETACHED:
            return status  # Ctrl-C during the install: the person wants out
        installed = sorted(
            p.name
            for p in (sandbox.ui_home / "custom_nodes").iterdir()
            if not p.name.startswith(".")
        )
        out.print(f"custom_nodes/: {', '.join(installed) or '(empty)'}")
        importable = await asyncio.get_running_loop().run_in_executor(None, _check_imports, sandbox)
        out.print(f"ComfyUI's venv imports: {', '.join(importable) or '(nothing)'}")
        if serve:  # with --exit nothing would serve the address: don't print it
            line = dashboard_line(f"{url}/", settings.token or "", settings.data_dir, sys.stdout)
            label, _, address = line.partition(" ")
            out.print(
                Text.assemble((f"{label} ", "bold"), (address, "bold cyan")),
                soft_wrap=True,  # one line, so the address can be copied whole
            )
            out.print("serving the dashboard; press Ctrl-C to stop", style="dim")
            await _serve_until_interrupted()
        return status


def demo_command(args: argparse.Namespace) -> int:
    out = Console(highlight=False)
    if shutil.which("git") is None:
        out.print(Text("error: the demo needs git (apt-get install git)", style="red"))
        return ExitCode.INVALID
    temporary = args.dir is None
    root = Path(tempfile.mkdtemp(prefix="nodeferry-demo-")) if temporary else args.dir
    try:
        with out.status("building the sandbox: ComfyUI folder, venv, wheelhouse, sample nodes…"):
            sandbox = sandboxes.build(root)
        out.print(f"sandbox in {sandbox.root}", style="dim")
        _isolate_pip()
        port = _port_or_free(args.port)
        with sandboxes.git_daemon(sandbox.repos) as git_url:
            out.print(
                f"git daemon serving {len(sandbox.nodes)} sample nodes at {git_url}", style="dim"
            )
            return asyncio.run(run_demo(sandbox, git_url, port, args.serve, out))
    except SandboxError as exc:
        out.print(Text(f"error: {exc}", style="red"))
        return ExitCode.INTERNAL
    except KeyboardInterrupt:
        return commands.EXIT_DETACHED
    finally:
        if temporary:
            shutil.rmtree(root, ignore_errors=True)
