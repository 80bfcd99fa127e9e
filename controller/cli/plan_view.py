"""``nodeferry plan``: what an install would change, into which interpreter, before
anything is touched; the install command's options, a table (``--json``: the
document). ``nodeferry install --plan ID`` applies it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from controller.cli.console import (
    _add_connection_options,
    collect_nodes,
    connect,
    exit_status,
    run,
)
from controller.cli.install_flags import add_install_flags, install_options
from controller.client import WaitTimeout

EXIT_TIMEOUT = 124
_KIND_STYLE = {"added": "green", "upgraded": "cyan", "downgraded": "bold red", "removed": "red"}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    plan = subparsers.add_parser(
        "plan",
        help="say what an install would change (nodes, packages, interpreter); change nothing",
        description="Plan an install: the nodes are cloned into the task folder on the "
        "instance and their requirements resolved dry-run against ComfyUI's interpreter, "
        "with the install's own constraints. Nothing in custom_nodes or the environment "
        "changes. Apply it with `nodeferry install --plan ID`. Exit status 0 when the "
        "plan found nothing that fails, 1 when a node would fail or a policy is broken.",
    )
    plan.add_argument(
        "--ssh", dest="ssh_connection", default="local", metavar="TARGET", help="the instance"
    )
    _add_connection_options(plan)
    add_install_flags(plan)
    plan.add_argument("--nodes-file", type=Path, help="one URL[@REF][#NAME] per line")
    plan.add_argument("nodes", nargs="*", metavar="NODE", help="URL[@REF][#NAME]")
    plan.add_argument("--json", action="store_true", help="print the final document")
    plan.add_argument("--timeout", type=float, help="give up waiting after this many seconds")
    plan.set_defaults(func=plan_command)


def plan_command(args: argparse.Namespace) -> int:
    return run(args, _plan)


async def _plan(args: argparse.Namespace) -> int:
    nodes = collect_nodes(args) if (args.nodes or args.nodes_file is not None) else None
    options = install_options(args)
    async with connect(args) as client:
        task_id = await client.plan(args.ssh_connection, nodes=nodes, **options)
        try:
            final = await client.wait(task_id, timeout=args.timeout)
        except WaitTimeout as exc:
            print(json.dumps(exc.last, indent=2, sort_keys=True))
            return EXIT_TIMEOUT
    if args.json:
        print(json.dumps(final, indent=2, sort_keys=True))
    else:
        Console(highlight=False).print(render(final))
    return exit_status(final)


def render(doc: dict[str, Any]) -> RenderableType:
    """The plan as tables: interpreter, nodes, package changes, and what else would run."""
    plan = doc.get("plan")
    parts: list[RenderableType] = []
    if not isinstance(plan, dict):
        return Text(f"✗ no plan: {doc.get('error') or doc.get('state')}", style="bold red")
    who = plan.get("interpreter", {})
    parts.append(
        Text.assemble(
            ("interpreter ", "bold"),
            (str(who.get("path")), ""),
            (f"  (chosen by {who.get('chosen_by')})", "dim"),
        )
    )
    for line in who.get("mismatch", []):
        parts.append(Text(f"⚠ {line}: an install is refused unless --python names one", "yellow"))
    nodes = Table(title="nodes", title_justify="left")
    for column in ("node", "action", "from", "to"):
        nodes.add_column(column)
    for node in plan.get("nodes", []):
        action = node.get("action", "")
        style = {"new": "green", "update": "cyan", "same": "dim"}.get(action, "red")
        nodes.add_row(
            node.get("name", ""),
            Text(action, style=style),
            (node.get("from") or "")[:12],
            (node.get("to") or node.get("error") or "")[:60],
        )
    parts.append(nodes)
    reasons = plan.get("reasons", {})
    packages = Table(title="packages", title_justify="left")
    for column in ("package", "change", "from", "to", "required by"):
        packages.add_column(column)
    for kind in ("downgraded", "removed", "upgraded", "added"):
        for name, (old, new) in sorted(plan.get("packages", {}).get(kind, {}).items()):
            packages.add_row(
                name,
                Text(kind, style=_KIND_STYLE[kind]),
                old or "",
                new or "",
                "; ".join(reasons.get(name, [])) or "(a dependency)",
            )
    parts.append(packages if packages.row_count else Text("packages: no changes", "dim"))
    for culprit in plan.get("culprits", []):
        parts.append(
            Text(f"✗ {culprit['node']} would be dropped: {culprit['conflict']}", "bold red")
        )
    if plan.get("install_scripts"):
        parts.append(Text("install.py would run: " + ", ".join(plan["install_scripts"])))
    for item in plan.get("alone", []):
        parts.append(Text(f"{item['node']}: {item['what']} installed alone (not predicted)"))
    downloads = plan.get("downloads", {})
    held = ", ".join(f"{k}=={v}" for k, v in sorted(plan.get("held", {}).items()))
    parts.append(
        Text(
            f"downloads: {downloads.get('count', 0)} package(s)"
            + (f", {downloads['bytes']} bytes" if downloads.get("bytes") else "")
            + f"  installer: {plan.get('installer') or 'none needed'}"
            + (f"  held: {held}" if held else ""),
            "dim",
        )
    )
    for violation in plan.get("violations", []):
        parts.append(Text(f"✗ policy: {violation}", "bold red"))
    if doc.get("state") == "completed" and plan.get("apply", {}).get("nodes"):
        parts.append(Text(f"apply it: nodeferry install --plan {doc.get('task_id')}", "bold"))
    elif doc.get("error"):
        parts.append(Text(f"✗ {doc['error']}", "bold red"))
    return Group(*parts)
