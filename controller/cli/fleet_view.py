"""``nodeferry install --ssh A --ssh B …``: one node set on many instances through
``POST /api/fleet``, followed in one live view (a row per instance) until every
instance is done. Exit status 0 only when every instance installed every node."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from controller.cli import display
from controller.client import AsyncClient, Document
from protocol import ExitCode

#: Seconds between reads of the fleet's aggregate (each read is served from the
#: controller's shared cache, whatever the fleet's size).
POLL_INTERVAL = 1.0


def render(doc: Document) -> Group:
    """The fleet's counts, then one row per instance."""
    head = Text.assemble(
        ("fleet ", "bold"),
        (str(doc.get("fleet_id", "")), "dim"),
        f"  {doc.get('instances', 0)} instances · ",
        (f"{doc.get('running', 0)} running", "magenta"),
        " · ",
        (f"{doc.get('completed', 0)} completed", "green"),
        " · ",
        (f"{doc.get('failed', 0)} failed", "red"),
    )
    table = Table(box=None, header_style="bold dim", pad_edge=False)
    for column in ("target", "ui_home", "state", "nodes", "error"):
        table.add_column(column, no_wrap=column != "error", overflow="fold")
    for instance in doc.get("per_instance") or []:
        total = instance.get("total_nodes")
        nodes = f"{instance.get('processed', 0)}/{total}" if total else ""
        if instance.get("failed"):
            nodes += f" ({instance['failed']} failed)"
        table.add_row(
            str(instance.get("target", "")),
            str(instance.get("ui_home", "")),
            display.status_text(instance.get("state")),
            nodes,
            display.short_error(instance.get("error")) if instance.get("error") else "",
        )
    return Group(head, table)


def exit_status(doc: Document) -> int:
    if doc.get("all_succeeded"):
        return ExitCode.OK
    if doc.get("state") == "cancelled":
        return ExitCode.CANCELLED
    return ExitCode.INSTALL_FAILED


async def follow(
    client: AsyncClient,
    fleet_id: str,
    *,
    as_json: bool,
    timeout: float | None,
    on_interrupt: str,
) -> int:
    """Follow a fleet to its end; Ctrl-C cancels it (``--on-interrupt cancel``) or
    detaches (the default here: asking fifty times would help nobody)."""
    console = Console(highlight=False)
    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, interrupted.set)
    live: Live | None = None
    seen: dict[str, str] = {}
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            doc = await client.fleet(fleet_id)
            if not as_json:
                if console.is_terminal:
                    if live is None:
                        live = Live(render(doc), console=console, refresh_per_second=4)
                        live.start()
                    else:
                        live.update(render(doc))
                else:
                    _print_changes(console, doc, seen)
            if doc.get("running") == 0:
                break
            if interrupted.is_set():
                interrupted.clear()
                if on_interrupt != "cancel":
                    if live is not None:
                        live.stop()
                    console.print(
                        f"detached; the installs keep running. Cancel them all with "
                        f"POST /api/fleet/{fleet_id}/cancel"
                    )
                    return 130  # console.EXIT_DETACHED (console imports this module)
                console.print("cancelling every install of the fleet…")
                await client.cancel_fleet(fleet_id)
                continue
            if deadline is not None and time.monotonic() > deadline:
                if as_json:
                    print(json.dumps(doc, indent=2, sort_keys=True))
                console.print(Text(f"✗ the fleet did not finish in {timeout} s", style="red"))
                return 124  # console.EXIT_TIMEOUT
            # Wake early on Ctrl-C.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(interrupted.wait(), POLL_INTERVAL)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        if live is not None:
            live.stop()
    if as_json:
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        if not console.is_terminal:
            console.print(render(doc))
        summary = (
            f"{doc['completed']} of {doc['instances']} instances installed every node"
            + (f"; {doc['failed']} failed" if doc.get("failed") else "")
            + (f"; {doc['cancelled']} cancelled" if doc.get("cancelled") else "")
        )
        style = "bold green" if doc.get("all_succeeded") else "bold red"
        console.print(Text(("✓ " if doc.get("all_succeeded") else "✗ ") + summary, style=style))
    return exit_status(doc)


def _print_changes(console: Console, doc: Document, seen: dict[str, str]) -> None:
    """Without a terminal: one line per instance whenever its state changes."""
    for instance in doc.get("per_instance") or []:
        key = f"{instance.get('target')}:{instance.get('ui_home')}"
        state = str(instance.get("state"))
        if seen.get(key) != state:
            seen[key] = state
            line = f"{key} {state}"
            if instance.get("error") and state in ("failed", "lost"):
                line += f": {display.one_line(instance['error'])}"
            console.print(line, markup=False, soft_wrap=True)


async def install(
    args: Any,
    client: AsyncClient,
    targets: list[str],
    nodes: list[str] | None,
    options: dict[str, Any],
) -> int:
    """Start the fleet with every option the command was given, and follow it."""
    body = await client.start_fleet(targets, nodes, **options)
    fleet_id = str(body["fleet_id"])
    if not args.json:
        Console(highlight=False).print(f"fleet {fleet_id}", style="dim")
    return await follow(
        client,
        fleet_id,
        as_json=args.json,
        timeout=args.timeout,
        on_interrupt=args.on_interrupt,
    )
