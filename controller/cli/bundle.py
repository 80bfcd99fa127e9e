"""``nodeferry agent-bundle > nodeferry-agent.pyz``: the agent as one file, for using
it on an instance without nodeferry (``python3 nodeferry-agent.pyz install …``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from agent.bundle import bundle
from protocol import ExitCode


def register(subparsers: Any) -> None:
    command = subparsers.add_parser(
        "agent-bundle",
        help="write the agent as a zipapp to stdout (> nodeferry-agent.pyz)",
        description="Write the agent (stdlib only, Python >= 3.8) as one zipapp to stdout. "
        "Copy it to an instance and run `python3 nodeferry-agent.pyz install --ui-home DIR "
        "URL…` there. The same bytes the controller uploads; its sha256 names the version.",
    )
    command.set_defaults(func=bundle_command)


def bundle_command(args: argparse.Namespace) -> int:
    out = sys.stdout
    if out.isatty():
        # A zip archive on a terminal is garbage at best and terminal escapes at worst.
        print(
            "nodeferry agent-bundle: refusing to write a zip archive to a terminal; "
            "redirect it: nodeferry agent-bundle > nodeferry-agent.pyz",
            file=sys.stderr,
        )
        return ExitCode.INVALID
    built = bundle()
    out.flush()
    out.buffer.write(built.data)
    out.buffer.flush()
    print(f"nodeferry-agent sha256:{built.sha256} ({len(built.data)} bytes)", file=sys.stderr)
    return ExitCode.OK
