"""Where an install runs: parsed from the request's ``ssh_connection``.

Accepted forms (anything else is a 400 naming the field):

- ``local`` — the controller's own machine, through the ``local`` transport;
- ``user@host -p PORT``, ``user@host:PORT``, ``user@host``, ``user@[v6]:PORT``;
- ``ssh://user@host[:port]`` (what ``vastai ssh-url`` prints);
- a ``Host`` alias of the controller user's ``~/.ssh/config`` (HostName, Port, User,
  IdentityFile and ProxyJump are honoured; a ProxyCommand is refused, it would run
  a shell command);
- the whole command a provider shows, e.g. ``ssh -i KEY -p 40022 root@1.2.3.4 -L
  8080:localhost:8080``: forwards and options that don't change where we connect are
  ignored (and said so in the task's notes); ``-i`` takes key files from the
  ``keys_dir`` setting only; ``-J`` jumps through another host; anything else that
  would change how we authenticate or what runs is refused by name.

A request can never make the controller read a file it names: key files come from
``keys_dir`` (or the operator's own ssh config), and ``-F`` is refused.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.common.errors import InvalidRequest
from controller.common.ssh_config import HostConfig, lookup_host

if TYPE_CHECKING:
    from controller.common.config import Settings

FIELD = "ssh_connection"
MAX_LENGTH = 512
DEFAULT_PORT = 22
#: ProxyJump hops, counting the config's own ProxyJump lines (a loop ends here too).
MAX_JUMPS = 4

_USER = re.compile(r"^[A-Za-z_][A-Za-z0-9._-]{0,31}$")
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
_IPV6 = re.compile(r"^[0-9A-Fa-f:.]{2,45}$")
#: ASCII digits only: ``str.isdigit`` accepts '²' and int() accepts fullwidth digits.
_PORT = re.compile(r"^[0-9]{1,5}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: Flags a copied ssh command may carry that do not change where or as whom we connect.
_IGNORED_FLAGS = frozenset("AaCNTtvq46xXYgn")
#: Options with a value that do not matter to us (port forwards).
_IGNORED_OPTIONS = {"-L", "-R", "-D"}
#: ``-o`` options that change nothing about where we connect. Host keys stay checked
#: by the controller's own policy whatever StrictHostKeyChecking/UserKnownHostsFile say.
_IGNORED_O = frozenset(
    name.lower()
    for name in (
        "ServerAliveInterval",
        "ServerAliveCountMax",
        "StrictHostKeyChecking",
        "UserKnownHostsFile",
        "ConnectTimeout",
        "ConnectionAttempts",
        "TCPKeepAlive",
        "Compression",
        "LogLevel",
        "ForwardAgent",
        "ForwardX11",
        "RequestTTY",
        "ExitOnForwardFailure",
        "IdentitiesOnly",
        "AddKeysToAgent",
        "BatchMode",
        "CheckHostIP",
        "HashKnownHosts",
        "GlobalKnownHostsFile",
        "UpdateHostKeys",
        "LocalForward",
        "RemoteForward",
        "DynamicForward",
        "ControlMaster",
        "ControlPath",
        "ControlPersist",
    )
)
_EXPECTED = (
    "expected 'user@host -p PORT', 'user@host:PORT', 'ssh://user@host:PORT', a Host alias "
    "from the controller's ~/.ssh/config, 'ssh -p PORT user@host …' or 'local'"
)


@dataclass(frozen=True)
class Target:
    kind: str  # "ssh" or "local"
    user: str = ""
    host: str = ""
    port: int = 0
    #: Key files to offer before the default keys (``-i`` or the config's IdentityFile).
    identities: tuple[str, ...] = ()
    #: The host this one is reached through (ProxyJump), over a direct-tcpip channel.
    jump: Target | None = None
    #: What the request called it, when that was a config alias.
    alias: str = field(default="", compare=False)
    #: Options in the request that were accepted but have no effect, for the task's notes.
    ignored: tuple[str, ...] = field(default=(), compare=False)

    @property
    def key(self) -> str:
        """One string per machine, for pooling and the one-install-per-home rule."""
        return "local" if self.kind == "local" else f"{self.user}@{self.host}:{self.port}"

    @property
    def host_port(self) -> str:
        """``HOST:PORT`` as ``nodeferry hosts forget`` takes it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def where(self) -> str:
        """``user@host:port``, and the jump host when there is one, for messages."""
        text = f"{self.user}@{self.host_port}"
        return f"{text} (via {self.jump.where})" if self.jump else text

    def __str__(self) -> str:
        return self.key

    @classmethod
    def local(cls) -> Target:
        return cls(kind="local", host="localhost")

    def route(self) -> dict[str, Any]:
        """How to reach the machine beyond user/host/port (key files, jump host), as
        JSON-able data the registry keeps so a restarted controller reconnects the same way."""
        data: dict[str, Any] = {}
        if self.identities:
            data["identities"] = list(self.identities)
        if self.jump is not None:
            data["jump"] = {
                "user": self.jump.user,
                "host": self.jump.host,
                "port": self.jump.port,
                **self.jump.route(),
            }
        return data

    @classmethod
    def from_route(
        cls, kind: str, user: str, host: str, port: int, route: dict[str, Any]
    ) -> Target:
        jump = route.get("jump")
        return cls(
            kind=kind,
            user=user,
            host=host,
            port=port,
            identities=tuple(route.get("identities", ())),
            jump=(
                cls.from_route("ssh", jump["user"], jump["host"], int(jump["port"]), jump)
                if jump
                else None
            ),
        )


