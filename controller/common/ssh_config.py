"""The controller user's OpenSSH client config (``~/.ssh/config``), read with
paramiko's parser: what a ``Host`` alias or pattern says about where to connect.

Only the operator's own file is read (the ``ssh_config`` setting); a request can
name a host, never a file. ``Match exec`` blocks would run a command, so a config
that has one is refused rather than evaluated.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path

import paramiko

from controller.common.errors import InvalidRequest

_MATCH_EXEC = re.compile(r"^\s*match\b.*\bexec\b", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class HostConfig:
    """What the config says about one host name (empty where it says nothing)."""

    hostname: str = ""
    user: str = ""
    port: int | None = None
    identities: tuple[str, ...] = ()
    proxy_jump: str = ""
    proxy_command: str = ""


class _Cache:
    """Parsed configs by path, re-read when the file changes (mtime and size)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parsed: dict[Path, tuple[tuple[int, int], paramiko.SSHConfig]] = {}

    def get(self, path: Path) -> paramiko.SSHConfig | None:
        try:
            info = path.stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _unreadable(path, exc.strerror or str(exc)) from None
        signature = (info.st_mtime_ns, info.st_size)
        with self._lock:
            cached = self._parsed.get(path)
            if cached is not None and cached[0] == signature:
                return cached[1]
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise _unreadable(path, str(exc)) from None
        if _MATCH_EXEC.search(text):
            raise _unreadable(path, "it has a 'Match exec' block, which nodeferry never runs")
        try:
            config = paramiko.SSHConfig.from_text(text)
        except Exception as exc:  # paramiko raises a variety of errors on bad files
            raise _unreadable(path, str(exc)) from None
        with self._lock:
            self._parsed[path] = (signature, config)
        return config


_CACHE = _Cache()


def _unreadable(path: Path, why: str) -> InvalidRequest:
    return InvalidRequest("ssh_connection", f"cannot use the ssh config {path}: {why}")


def lookup_host(path: Path, host: str) -> HostConfig:
    """The settings ``path`` gives ``host``; an empty :class:`HostConfig` when the file
    does not exist."""
    config = _CACHE.get(path.expanduser())
    if config is None:
        return HostConfig()
    try:
        found = config.lookup(host)
    except Exception as exc:  # token expansion errors and the like
        raise _unreadable(path, str(exc)) from None
    port_text = str(found.get("port", "")).strip()
    port: int | None = None
    if port_text:
        if not port_text.isascii() or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise _unreadable(path, f"Host {host}: Port {port_text!r} is not a valid port")
        port = int(port_text)
    # ssh skips IdentityFile lines whose file is missing; so do we.
    paths = [Path(p).expanduser() for p in found.get("identityfile", [])]
    identities = tuple(str(p) for p in paths if p.exists())
    return HostConfig(
        hostname=str(found.get("hostname", "")),
        user=str(found.get("user", "")),
        port=port,
        identities=identities,
        proxy_jump=_unless_none(str(found.get("proxyjump", ""))),
        proxy_command=_unless_none(str(found.get("proxycommand", ""))),
    )


def _unless_none(value: str) -> str:
    """ssh_config's ``none`` switches a ProxyJump/ProxyCommand off."""
    return "" if value.strip().lower() == "none" else value.strip()
