"""The controller's API token: made on first start, kept in the data dir.

A controller without a token lets anyone who can reach its port run code on
instances (and, with ``local``, on this machine), so a token is the default:
``create_app`` calls :func:`ensure_token`, which reads ``<data_dir>/token`` or
writes a new random one readable by its owner only. Clients on the same machine
find it through :func:`discover_token` (``nodeferry token`` prints it).
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from pathlib import Path
from urllib.parse import urlsplit

from controller.common.errors import ConfigError

TOKEN_FILE = "token"  # noqa: S105 - a file name
ENV_TOKEN = "NODEFERRY_TOKEN"  # noqa: S105 - a variable name
ENV_DATA_DIR = "NODEFERRY_DATA_DIR"


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "nodeferry"


def token_path(data_dir: Path) -> Path:
    return data_dir / TOKEN_FILE


def check_token(token: str, where: str) -> str:
    # It travels in a header and a URL: printable ASCII without spaces only, so
    # comparing it never meets an encoding error and it needs no quoting.
    if not token or not all(33 <= ord(ch) < 127 for ch in token):
        raise ConfigError(f"{where}: the API token must be printable ASCII without spaces")
    return token


def read_token(data_dir: Path) -> str | None:
    """The token stored in ``data_dir``, or None when there is none (or it is unreadable)."""
    try:
        text = token_path(data_dir).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text or None


def ensure_token(data_dir: Path) -> str:
    """The stored token, written first (mode 0600) when there is none."""
    path = token_path(data_dir)
    existing = read_token(data_dir)
    if existing is not None:
        return check_token(existing, str(path))
    data_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    temp = path.with_name(f".{TOKEN_FILE}.{secrets.token_hex(4)}.tmp")
    # Created 0600 from the first byte (no chmod window), then linked into place
    # without replacing a token another process wrote meanwhile.
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(token + "\n")
        try:
            os.link(temp, path)
        except FileExistsError:
            return check_token(read_token(data_dir) or "", str(path))
    finally:
        temp.unlink(missing_ok=True)
    return token


def is_local_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def discover_token(base_url: str, data_dir: Path | None = None) -> str | None:
    """The token a client should send to ``base_url`` when none was given.

    ``NODEFERRY_TOKEN`` first; then, for a controller on this machine, the token
    in its data dir (``data_dir``, else ``NODEFERRY_DATA_DIR``, else the default).
    """
    from_env = os.environ.get(ENV_TOKEN)
    if from_env:
        return from_env
    if not is_local_url(base_url):
        return None
    if data_dir is None:
        env_dir = os.environ.get(ENV_DATA_DIR)
        data_dir = Path(env_dir).expanduser() if env_dir else default_data_dir()
    return read_token(data_dir)


def store_token(data_dir: Path, token: str) -> None:
    """Write ``token`` to ``data_dir`` (mode 0600 from the first byte) unless it is
    there already: a shared registry's token, for clients on this machine."""
    if read_token(data_dir) == token:
        return
    data_dir.mkdir(parents=True, exist_ok=True)
    path = token_path(data_dir)
    temp = path.with_name(f".{TOKEN_FILE}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(token + "\n")
        temp.replace(path)
    finally:
        temp.unlink(missing_ok=True)