def _bad(message: str) -> InvalidRequest:
    return InvalidRequest(FIELD, f"{message} ({_EXPECTED})")


def _port(text: str) -> int:
    if not _PORT.match(text) or not 1 <= int(text) <= 65535:
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


def _check_user(user: str) -> str:
    if not _USER.match(user):
        raise _bad(f"user {user!r} is not a valid user name")
    return user


@dataclass
class _Words:
    """What the command line said, before the ssh config fills in the rest."""

    destination: str | None = None
    user: str | None = None
    port: int | None = None
    identity: str | None = None
    jump: str | None = None
    ignored: list[str] = field(default_factory=list)

    def set_port(self, port: int) -> None:
        if self.port is not None and self.port != port:
            raise _bad("gives two different ports")
        self.port = port


def _split_destination(text: str) -> tuple[str | None, str, int | None]:
    """``[user@]host[:port]`` (``[v6]:port``) or ``ssh://[user@]host[:port][/]``."""
    if text.lower().startswith("ssh://"):
        text = text[6:]
        if text.endswith("/"):
            text = text[:-1]
        if any(c in text for c in "/?#"):
            raise _bad("an ssh:// URL takes no path, query or fragment")
    user: str | None = None
    if "@" in text:
        user, _, text = text.rpartition("@")
        _check_user(user)
    port: int | None = None
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise _bad(f"{text!r} is not a valid host")
        host, tail = text[: close + 1], text[close + 1 :]
        if tail:
            if not tail.startswith(":"):
                raise _bad(f"{text!r} is not a valid host")
            port = _port(tail[1:])
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = _port(port_text)
    elif text.count(":") > 1:
        raise _bad(f"{text!r}: write an IPv6 address in brackets, as user@[{text}]:PORT")
    else:
        host = text
    if not host:
        raise _bad(f"{text!r} is not a valid host")
    return user, host, port


def _option_value(words: list[str], i: int, option: str) -> tuple[str, int]:
    word = words[i]
    if len(word) > 2:
        return word[2:], i
    if i + 1 < len(words):
        return words[i + 1], i + 1
    raise _bad(f"option {option} needs a value")


def _o_option(text: str, found: _Words) -> None:
    name, sep, value = text.partition("=")
    if not sep:
        name, _, value = text.partition(" ")
    name, value = name.strip(), value.strip()
    lowered = name.lower()
    if lowered == "port":
        found.set_port(_port(value))
    elif lowered == "user":
        found.user = _check_user(value)
    elif lowered == "identityfile":
        found.identity = value
    elif lowered == "proxyjump":
        found.jump = value
    elif lowered == "proxycommand":
        raise _bad(
            "ProxyCommand is never run (it is a shell command); use ProxyJump (-J) to go "
            "through another host"
        )
    elif lowered in _IGNORED_O:
        found.ignored.append(f"-o {name}={value}")
    else:
        raise _bad(f"ssh option '-o {name}' is not supported")


def _read_words(words: list[str]) -> _Words:
    found = _Words()
    if words and words[0] == "ssh":
        words = words[1:]
    i = 0
    while i < len(words):
        word = words[i]
        option = word[:2]
        if option in ("-p", "-i", "-J", "-l", "-o") or option in _IGNORED_OPTIONS:
            value, i = _option_value(words, i, option)
            if option == "-p":
                found.set_port(_port(value))
            elif option == "-i":
                found.identity = value
            elif option == "-J":
                found.jump = value
            elif option == "-l":
                found.user = _check_user(value)
            elif option == "-o":
                _o_option(value, found)
            else:
                found.ignored.append(f"{option} {value}")
        elif word == "-F" or word.startswith("-F"):
            raise _bad("ssh option '-F' is not supported: the controller reads only its own config")
        elif len(word) > 1 and word[0] == "-" and set(word[1:]) <= _IGNORED_FLAGS:
            found.ignored.append(word)
        elif word.startswith("-"):
            raise _bad(f"ssh option {word!r} is not supported")
        elif found.destination is None:
            found.destination = word
        else:
            raise _bad(f"unexpected word {word!r} (a remote command is not allowed)")
        i += 1
    if found.destination is None:
        raise _bad("names no user@host")
    return found


