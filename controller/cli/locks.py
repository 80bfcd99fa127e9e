"""The lock commands: ``lock TASK``, ``snapshot TASK`` and ``diff --ssh … --ui-home … LOCK``.

They talk to a controller like every client command (``--controller`` or one
in this process); see ``console``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rich.console import Console
from rich.text import Text

from controller.cli.console import _add_connection_options, connect, run
from controller.cli.lockfile import read_lock_file
from protocol import ExitCode


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    lock = subparsers.add_parser(
        "lock",
        help="print the lock a finished task wrote (nodes at commits, package versions)",
        description="Print the lock a finished task wrote: every node in the ComfyUI home "
        "at its commit and every package version. `nodeferry install --lock FILE` "
        "reproduces it elsewhere.",
    )
    _add_connection_options(lock)
    lock.add_argument("task_id", metavar="TASK")
    lock.add_argument("-o", "--output", metavar="FILE", help="write it to FILE instead")
    lock.set_defaults(func=lock_command)

    snapshot = subparsers.add_parser(
        "snapshot",
        help="print a finished task's lock as a ComfyUI-Manager snapshot",
        description="Print a finished task's lock in ComfyUI-Manager's snapshot format, "
        "to restore with Manager or comfy-cli.",
    )
    _add_connection_options(snapshot)
    snapshot.add_argument("task_id", metavar="TASK")
    snapshot.add_argument("-o", "--output", metavar="FILE", help="write it to FILE instead")
    snapshot.set_defaults(func=snapshot_command)

    diff = subparsers.add_parser(
        "diff",
        help="what differs on an instance from a lock (changes nothing)",
        description="Compare a ComfyUI home with a lock: nodes missing, at other commits "
        "or extra; packages missing, at other versions or extra. Changes nothing. "
        "Exit status 0 when they match, 1 when they differ.",
    )
    _add_connection_options(diff)
    diff.add_argument(
        "--ssh",
        dest="ssh_connection",
        default="local",
        metavar="TARGET",
        help="the instance, as for install (default: local)",
    )
    diff.add_argument("--ui-home", required=True, help="the ComfyUI folder on the instance")
    diff.add_argument("--python", help="ComfyUI's interpreter (default: discovered)")
    diff.add_argument("lock_file", metavar="LOCK", help="a lock file (from `nodeferry lock`), or -")
    diff.add_argument("--json", action="store_true", help="print the differences as JSON")
    diff.set_defaults(func=diff_command)


def _write(document: dict[str, Any], output: str | None) -> None:
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    if output is None:
        sys.stdout.write(text)
        return
    with open(output, "w", encoding="utf-8") as handle:
        handle.write(text)


async def _lock(args: argparse.Namespace) -> int:
    async with connect(args) as client:
        _write(await client.lock(args.task_id), args.output)
    return ExitCode.OK


def lock_command(args: argparse.Namespace) -> int:
    return run(args, _lock)


async def _snapshot(args: argparse.Namespace) -> int:
    async with connect(args) as client:
        _write(await client.snapshot(args.task_id), args.output)
    return ExitCode.OK


def snapshot_command(args: argparse.Namespace) -> int:
    return run(args, _snapshot)


def difference_lines(differences: dict[str, Any]) -> list[str]:
    """One line per difference, in the order a person fixes them."""
    nodes = differences.get("nodes") or {}
    packages = differences.get("packages") or {}
    lines = [
        f"node missing: {n['name']} ({n['url']} at {n['commit'][:10]})"
        for n in nodes.get("missing", [])
    ]
    lines += [
        f"node at another commit: {n['name']}: locked {n['locked'][:10]}, has {n['actual'][:10]}"
        for n in nodes.get("other_commit", [])
    ]
    lines += [
        f"node from another URL: {n['name']}: locked {n['locked']}, has {n['actual']}"
        for n in nodes.get("other_url", [])
    ]
    lines += [f"extra node: {n['name']} ({n['url']})" for n in nodes.get("extra", [])]
    lines += [f"package missing: {k}=={v}" for k, v in packages.get("missing", {}).items()]
    lines += [
        f"package at another version: {k}: locked {v['locked']}, has {v['actual']}"
        for k, v in packages.get("other_version", {}).items()
    ]
    lines += [f"extra package: {k}=={v}" for k, v in packages.get("extra", {}).items()]
    return lines


async def _diff(args: argparse.Namespace) -> int:
    lock = read_lock_file(args.lock_file, "LOCK", allow_file_urls=True)
    async with connect(args) as client:
        body = await client.diff(args.ssh_connection, args.ui_home, lock, python=args.python)
    equal = bool(body.get("equal"))
    if args.json:
        print(json.dumps(body, indent=2, sort_keys=True))
    else:
        console = Console(highlight=False)
        where = f"{args.ui_home} on {args.ssh_connection}"
        if equal:
            console.print(Text(f"✓ {where} matches the lock", style="bold green"))
        else:
            lines = difference_lines(body.get("differences") or {})
            ways = f"{len(lines)} way" + ("s" if len(lines) != 1 else "")
            console.print(Text(f"✗ {where} differs from the lock in {ways}:", style="bold red"))
            for line in lines:
                console.print(f"  {line}", markup=False)
    return ExitCode.OK if equal else ExitCode.INSTALL_FAILED


def diff_command(args: argparse.Namespace) -> int:
    return run(args, _diff)
