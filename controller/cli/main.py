"""The ``nodeferry`` command. Each group of subcommands lives in its own module,
which adds its parsers through ``register(subparsers)``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from controller.cli import quiet
from controller.cli.exits import EXIT_CODES_HELP
from controller.cli.install_flags import bare_flags
from protocol import __version__

#: Modules that contribute subcommands: the server side (serve, hosts), the
#: client side (install, status, cancel, logs, tasks; retry, history), resolve and
#: node-db, the locks (lock, snapshot, diff), the demo and agent-bundle.
COMMAND_MODULES = (
    "controller.cli.server",
    "controller.cli.console",
    "controller.cli.plan_view",
    "controller.cli.history",
    "controller.cli.resolve",
    "controller.cli.locks",
    "controller.cli.demo",
    "controller.cli.bundle",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nodeferry",
        description="Install ComfyUI custom nodes on remote GPU instances, with live progress.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"nodeferry {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # A bare flag (``--restart``) has its value only after "=": given alone, its own.
    args = build_parser().parse_args(bare_flags(sys.argv[1:] if argv is None else argv))
    if args.command != "serve":  # serve logs to stderr by design (--log-level)
        quiet.configure(getattr(args, "verbose", False))
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