def _key_from_keys_dir(given: str, keys_dir: Path | None) -> str:
    if keys_dir is None:
        raise InvalidRequest(
            FIELD,
            f"-i {given}: key files named in a request are read only from the keys_dir "
            "setting (NODEFERRY_KEYS_DIR), which is not set on this controller",
        )
    root = keys_dir.expanduser().resolve()
    path = Path(given).expanduser()
    candidate = (root / path) if not path.is_absolute() else path
    resolved = candidate.resolve()
    if resolved != root and root not in resolved.parents:
        raise InvalidRequest(
            FIELD, f"-i {given}: the key must be a file in keys_dir ({root}); use its name"
        )
    if not resolved.is_file():
        raise InvalidRequest(FIELD, f"-i {given}: there is no key file {resolved.name} in {root}")
    return str(resolved)


def _resolve(
    destination: str,
    *,
    user: str | None,
    port: int | None,
    identities: tuple[str, ...],
    jump: str | None,
    ignored: tuple[str, ...],
    settings: Settings | None,
    depth: int,
) -> Target:
    """The destination with the ssh config applied, its jump host resolved too."""
    if depth > MAX_JUMPS:
        raise _bad(f"ProxyJump goes through more than {MAX_JUMPS} hosts (or loops)")
    dest_user, host, dest_port = _split_destination(destination)
    config = HostConfig()
    bare = not host.startswith("[")
    if settings is not None and settings.ssh_config is not None and bare:
        config = lookup_host(settings.ssh_config, host)
    if config.proxy_command:
        raise _bad(
            f"{settings.ssh_config if settings else '~/.ssh/config'} gives {host!r} a "
            "ProxyCommand, which nodeferry never runs (it is a shell command); use ProxyJump"
        )
    final_user = user or dest_user or config.user
    if not final_user:
        raise _bad(f"{destination!r} has no user (write user@host, or set User in ~/.ssh/config)")
    final_host = _check_host(config.hostname if config.hostname and bare else host)
    if port is not None and dest_port is not None and port != dest_port:
        raise _bad("gives two different ports")
    final_port = port or dest_port or config.port or DEFAULT_PORT
    jump_spec = jump if jump is not None else config.proxy_jump
    jump_target: Target | None = None
    if jump_spec and jump_spec.lower() != "none":
        jump_target = _chain(jump_spec, settings, depth + 1)
    return Target(
        kind="ssh",
        user=_check_user(final_user),
        host=final_host,
        port=final_port,
        identities=identities or config.identities,
        jump=jump_target,
        alias=host if config.hostname and config.hostname != host else "",
        ignored=ignored,
    )


def _chain(spec: str, settings: Settings | None, depth: int) -> Target:
    """``a,b,c`` means: reach a, from a reach b, from b reach c."""
    hops = [part.strip() for part in spec.split(",")]
    if not all(hops):
        raise _bad(f"ProxyJump {spec!r} has an empty hop")
    previous: Target | None = None
    for hop in hops:
        target = _resolve(
            hop,
            user=None,
            port=None,
            identities=(),
            jump=None,
            ignored=(),
            settings=settings,
            depth=depth,
        )
        if previous is not None:
            if target.jump is not None:
                raise _bad(f"ProxyJump hop {hop!r} has a ProxyJump of its own inside a chain")
            target = Target(
                "ssh", target.user, target.host, target.port, target.identities, previous
            )
        previous = target
        depth += 1
    if previous is None:
        raise _bad("ProxyJump names no host")
    return previous


def parse_target(value: object, settings: Settings | None = None) -> Target:
    """The target a request names. ``settings`` brings the controller user's ssh config
    (aliases) and ``keys_dir`` (``-i``); without them only literal targets are accepted."""
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
    found = _read_words(words)
    if found.destination is None:
        raise _bad("names no host")
    identities: tuple[str, ...] = ()
    if found.identity is not None:
        keys_dir = settings.keys_dir if settings is not None else None
        identities = (_key_from_keys_dir(found.identity, keys_dir),)
    return _resolve(
        found.destination,
        user=found.user,
        port=found.port,
        identities=identities,
        jump=found.jump,
        ignored=tuple(found.ignored),
        settings=settings,
        depth=0,
    )


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
