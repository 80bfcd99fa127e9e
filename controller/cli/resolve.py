"""``nodeferry resolve FILE`` (what a workflow, snapshot or node list would
install, and why) and ``nodeferry node-db update`` (refresh the controller's copy
of ComfyUI-Manager's node database), plus the file readers ``install`` uses."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from controller.cli.console import _add_connection_options, connect, run
from controller.common.config import load_settings
from controller.common.errors import ControllerError
from controller.core.sources import nodedb, snapshot, workflow
from controller.core.sources.errors import SourceError
from controller.core.sources.merge import sources_from_bytes
from protocol import ProtocolError

MAX_FILE = workflow.MAX_FILE_BYTES


def _read(path: Path, option: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE + 1)
    except OSError as exc:
        raise ProtocolError(option, f"cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_FILE:
        raise ProtocolError(option, f"{path} is larger than {MAX_FILE} bytes")
    return data


def read_workflow_file(path: Path) -> dict[str, Any]:
    """A workflow from a JSON file or a PNG ComfyUI saved."""
    try:
        return workflow.load_bytes(_read(path, "--workflow"), str(path))
    except SourceError as exc:
        raise ProtocolError("--workflow", exc.message) from None


def read_snapshot_file(path: Path) -> dict[str, Any]:
    try:
        text = _read(path, "--snapshot").decode("utf-8-sig")
        return snapshot.parse_text(text, str(path))
    except UnicodeDecodeError:
        raise ProtocolError("--snapshot", f"{path} is not UTF-8 text") from None
    except SourceError as exc:
        raise ProtocolError("--snapshot", exc.message) from None


def register(subparsers: Any) -> None:
    resolve = subparsers.add_parser(
        "resolve",
        help="show what a workflow, snapshot or node list would install, and why",
        description="Resolve FILE (a ComfyUI workflow as JSON or PNG, a ComfyUI-Manager "
        "snapshot as JSON or YAML, or one URL[@REF] or registry id a line) without "
        "installing anything. With --ssh and --ui-home the instance's own ComfyUI-Manager "
        "node database may be read (nothing there is changed).",
    )
    _add_connection_options(resolve)
    resolve.add_argument("file", type=Path, metavar="FILE")
    resolve.add_argument("--ssh", dest="ssh_connection", metavar="TARGET")
    resolve.add_argument("--ui-home", help="the ComfyUI folder on the instance")
    resolve.add_argument("--json", action="store_true", help="print the selection as JSON")
    resolve.set_defaults(func=resolve_command)

    db = subparsers.add_parser("node-db", help="ComfyUI-Manager's node database")
    db_sub = db.add_subparsers(dest="node_db_command", required=True, metavar="ACTION")
    update = db_sub.add_parser(
        "update",
        help="download the node database from ComfyUI-Manager's repository (online)",
        description="Refresh the copy of extension-node-map.json, custom-node-list.json and "
        "github-stats.json the controller keeps in its data dir.",
    )
    update.add_argument("--config", type=Path, default=None, help="INI config file")
    update.set_defaults(func=node_db_update_command)


async def _resolve(args: argparse.Namespace) -> int:
    try:
        sources = sources_from_bytes(_read(args.file, "FILE"), str(args.file))
    except SourceError as exc:
        raise ProtocolError("FILE", exc.message) from None
    async with connect(args) as client:
        selection = await client.resolve(
            nodes=sources.nodes,
            workflow=sources.workflow,
            snapshot=sources.snapshot,
            ssh_connection=args.ssh_connection,
            ui_home=args.ui_home,
        )
    if args.json:
        print(json.dumps(selection, indent=2, sort_keys=True))
        return 0
    print_selection(selection, Console(highlight=False))
    return 0


def print_selection(selection: dict[str, Any], console: Console) -> None:
    table = Table(title=f"{len(selection['nodes'])} custom node(s)", title_justify="left")
    for column in ("name", "ref", "rule", "classes"):
        table.add_column(column)
    for node in selection["nodes"]:
        classes = ", ".join(node["classes"][:6]) + (" …" if len(node["classes"]) > 6 else "")
        table.add_row(node["name"], node["ref"] or "default branch", node["rule"], classes)
    console.print(table, markup=False)
    for node in selection["nodes"]:
        console.print(f"  {node['name']}: {node['url']}", markup=False)
    for entry in selection["ambiguous"]:
        console.print(
            f"ambiguous: {entry['class']} → {entry['chosen']} ({entry['reason']}; "
            f"{len(entry['candidates'])} candidates)",
            markup=False,
        )
    if selection["unresolved"]:
        console.print(
            f"unresolved ({len(selection['unresolved'])}): {', '.join(selection['unresolved'])}",
            style="yellow",
            markup=False,
        )
    for warning in selection["warnings"]:
        console.print(f"warning: {warning}", style="dim", markup=False)
    if selection.get("node_db"):
        console.print(f"node database: {selection['node_db']}", style="dim", markup=False)


def resolve_command(args: argparse.Namespace) -> int:
    return run(args, _resolve)


def node_db_update_command(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
        written = nodedb.update(settings.data_dir)
        db = nodedb.load_dir(nodedb.kept_dir(settings.data_dir))
    except ControllerError as exc:
        print(f"nodeferry node-db update: {exc.message}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"nodeferry node-db update: download failed: {exc}", file=sys.stderr)
        return 5
    print(f"updated {', '.join(p.name for p in written)} in {nodedb.kept_dir(settings.data_dir)}")
    print(f"{len(db.packs)} repositories, {len(db.by_class)} node classes")
    return 0
