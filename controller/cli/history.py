"""``nodeferry history`` (what was installed where, when, with what result, by
which retry chain) and ``nodeferry retry`` (the nodes of a task that failed)."""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

from controller.cli import display
from controller.cli.console import _add_connection_options, connect, follow_and_report, run
from controller.client import Document
from protocol import ExitCode


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    history = subparsers.add_parser(
        "history",
        help="what was installed where, when, and how it ended",
        description="Installs newest first, kept history_days (default 30) after they "
        "finished: each with its nodes, result and retry links.",
    )
    _add_connection_options(history)
    history.add_argument("--ssh", dest="target", metavar="TARGET", help="only this instance")
    history.add_argument("--ui-home", help="only this ComfyUI folder")
    history.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    history.add_argument("--before", help="older than this next_before or ISO 8601 time")
    history.add_argument("--nodes", action="store_true", help="list each install's nodes")
    history.add_argument("--json", action="store_true", help="print the page as JSON")
    history.set_defaults(func=lambda args: run(args, _history))

    retry = subparsers.add_parser(
        "retry",
        help="install again the nodes of a task that failed or were cancelled",
        description="Starts a new task (linked to the old one) with only the nodes that "
        "did not install, and follows it live.",
    )
    _add_connection_options(retry)
    retry.add_argument("task_id", metavar="TASK")
    retry.add_argument("--queue", action="store_true", help="wait in the queue if busy")
    retry.add_argument("--auto-retry", type=int, default=0, metavar="N")
    retry.add_argument("--json", action="store_true", help="print the final document")
    retry.add_argument("--detach", action="store_true", help="print the new task id and exit")
    retry.set_defaults(func=lambda args: run(args, _retry))


async def _history(args: argparse.Namespace) -> int:
    async with connect(args) as client:
        page = await client.history(
            target=args.target, ui_home=args.ui_home, limit=args.limit, before=args.before
        )
    if args.json:
        print(json.dumps(page, indent=2, sort_keys=True))
        return ExitCode.OK
    console = Console(highlight=False)
    entries: list[Document] = page.get("tasks") or []
    if not entries:
        console.print("no installs in the history")
        return ExitCode.OK
    table = Table(box=None, header_style="bold dim")
    for column in ("finished", "target", "ui_home", "state", "nodes", "task", "retry"):
        table.add_column(column, no_wrap=column != "ui_home")
    for entry in entries:
        counts = f"{entry.get('successful', 0)}✓ {entry.get('failed', 0)}✗"
        counts += f" {entry.get('skipped', 0)}-/{entry.get('total_nodes', 0)}"
        links = []
        if entry.get("retry_of"):
            links.append(f"retries {str(entry['retry_of'])[:8]}")
        if entry.get("retried_by"):
            links.append(f"retried by {str(entry['retried_by'])[:8]}")
        table.add_row(
            str(entry.get("finished_at") or entry.get("created_at") or "")[:19],
            str(entry.get("target", "")),
            str(entry.get("ui_home", "")),
            display.status_text(entry.get("state")),
            counts,
            str(entry.get("task_id", ""))[:8],
            ", ".join(links),
        )
        if args.nodes:
            for node in entry.get("nodes") or []:
                commit = str(node.get("commit") or "")[:10]
                code = f" ({node['error_code']})" if node.get("error_code") else ""
                table.add_row("", "", f"  {node.get('name')} {commit}", display.status_text(
                    node.get("status")), code, "", "")  # fmt: skip
    console.print(table)
    if page.get("next_before"):
        console.print(f"older: --before {page['next_before']}", style="dim")
    return ExitCode.OK


async def _retry(args: argparse.Namespace) -> int:
    async with connect(args) as client:
        answer = await client.retry(args.task_id, queue=args.queue, auto_retry=args.auto_retry)
        task_id = str(answer["task_id"])
        if args.detach:
            print(task_id)
            return ExitCode.OK
        if not args.json:
            Console(highlight=False).print(f"task {task_id} retries {args.task_id}", style="dim")
        return await follow_and_report(
            client,
            task_id,
            title=f"retry of {args.task_id[:8]}",
            as_json=args.json,
            timeout=None,
            on_interrupt="detach",
        )
