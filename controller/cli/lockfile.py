"""Reading a lock file given on the command line (``install --lock``, ``diff``)."""

from __future__ import annotations

import json
import sys
from typing import Any

from protocol import ProtocolError
from protocol.lock import Lock


def read_lock_file(path: str, option: str, *, allow_file_urls: bool = False) -> dict[str, Any]:
    """The lock in ``path`` (``-``: stdin) as a dict, checked here so a bad one is
    refused before anything is asked of a controller."""
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
    except OSError as exc:
        raise ProtocolError(option, f"cannot read {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ProtocolError(option, f"{path} is not JSON: {exc}") from None
    Lock.from_dict(data, "lock", allow_file_urls=allow_file_urls)
    if not isinstance(data, dict):  # from_dict has refused it already; this is for mypy
        raise ProtocolError(option, "must be a JSON object")
    return data
