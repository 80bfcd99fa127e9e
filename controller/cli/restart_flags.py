"""The install flags of the restart and the ready check (``--restart[=auto]``,
``--restart-command``, ``--ready-check``, ``--ready-timeout``) as start-request fields,
shared by the single install and the fleet."""

from __future__ import annotations

import argparse
import shlex
from typing import Any

from protocol import ProtocolError


def restart_options(args: argparse.Namespace) -> dict[str, Any]:
    """``restart``/``ready_check``/``ready_timeout`` of the start request, from the flags."""
    out: dict[str, Any] = {}
    command = getattr(args, "restart_command", None)
    if command is not None:
        argv = shlex.split(command)
        if not argv:
            raise ProtocolError("--restart-command", "is empty")
        out["restart"] = {"command": argv}
    elif getattr(args, "restart", None) is not None:
        out["restart"] = args.restart
    if getattr(args, "ready_check", False):
        out["ready_check"] = True
    if getattr(args, "ready_timeout", None) is not None:
        out["ready_timeout"] = args.ready_timeout
    return out
