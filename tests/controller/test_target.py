"""Parsing ``ssh_connection`` in every form the API accepts, and refusing the rest."""

from pathlib import Path

import pytest

from controller.common.config import Settings
from controller.common.errors import InvalidRequest
from controller.common.target import Target, parse_host_port, parse_target


@pytest.mark.parametrize(
    ("text", "user", "host", "port"),
    [
        ("root@ssh6.vast.ai -p 12345", "root", "ssh6.vast.ai", 12345),
        ("root@ssh6.vast.ai:12345", "root", "ssh6.vast.ai", 12345),
        ("root@1.2.3.4", "root", "1.2.3.4", 22),
        ("ssh -p 40022 root@1.2.3.4 -L 8080:localhost:8080", "root", "1.2.3.4", 40022),
        ("ssh root@1.2.3.4 -p40022", "root", "1.2.3.4", 40022),
        ("  user_1@host-a.example.com -p 2222  ", "user_1", "host-a.example.com", 2222),
        ("root@[::1]:2200", "root", "::1", 2200),
        ("ssh -A -p 22 root@h", "root", "h", 22),
        ("ssh://root@ssh4.vast.ai:31234", "root", "ssh4.vast.ai", 31234),
        ("ssh://root@ssh4.vast.ai:31234/", "root", "ssh4.vast.ai", 31234),
        ("ssh://root@[2001:db8::1]:22", "root", "2001:db8::1", 22),
        ("ssh://root@host", "root", "host", 22),
        ("root@[::1]:2222", "root", "::1", 2222),
        ("ssh -NT -p 2222 root@h -o ServerAliveInterval=30", "root", "h", 2222),
        ("ssh -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null root@h", "root", "h", 22),
        ("ssh -o Port=2200 root@h", "root", "h", 2200),
        ("ssh -l ubuntu -p 2200 h", "ubuntu", "h", 2200),
        ("ssh ssh://root@h:2200", "root", "h", 2200),
    ],
)
def test_accepted_forms(text: str, user: str, host: str, port: int) -> None:
    assert parse_target(text) == Target("ssh", user, host, port)


def test_local() -> None:
    target = parse_target("local")
    assert target.kind == "local"
    assert target.key == "local"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "must not be empty"),
        ("1.2.3.4", "has no user"),
        ("root@", "not a valid host"),
        ("root@host -p 0", "port '0'"),
        ("root@host -p 70000", "port '70000'"),
        ("root@host:22 -p 23", "two different ports"),
        ("root@host -p", "needs a value"),
        ("root@host -o ProxyCommand=touch /tmp/x", "ProxyCommand is never run"),
        ("root@host -oProxyCommand=x", "ProxyCommand is never run"),
        ("root@host -o SendEnv=X", "option '-o SendEnv'"),
        ("root@host -i /root/.ssh/other", "keys_dir"),
        ("root@host -F /etc/ssh/other_config", "'-F' is not supported"),
        ("root@host -p ²", "port '²'"),
        ("root@host:²", "port '²'"),
        ("root@host -p \uff12\uff12", "port '\uff12\uff12'"),  # fullwidth digits
        ("root@host:\uff12\uff12", "port '\uff12\uff12'"),
        ("root@host -p 222222", "port '222222'"),
        ("root@host -p -1", "port '-1'"),
        ("ssh://-oProxyCommand=x@host", "not a valid user"),
        ("ssh://root@host:22/path", "no path"),
        ("ssh://root@host:²", "port '²'"),
        ("root@2001:db8::1", "in brackets"),
        ("root@[2001:db8::1", "not a valid host"),
        ("ssh -J ro`ot@h root@host", "not a valid user"),
        ("ssh -J a,,b root@host", "empty hop"),
        ("root@host touch /tmp/pwned", "remote command is not allowed"),
        ("root@host; touch /tmp/pwned", "remote command is not allowed"),
        ("root@host;", "not a valid host"),
        ("root@$(touch /tmp/pwned)", "remote command is not allowed"),
        ("root@$(reboot)", "not a valid host"),
        ("ro`ot`@host", "not a valid user"),
        ("root@host\n-p 22", "control characters"),
        ("root@'host", "cannot be split"),
        ("-oProxyCommand=x@host", "ProxyCommand is never run"),
        ("root@hóst", "not a valid host"),
        ("x" * 600, "longer than"),
    ],
)
def test_refused_forms(text: str, fragment: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_target(text)
    assert info.value.field == "ssh_connection"
    assert fragment in info.value.message


def test_aliases_from_the_operators_config(tmp_path: Path) -> None:
    key = tmp_path / "vast_key"
    key.write_text("not read here")
    config = tmp_path / "config"
    config.write_text(
        "Host myvast\n  HostName 10.1.2.3\n  Port 2222\n  User root\n"
        f"  IdentityFile {key}\n  ProxyJump bastion\n"
        "Host bastion\n  HostName 10.9.9.9\n  User jump\n"
        "Host loop1\n  ProxyJump loop2\nHost loop2\n  ProxyJump loop1\n"
        "Host sneaky\n  ProxyCommand nc %h %p\n"
        "Host *\n  User fallback\n"
    )
    settings = Settings(data_dir=tmp_path, ssh_config=config)
    target = parse_target("myvast", settings)
    assert (target.user, target.host, target.port) == ("root", "10.1.2.3", 2222)
    assert target.identities == (str(key),)
    assert target.jump == Target("ssh", "jump", "10.9.9.9", 22)
    assert target.key == "root@10.1.2.3:2222"
    # The request's own user and port win over the config's.
    assert parse_target("admin@myvast -p 22", settings).key == "admin@10.1.2.3:22"
    # `Host *` defaults apply to literal hosts too, as in ssh.
    assert parse_target("other.example", settings).key == "fallback@other.example:22"
    with pytest.raises(InvalidRequest, match="ProxyCommand"):
        parse_target("sneaky", settings)
    with pytest.raises(InvalidRequest, match="more than"):
        parse_target("loop1", settings)
    # Without the operator's config, an alias is just a host that lacks a user.
    with pytest.raises(InvalidRequest, match="has no user"):
        parse_target("myvast")


def test_match_exec_configs_are_not_evaluated(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    config = tmp_path / "config"
    config.write_text(f'Match exec "touch {marker}"\n  User x\n')
    with pytest.raises(InvalidRequest, match="Match exec"):
        parse_target("root@host", Settings(data_dir=tmp_path, ssh_config=config))
    assert not marker.exists()


def test_route_survives_the_registry(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "k").write_text("x")
    settings = Settings(data_dir=tmp_path, keys_dir=keys, ssh_config=None)
    target = parse_target("ssh -i k -J jump@10.0.0.9:2200 root@10.0.0.1", settings)
    again = Target.from_route("ssh", target.user, target.host, target.port, target.route())
    assert again == target
    assert again.jump == Target("ssh", "jump", "10.0.0.9", 2200)
    assert again.identities == (str((keys / "k").resolve()),)


def test_non_string_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="must be a string"):
        parse_target(["root@host"])


def test_host_port_for_forget() -> None:
    assert parse_host_port("127.0.0.1:2222") == ("127.0.0.1", 2222)
    assert parse_host_port("example.com") == ("example.com", 22)
    assert parse_host_port("[::1]:2200") == ("::1", 2200)
    with pytest.raises(InvalidRequest):
        parse_host_port("bad host:22")
