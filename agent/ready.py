"""Ask a running ComfyUI which node classes it has: ``GET /object_info`` on this
machine, the way the frontend learns them before it lets you queue a workflow.

Only loopback or the server's own ``--listen`` address is asked, from the instance
itself: no port has to be open to the controller. Proxies from the environment are
ignored (an ``http_proxy`` would send 127.0.0.1 elsewhere).
"""

import json
import socket
import urllib.error
import urllib.request
from typing import Any, Dict, List, Optional

#: /object_info of ComfyUI with a few hundred packs is tens of MB; refuse more.
MAX_OBJECT_INFO_BYTES = 256 * 1024 * 1024
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class NotAnswering(Exception):
    """Nothing answered on that port yet (refused, reset, timed out, or not HTTP 200)."""


def _url(host: str, port: int) -> str:
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{host}:{port}/object_info"


def object_info(host: str, port: int, timeout: float = 30.0) -> Dict[str, Any]:
    """The server's ``/object_info``; :class:`NotAnswering` when it does not serve it."""
    try:
        with _OPENER.open(_url(host, port), timeout=timeout) as reply:
            body = reply.read(MAX_OBJECT_INFO_BYTES + 1)
    except (urllib.error.URLError, OSError, socket.timeout, ValueError) as exc:
        raise NotAnswering(f"{host}:{port}: {exc}") from None
    if len(body) > MAX_OBJECT_INFO_BYTES:
        raise NotAnswering(f"{host}:{port}: /object_info is larger than it can be")
    try:
        info = json.loads(body)
    except ValueError:
        raise NotAnswering(f"{host}:{port}: /object_info is not JSON") from None
    if not isinstance(info, dict):
        raise NotAnswering(f"{host}:{port}: /object_info is not an object")
    return info


def missing(info: Dict[str, Any], needed: List[str]) -> List[str]:
    """The classes of ``needed`` the server lacks, in ``needed``'s order."""
    return [name for name in needed if name not in info]


def port_open(host: str, port: int, timeout: float = 1.0) -> Optional[str]:
    """None when something accepts TCP on ``host:port``, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return str(exc)
