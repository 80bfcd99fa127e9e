"""Where an install runs: parsed from the request's ``ssh_connection``.

Accepted forms (anything else is a 400 naming the field):

- ``local`` — the controller's own machine, through the ``local`` transport;
- ``user@host -p PORT``, ``user@host:PORT``, ``user@host``;
- the whole command a provider shows, e.g. ``ssh -p 40022 root@1.2.3.4 -L 8080:localhost:8080``
  (port forwards and harmless flags are ignored; options that would change how we
  authenticate or what runs are refused).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from controller.core.errors import InvalidRequest

FIELD = "ssh_connection"
MAX_LENGTH = 512
DEFAULT_PORT = 22

_USER = re.compile(r"^[A-Za-z_][A-Za-z0-9._-]{0,31}$")
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
_IPV6 = re.compile(r"^[0-9A-Fa-f:.]{2,45}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: Flags a copied ssh command may carry that do not matter to us.
_IGNORED_FLAGS = {"-A", "-C", "-N", "-T", "-t", "-v", "-4", "-6", "-q"}
#: Options with a value that do not matter to us (port forwards).
_IGNORED_OPTIONS = {"-L", "-R", "-D"}


@dataclass(frozen=True)
class Target:
    kind: str  # "ssh" or "local"
    user: str = ""
    host: str = ""
    port: int = 0

    @property
    def key(self) -> str:
        """One string per machine, for pooling and the one-install-per-home rule."""
        return "local" if self.kind == "local" else f"{self.user}@{self.host}:{self.port}"

    @property
    def host_port(self) -> str:
        """``HOST:PORT`` as ``nodeferry hosts forget`` takes it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return self.key

    @classmethod
    def local(cls) -> Target:
        return cls(kind="local", host="localhost")


def _bad(message: str) -> InvalidRequest:
    return InvalidRequest(
        FIELD,
        message + " (expected 'user@host -p PORT', 'user@host:PORT', 'user@host', "
        "'ssh -p PORT user@host …' or 'local')",
    )


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise _bad(f"port {text!r} is not a number from 1 to 65535")
    return int(text)


def _check_host(host: str) -> str:
    if host.startswith("[") and host.endswith("]"):
        inner = host[1:-1]
        if ":" in inner and _IPV6.match(inner):
            return inner
        raise _bad(f"{host!r} is not a valid IPv6 address")
    if not _HOSTNAME.match(host):
        raise _bad(f"{host!r} is not a valid host name or address")
    return host


def _destination(text: str) -> tuple[str, str, int | None]:
    """``user@host`` or ``user@host:PORT`` (``user@[v6]:PORT``)."""
    user, at, rest = text.partition("@")
    if not at:
        raise _bad(f"{text!r} has no user (write user@host)")
    if not _USER.match(user):
        raise _bad(f"user {user!r} is not a valid user name")
    port: int | None = None
    if rest.startswith("["):
        close = rest.find("]")
        if close < 0:
            raise _bad(f"{rest!r} is not a valid host")
        host, tail = rest[: close + 1], rest[close + 1 :]
        if tail:
            if not tail.startswith(":"):
                raise _bad(f"{rest!r} is not a valid host")
            port = _port(tail[1:])
    elif rest.count(":") == 1:
        host, _, port_text = rest.partition(":")
        port = _port(port_text)
    else:
        host = rest
    return user, _check_host(host), port


def parse_target(value: object) -> Target:
    if not isinstance(value, str):
        raise InvalidRequest(FIELD, "must be a string")
    text = value.strip()
    if not text:
        raise InvalidRequest(FIELD, "must not be empty")
    if len(text) > MAX_LENGTH:
        raise InvalidRequest(FIELD, f"is longer than {MAX_LENGTH} characters")
    if _CONTROL.search(text):
        raise InvalidRequest(FIELD, "must not contain control characters or newlines")
    if text == "local":
        return Target.local()
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise _bad(f"cannot be split into words ({exc})") from None
    if words and words[0] == "ssh":
        words = words[1:]
    destination: str | None = None
    port: int | None = None
    i = 0
    while i < len(words):
        word = words[i]
        if word in ("-p", "-L", "-R", "-D") or (
            len(word) > 2 and word[:2] in ("-p", "-L", "-R", "-D")
        ):
            option = word[:2]
            if len(word) > 2:
                argument = word[2:]
            elif i + 1 < len(words):
                i += 1
                argument = words[i]
            else:
                raise _bad(f"option {option} needs a value")
            if option == "-p":
                if port is not None:
                    raise _bad("gives the port twice")
                port = _port(argument)
        elif word in _IGNORED_FLAGS:
            pass
        elif word.startswith("-"):
            raise _bad(f"ssh option {word!r} is not supported")
        elif destination is None:
            destination = word
        else:
            raise _bad(f"unexpected word {word!r} (a remote command is not allowed)")
        i += 1
    if destination is None:
        raise _bad("names no user@host")
    user, host, inline_port = _destination(destination)
    if inline_port is not None and port is not None and inline_port != port:
        raise _bad("gives two different ports")
    return Target(kind="ssh", user=user, host=host, port=port or inline_port or DEFAULT_PORT)


def parse_host_port(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``[V6]:PORT``, or ``HOST`` for port 22) for ``hosts forget``."""
    text = value.strip()
    if text.startswith("["):
        close = text.find("]")
        host, tail = text[: close + 1], text[close + 1 :]
        port = _port(tail[1:]) if tail.startswith(":") else DEFAULT_PORT
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = _port(port_text)
    else:
        host, port = text, DEFAULT_PORT
    return _check_host(host), port
