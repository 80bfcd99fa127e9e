"""Settings from defaults, a file, the environment and the command line."""

from pathlib import Path

import pytest

from controller.common.config import Settings, load_settings, setting_names
from controller.common.errors import ConfigError


def test_precedence_file_env_overrides(tmp_path: Path) -> None:
    config = tmp_path / "nodeferry.conf"
    config.write_text(
        "[nodeferry]\nport = 9001\nretention = 60\nssh_keys = /k/one /k/two\n"
        "host_key_policy = strict\n"
    )
    settings = load_settings(config, environ={"NODEFERRY_PORT": "9002"}, overrides={"port": None})
    assert settings.port == 9002
    assert settings.retention == 60.0
    assert settings.ssh_keys == [Path("/k/one"), Path("/k/two")]
    assert settings.host_key_policy == "strict"
    settings = load_settings(config, environ={"NODEFERRY_PORT": "9002"}, overrides={"port": 9003})
    assert settings.port == 9003


ENV_VALUES = {
    "host": ("127.0.0.2", "127.0.0.2"),
    "port": ("7001", 7001),
    "token": ("tok", "tok"),
    "no_auth": ("yes", True),
    "allowed_hosts": ("proxy.example nf.internal", ["proxy.example", "nf.internal"]),
    "allow_local": ("1", True),
    "max_body_bytes": ("4096", 4096),
    "max_client_connections": ("200", 200),
    "client_idle_timeout": ("12.5", 12.5),
    "data_dir": ("/srv/nf", Path("/srv/nf")),
    "database_url": (
        "postgresql://nf:secret@127.0.0.1:5432/nf",
        "postgresql://nf:secret@127.0.0.1:5432/nf",
    ),
    "launch_lease": ("30", 30.0),
    "retention": ("7.5", 7.5),
    "cleanup_interval": ("8.5", 8.5),
    "ssh_keys": ("/a/k /b/k", [Path("/a/k"), Path("/b/k")]),
    "use_ssh_agent": ("false", False),
    "known_hosts": ("/srv/kh", Path("/srv/kh")),
    "host_key_policy": ("strict", "strict"),
    "connect_timeout": ("3", 3.0),
    "command_timeout": ("4", 4.0),
    "keepalive_interval": ("5", 5.0),
    "max_channels_per_connection": ("3", 3),
    "max_connections_per_host": ("2", 2),
    "ssh_config": ("/srv/ssh_config", Path("/srv/ssh_config")),
    "keys_dir": ("/srv/keys", Path("/srv/keys")),
    "ssh_threads": ("16", 16),
    "ssh_jobs_per_host": ("3", 3),
    "remote_state_dir": ("/var/lib/nf", "/var/lib/nf"),
    "remote_python": ("python3.12", "python3.12"),
    "local_state_dir": ("/srv/local", Path("/srv/local")),
    "default_pip_args": ("--no-index --pre", ["--no-index", "--pre"]),
    "default_nodes": ("/srv/nodes.txt", Path("/srv/nodes.txt")),
    "node_db": ("/srv/node-db", Path("/srv/node-db")),
    "online_lookups": ("false", False),
    "refresh_interval": ("0.25", 0.25),
    "heartbeat_interval": ("1.5", 1.5),
    "monitor_interval": ("2.5", 2.5),
    "history_days": ("7", 7.0),
    "max_running": ("20", 20),
    "max_running_per_host": ("2", 2),
    "auto_retry_backoff": ("30", 30.0),
}


def test_every_setting_has_an_environment_variable() -> None:
    assert set(ENV_VALUES) == set(setting_names())
    environ = {"NODEFERRY_" + name.upper(): raw for name, (raw, _) in ENV_VALUES.items()}
    settings = load_settings(environ=environ)
    for name, (_, expected) in ENV_VALUES.items():
        assert getattr(settings, name) == expected, name


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.5", "::", "example.com"])
def test_refuses_public_bind_without_token(host: str) -> None:
    with pytest.raises(ConfigError, match="without an API token"):
        load_settings(environ={"NODEFERRY_HOST": host, "NODEFERRY_NO_AUTH": "1"})
    # Without --no-auth the controller makes its token on start.
    assert load_settings(environ={"NODEFERRY_HOST": host}).no_auth is False


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_no_auth_is_for_loopback_only(host: str) -> None:
    assert load_settings(environ={"NODEFERRY_HOST": host, "NODEFERRY_NO_AUTH": "1"}).no_auth


def test_closed_by_default() -> None:
    settings = Settings()
    assert settings.token is None and not settings.no_auth  # made in the data dir on start
    assert settings.allow_local is False and settings.allowed_hosts == []


@pytest.mark.parametrize("token", ["with space", "tök", "a\nb", ""])
def test_a_token_must_be_plain_ascii(token: str) -> None:
    with pytest.raises(ConfigError, match="printable ASCII"):
        Settings(token=token).validate()


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"NODEFERRY_HOST_KEY_POLICY": "yolo"}, "host_key_policy"),
        ({"NODEFERRY_PORT": "eighty"}, "port"),
        ({"NODEFERRY_RETENTION": "-1"}, "retention must be positive"),
        ({"NODEFERRY_REMOTE_STATE_DIR": "/tmp/$(reboot)"}, "remote_state_dir"),
        ({"NODEFERRY_DEFAULT_PIP_ARGS": "--upgrade-strategy eager"}, "not allowed"),
    ],
)
def test_bad_values_are_named(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(environ=environ)


def test_bad_config_file(tmp_path: Path) -> None:
    config = tmp_path / "c.conf"
    config.write_text("[nodeferry]\nprot = 1\n")
    with pytest.raises(ConfigError, match="unknown setting"):
        load_settings(config, environ={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.conf", environ={})


def test_example_config_lists_every_setting() -> None:
    example = Path(__file__).resolve().parents[2] / "deploy" / "nodeferry.conf.example"
    text = example.read_text()
    for name in setting_names():
        assert f"# {name} =" in text or f"\n{name} =" in text, name
    assert isinstance(Settings().known_hosts_path, Path)


def test_the_default_heartbeat_is_the_agents() -> None:
    # Liveness is asked after three silent heartbeats: with the agent's real
    # interval a killed agent reads lost ~3 s after its last beat, not ~6 s.
    from agent.progress_file import HEARTBEAT_SECONDS

    assert Settings().heartbeat_interval == HEARTBEAT_SECONDS
    assert 3 * Settings().heartbeat_interval <= 3.0
