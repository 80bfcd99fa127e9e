"""The controller's settings: defaults, then a config file, then ``NODEFERRY_<NAME>``
environment variables, then command-line options — later ones win.

The config file is INI-style with one ``[nodeferry]`` section whose keys are the
setting names below (``deploy/nodeferry.conf.example`` lists them all). Lists are
written one item per word (``ssh_keys = /a/key /b/key``).
"""

from __future__ import annotations

import configparser
import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.common.apitoken import check_token, default_data_dir
from controller.common.errors import ConfigError
from protocol import fields as checks
from protocol.errors import ProtocolError

ENV_PREFIX = "NODEFERRY_"
SECTION = "nodeferry"
HOST_KEY_POLICIES = ("tofu", "strict", "insecure")
DEFAULT_KEY_NAMES = ("id_ed25519", "id_ecdsa", "id_rsa")


@dataclass
class Settings:
    # -- HTTP -----------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8765
    #: The API token. Unset: the one in ``<data_dir>/token``, made on first start
    #: (``nodeferry token`` prints it). Clients send ``Authorization: Bearer <token>``
    #: (``?token=`` only on the event stream and WebSocket, where browsers can't).
    token: str | None = None
    #: Serve without a token (``--no-auth``): loopback only.
    no_auth: bool = False
    #: Host names besides loopback and the bound address that requests may be
    #: addressed to (a reverse proxy's name). Others are refused: DNS rebinding.
    allowed_hosts: list[str] = field(default_factory=list)
    #: Let requests install with ``ssh_connection: "local"`` on this machine.
    allow_local: bool = False
    #: Largest request body accepted, in bytes.
    max_body_bytes: int = 1024 * 1024
    #: Client connections open at once; one more is answered 503 and closed
    #: (kept below the open-file limit, which ``serve`` raises to its hard limit).
    max_client_connections: int = 1000
    #: Seconds a client connection may go without sending a whole request (its
    #: headers, after connecting or after its last answer) before it is closed.
    client_idle_timeout: float = 30.0

    # -- state ----------------------------------------------------------------
    data_dir: Path = field(default_factory=default_data_dir)
    #: Where the registry lives. Unset: SQLite in ``<data_dir>/tasks.sqlite3``
    #: (embedded, one controller). ``postgresql://user:password@host/db`` lets
    #: several controllers share one registry, queue, limits, host keys and token.
    database_url: str | None = None
    #: Seconds a controller's claim on a launch holds: if it dies before the agent
    #: confirmed the start, another controller launches the task after this long.
    #: 0: connect_timeout + command_timeout + 60 (what one launch may take, and
    #: slack). Set, it must exceed connect_timeout + command_timeout.
    launch_lease: float = 0.0
    #: Finished tasks older than this many seconds are removed (with their files on
    #: the instance) by a periodic job.
    retention: float = 2 * 3600.0
    #: How often the retention job runs, in seconds.
    cleanup_interval: float = 300.0
    #: Past the retention a task's summary stays this many days (``/api/history``).
    history_days: float = 30.0

    # -- limits and the queue ----------------------------------------------------
    #: Installs running at once, controller-wide (0: no limit). Beyond it a start
    #: with ``queue`` waits in the queue; without, it gets 429.
    max_running: int = 0
    #: Installs running at once on one host (0: no limit).
    max_running_per_host: int = 0
    #: Seconds before the first automatic retry; each further one waits twice as long.
    auto_retry_backoff: float = 10.0

    # -- SSH ------------------------------------------------------------------
    #: Private keys to offer, in order. Empty: ~/.ssh/id_ed25519, id_ecdsa, id_rsa
    #: (those that exist), then an ssh-agent if one is running.
    ssh_keys: list[Path] = field(default_factory=list)
    use_ssh_agent: bool = True
    #: The controller's own known-hosts file. Default: <data_dir>/known_hosts.
    known_hosts: Path | None = None
    #: ``tofu`` records a new host's key and refuses a changed one; ``strict``
    #: refuses hosts not already in the file; ``insecure`` accepts any key.
    host_key_policy: str = "tofu"
    connect_timeout: float = 10.0
    command_timeout: float = 60.0
    keepalive_interval: float = 15.0
    #: Channels per pooled connection before another connection is opened.
    max_channels_per_connection: int = 5
    max_connections_per_host: int = 4
    #: The controller user's OpenSSH client config: ``Host`` aliases and their
    #: HostName, Port, User, IdentityFile and ProxyJump. Empty: none is read.
    ssh_config: Path | None = field(default_factory=lambda: Path.home() / ".ssh" / "config")
    #: The only folder a request's ``-i KEY`` may name a key file in (by name, or a
    #: path inside it). Unset: ``-i`` is refused.
    keys_dir: Path | None = None
    #: Threads for SSH work, apart from the executor for files and SQLite: a host
    #: that never answers holds one for up to connect_timeout.
    ssh_threads: int = 64
    #: SSH jobs one host may run at once once it has answered (before, one).
    ssh_jobs_per_host: int = 8

    # -- the agent on the instance --------------------------------------------
    #: The agent's state dir on instances (``--state-dir``); ``~/`` is the SSH
    #: user's home.
    remote_state_dir: str = "~/.nodeferry"
    #: The interpreter that runs the agent on instances.
    remote_python: str = "python3"
    #: The state dir for the ``local`` transport.
    local_state_dir: Path = field(default_factory=lambda: Path.home() / ".nodeferry")
    #: pip options used when a request gives none.
    default_pip_args: list[str] = field(default_factory=list)

    # -- what to install (issue 10) -------------------------------------------
    #: What a start request that names no nodes, workflow or snapshot installs: a
    #: file holding a workflow, a snapshot, or one ``URL[@REF]`` (or registry id) a line.
    default_nodes: Path | None = None
    #: A directory holding ComfyUI-Manager's extension-node-map.json,
    #: custom-node-list.json and github-stats.json. Unset: the instance's own
    #: ComfyUI-Manager copy, then the copy ``nodeferry node-db update`` keeps.
    node_db: Path | None = None
    #: Ask the Comfy Registry's API for ids the node database lacks, and read
    #: repositories' tags (git ls-remote) to pin a workflow's saved versions.
    online_lookups: bool = True

    # -- progress reads -------------------------------------------------------
    #: A progress document read less than this many seconds ago is served from cache.
    refresh_interval: float = 0.5
    #: How often the agent rewrites its document (it does every second; its
    #: contract is at least every 2 s). After three intervals without a change, by
    #: the controller's clock, the controller asks the agent's ``status`` whether
    #: the worker lives (pid, command line, boot id): a killed agent reads ``lost``
    #: a few seconds later, and a slower heartbeat only costs extra status calls.
    heartbeat_interval: float = 1.0
    #: How often running tasks are refreshed when nobody is asking, in seconds.
    monitor_interval: float = 5.0

    @property
    def known_hosts_path(self) -> Path:
        return self.known_hosts if self.known_hosts is not None else self.data_dir / "known_hosts"

    @property
    def database_path(self) -> Path:
        return self.data_dir / "tasks.sqlite3"

    @property
    def lease_seconds(self) -> float:
        """``launch_lease``, or what it is when 0 (see there)."""
        return self.launch_lease or self.connect_timeout + self.command_timeout + 60.0

    @property
    def registry_url(self) -> str:
        """``database_url``, else the SQLite file in the data dir."""
        return self.database_url or f"sqlite:///{self.database_path}"

    def validate(self) -> Settings:
        if self.host_key_policy not in HOST_KEY_POLICIES:
            raise ConfigError("host_key_policy must be one of: " + ", ".join(HOST_KEY_POLICIES))
        if not 1 <= self.port <= 65535:
            raise ConfigError("port must be from 1 to 65535")
        if self.no_auth and not _is_loopback(self.host):
            raise ConfigError(
                f"refusing to listen on {self.host} without an API token: anyone who can "
                "reach it could run installs on your instances. Drop --no-auth "
                "(no_auth) or bind to 127.0.0.1."
            )
        if self.token is not None:
            check_token(self.token, "token")
        if self.max_running < 0 or self.max_running_per_host < 0:
            raise ConfigError("max_running and max_running_per_host must be 0 (no limit) or more")
        for name in (
            "retention",
            "cleanup_interval",
            "history_days",
            "auto_retry_backoff",
            "connect_timeout",
            "command_timeout",
            "refresh_interval",
            "heartbeat_interval",
            "monitor_interval",
            "client_idle_timeout",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.max_client_connections < 1:
            raise ConfigError("max_client_connections must be at least 1")
        if self.database_url is not None and not self.database_url.startswith(
            ("sqlite:///", "postgresql://", "postgresql+psycopg://", "postgres://")
        ):
            raise ConfigError(
                "database_url must be postgresql://USER:PASSWORD@HOST:PORT/DB or sqlite:///PATH"
            )
        if self.launch_lease < 0 or (
            self.launch_lease and self.launch_lease <= self.connect_timeout + self.command_timeout
        ):
            raise ConfigError(
                "launch_lease must exceed connect_timeout + command_timeout: a launch still "
                "running must never be taken over"
            )
        if self.ssh_threads < 2 or self.ssh_jobs_per_host < 1:
            raise ConfigError("ssh_threads must be at least 2 and ssh_jobs_per_host at least 1")
        if self.max_channels_per_connection < 2 or self.max_connections_per_host < 1:
            raise ConfigError(
                "max_channels_per_connection must be at least 2 and "
                "max_connections_per_host at least 1"
            )
        try:
            checks.remote_path(self.remote_state_dir, "remote_state_dir")
            checks.python_command(self.remote_python, "remote_python")
            self.default_pip_args = checks.pip_args(self.default_pip_args, "default_pip_args")
        except ProtocolError as exc:
            raise ConfigError(str(exc)) from None
        return self

    def key_paths(self) -> list[Path]:
        if self.ssh_keys:
            return list(self.ssh_keys)
        ssh_dir = Path.home() / ".ssh"
        return [ssh_dir / name for name in DEFAULT_KEY_NAMES if (ssh_dir / name).exists()]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _convert(name: str, raw: Any, kind: Any) -> Any:
    """Turn a string from a file or the environment into the setting's type."""
    if not isinstance(raw, str):
        return raw
    text = raw.strip()
    try:
        if kind in (int,):
            return int(text)
        if kind in (float,):
            return float(text)
        if kind in (bool,):
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{name}: {text!r} is not true or false")
    except ValueError:
        raise ConfigError(f"{name}: {text!r} is not a valid {kind.__name__}") from None
    if kind == "path":
        return Path(text).expanduser()
    if kind == "optional_path":
        return Path(text).expanduser() if text else None
    if kind == "path_list":
        return [Path(word).expanduser() for word in text.split()]
    if kind == "str_list":
        return text.split()
    if kind == "optional_str":
        return text or None
    return text


_KINDS: dict[str, Any] = {
    "host": str,
    "port": int,
    "token": "optional_str",
    "no_auth": bool,
    "allowed_hosts": "str_list",
    "allow_local": bool,
    "max_body_bytes": int,
    "max_client_connections": int,
    "client_idle_timeout": float,
    "data_dir": "path",
    "database_url": "optional_str",
    "launch_lease": float,
    "retention": float,
    "cleanup_interval": float,
    "history_days": float,
    "max_running": int,
    "max_running_per_host": int,
    "auto_retry_backoff": float,
    "ssh_keys": "path_list",
    "use_ssh_agent": bool,
    "known_hosts": "optional_path",
    "host_key_policy": str,
    "connect_timeout": float,
    "command_timeout": float,
    "keepalive_interval": float,
    "max_channels_per_connection": int,
    "max_connections_per_host": int,
    "ssh_config": "optional_path",
    "keys_dir": "optional_path",
    "ssh_threads": int,
    "ssh_jobs_per_host": int,
    "remote_state_dir": str,
    "remote_python": str,
    "local_state_dir": "path",
    "default_pip_args": "str_list",
    "default_nodes": "optional_path",
    "node_db": "optional_path",
    "online_lookups": bool,
    "refresh_interval": float,
    "heartbeat_interval": float,
    "monitor_interval": float,
}
if set(_KINDS) != {f.name for f in dataclasses.fields(Settings)}:  # a setting without its kind
    raise TypeError("_KINDS must name every field of Settings, and only those")


def setting_names() -> list[str]:
    return list(_KINDS)


def read_file(path: Path) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except configparser.Error as exc:
        raise ConfigError(f"config file {path} is not valid: {exc}") from None
    if not parser.has_section(SECTION):
        raise ConfigError(f"config file {path} has no [{SECTION}] section")
    values = dict(parser.items(SECTION))
    unknown = set(values) - set(_KINDS)
    if unknown:
        raise ConfigError(f"config file {path}: unknown setting(s): {', '.join(sorted(unknown))}")
    return values


def load_settings(
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Settings from defaults < ``config_file`` < ``environ`` < ``overrides`` (None = unset)."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    if config_file is None and env.get(ENV_PREFIX + "CONFIG"):
        config_file = Path(env[ENV_PREFIX + "CONFIG"]).expanduser()
    if config_file is not None:
        values.update(read_file(config_file))
    for name in _KINDS:
        env_name = ENV_PREFIX + name.upper()
        if env_name in env:
            values[name] = env[env_name]
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = value
    converted = {name: _convert(name, raw, _KINDS[name]) for name, raw in values.items()}
    return Settings(**converted).validate()
