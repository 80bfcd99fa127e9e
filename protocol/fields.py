"""Validators for the values that travel from a request to a command on an instance.

Each returns the normalised value or raises :class:`ProtocolError`. They are strict
on purpose: whatever passes here ends up in an argv list on a machine we do not own.
"""

import re
import uuid
from typing import List, Optional, Tuple
from urllib.parse import unquote, urlsplit

from protocol.errors import ProtocolError

ALLOWED_URL_SCHEMES = ("https", "http", "ssh", "git")

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_WHITESPACE = re.compile(r"\s")
# user@host:path, the form `git clone` reads as ssh.
_SCP_LIKE = re.compile(r"^(?P<user>[A-Za-z0-9._-]+)@(?P<host>[A-Za-z0-9.-]+):(?P<path>[^:].*)$")
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$|^\[[0-9A-Fa-f:.]+\]$")
_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/+-]*$")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]*$")
# Letters, digits and the punctuation real install paths use; no quotes, `$`,
# backticks, `;`, `|`, `&` or newlines, even though every use is quoted anyway.
_PATH = re.compile(r"^[A-Za-z0-9_./+@,=:~ -]+$")
_COMMAND = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")

MAX_URL = 2048
MAX_REF = 255
MAX_NAME = 100
MAX_PATH = 4096

#: pip options a request may pass through, and whether each takes a value.
PIP_OPTIONS = {
    "--index-url": True,
    "-i": True,
    "--extra-index-url": True,
    "--find-links": True,
    "-f": True,
    "--trusted-host": True,
    "--no-index": False,
    "--pre": False,
    "--prefer-binary": False,
    "--no-cache-dir": False,
}


def task_id(value: object, field: str = "task_id") -> str:
    """A canonical lowercase UUID4 string."""
    if not isinstance(value, str):
        raise ProtocolError(field, "must be a string")
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        raise ProtocolError(field, "must be a UUID") from None
    if parsed.version != 4 or str(parsed) != value:
        raise ProtocolError(field, "must be a UUID4 in canonical form")
    return str(parsed)


def new_task_id() -> str:
    return str(uuid.uuid4())


def _plain_text(value: object, field: str, max_len: int) -> str:
    if not isinstance(value, str):
        raise ProtocolError(field, "must be a string")
    if not value:
        raise ProtocolError(field, "must not be empty")
    if len(value) > max_len:
        raise ProtocolError(field, f"is longer than {max_len} characters")
    if _CONTROL.search(value):
        raise ProtocolError(field, "must not contain control characters")
    return value


def git_url(value: object, field: str = "url", allow_file: bool = False) -> str:
    """A repository URL git may clone without running anything but git."""
    url = _plain_text(value, field, MAX_URL)
    if _WHITESPACE.search(url):
        raise ProtocolError(field, "must not contain whitespace")
    if url.startswith("-"):
        raise ProtocolError(field, "must not start with '-'")
    if "::" in url.split("/", 1)[0]:
        # git's remote helpers (`ext::sh -c …`) run arbitrary commands.
        raise ProtocolError(field, "remote-helper URLs (like 'ext::') are not allowed")
    if not url.isascii():
        raise ProtocolError(field, "must be ASCII (punycode or percent-encode the rest)")
    if "://" not in url:
        match = _SCP_LIKE.match(url)
        if match is None:
            raise ProtocolError(field, "must be an https, http, ssh or git URL (or user@host:path)")
        if not _HOST.match(match.group("host")):
            raise ProtocolError(field, "has an invalid host")
        return url
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    schemes = ALLOWED_URL_SCHEMES + (("file",) if allow_file else ())
    if scheme not in schemes:
        hint = (
            "; the agent's own `install --allow-file-urls` accepts file:// on the instance"
            if scheme == "file"
            else ""
        )
        raise ProtocolError(
            field,
            "scheme '{}' is not allowed (use {}{})".format(scheme, ", ".join(schemes), hint),
        )
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ProtocolError(field, "file URLs must be file:///absolute/path")
    else:
        host = parts.hostname or ""
        if not host or not _HOST.match(host if ":" not in host else "[" + host + "]"):
            raise ProtocolError(field, "has no valid host")
        try:
            parts.port  # noqa: B018 - raises on a malformed port
        except ValueError:
            raise ProtocolError(field, "has an invalid port") from None
        user = unquote(parts.username or "")
        if user.startswith("-") or _CONTROL.search(user):
            # ssh would read a user like "-oProxyCommand=…" as an option.
            raise ProtocolError(field, "has a user name that starts with '-'")
    if parts.query or parts.fragment:
        raise ProtocolError(field, "must not have a query or fragment")
    return url


def git_ref(value: object, field: str = "ref") -> str:
    """A branch, tag or commit, in the subset of git ref syntax that is unambiguous."""
    ref = _plain_text(value, field, MAX_REF)
    if not _REF.match(ref) or ".." in ref or ref.endswith((".lock", "/", ".")) or "//" in ref:
        raise ProtocolError(
            field, "is not a valid branch, tag or commit (letters, digits, '._/+-')"
        )
    return ref


def node_name(value: object, field: str = "name") -> str:
    """A directory name under custom_nodes/: one path component, never hidden."""
    name = _plain_text(value, field, MAX_NAME)
    if not _NAME.match(name) or ".." in name:
        raise ProtocolError(
            field,
            "must be one directory name (letters, digits, '._+-'; no '/', '\\', '..', "
            "or leading '.')",
        )
    return name


def name_from_url(url: str) -> str:
    """The directory git would make for ``url``: its last path component minus .git."""
    path = url.split("://", 1)[1] if "://" in url else url.split(":", 1)[1]
    base = path.rstrip("/").rsplit("/", 1)[-1]
    if base.endswith(".git"):
        base = base[: -len(".git")]
    return base


def remote_path(value: object, field: str, *, allow_home: bool = True) -> str:
    """An absolute path on the instance (``~/…`` allowed), without ``..`` segments.

    Returned in canonical form (no empty or ``.`` segments, no trailing ``/``), so
    ``//workspace/ComfyUI`` and ``/./workspace/ComfyUI/`` are one ComfyUI home.
    """
    path = _plain_text(value, field, MAX_PATH)
    if not _PATH.match(path):
        raise ProtocolError(
            field,
            "may only contain letters, digits, spaces and '_./+@,=:~-' "
            "(no quotes, '$', backticks, ';' or newlines)",
        )
    if path != path.strip():
        raise ProtocolError(field, "must not start or end with whitespace")
    if not (path.startswith("/") or (allow_home and (path == "~" or path.startswith("~/")))):
        raise ProtocolError(
            field, "must be an absolute path" + (" or start with ~/" if allow_home else "")
        )
    if "~" in path[1:]:
        raise ProtocolError(field, "may use '~' only as its first character")
    segments = path.split("/")
    if ".." in segments:
        raise ProtocolError(field, "must not contain '..' segments")
    kept = [part for part in segments[1:] if part not in ("", ".")]
    return "/".join([segments[0], *kept]) if kept else (segments[0] or "/")


def python_command(value: object, field: str = "python") -> str:
    """ComfyUI's interpreter: an absolute path or a bare command name such as python3."""
    text = _plain_text(value, field, MAX_PATH)
    if _COMMAND.match(text):
        return text
    return remote_path(text, field)


def pip_args(value: object, field: str = "pip_args") -> List[str]:
    """pip options from the allow-list, each with its value checked."""
    if not isinstance(value, list):
        raise ProtocolError(field, "must be a list of strings")
    out: List[str] = []
    pending: Optional[Tuple[str, int]] = None
    for index, item in enumerate(value):
        where = f"{field}.{index}"
        arg = _plain_text(item, where, MAX_URL)
        if _WHITESPACE.search(arg):
            raise ProtocolError(where, "must not contain whitespace")
        if pending is not None:
            if arg.startswith("-"):
                raise ProtocolError(where, f"{pending[0]} needs a value")
            out.append(arg)
            pending = None
            continue
        option, eq, inline = arg.partition("=")
        if option not in PIP_OPTIONS:
            raise ProtocolError(
                where,
                "pip option '{}' is not allowed (allowed: {})".format(
                    option, ", ".join(sorted(PIP_OPTIONS))
                ),
            )
        takes_value = PIP_OPTIONS[option]
        if eq and not takes_value:
            raise ProtocolError(where, f"{option} takes no value")
        if takes_value and eq and (not inline or inline.startswith("-")):
            raise ProtocolError(where, f"{option} needs a value")
        out.append(arg)
        if takes_value and not eq:
            pending = (option, index)
    if pending is not None:
        raise ProtocolError(f"{field}.{pending[1]}", f"{pending[0]} needs a value")
    return out
