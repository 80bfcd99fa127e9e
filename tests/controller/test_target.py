"""Parsing ``ssh_connection`` in every form the API accepts, and refusing the rest."""

import pytest

from controller.core.errors import InvalidRequest
from controller.core.target import Target, parse_host_port, parse_target


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
        ("root@host -o ProxyCommand=touch /tmp/x", "option '-o'"),
        ("root@host -i /root/.ssh/other", "option '-i'"),
        ("root@host touch /tmp/pwned", "remote command is not allowed"),
        ("root@host; touch /tmp/pwned", "remote command is not allowed"),
        ("root@host;", "not a valid host"),
        ("root@$(touch /tmp/pwned)", "remote command is not allowed"),
        ("root@$(reboot)", "not a valid host"),
        ("ro`ot`@host", "not a valid user"),
        ("root@host\n-p 22", "control characters"),
        ("root@'host", "cannot be split"),
        ("-oProxyCommand=x@host", "not supported"),
        ("root@hóst", "not a valid host"),
        ("x" * 600, "longer than"),
    ],
)
def test_refused_forms(text: str, fragment: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_target(text)
    assert info.value.field == "ssh_connection"
    assert fragment in info.value.message


def test_non_string_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="must be a string"):
        parse_target(["root@host"])


def test_host_port_for_forget() -> None:
    assert parse_host_port("127.0.0.1:2222") == ("127.0.0.1", 2222)
    assert parse_host_port("example.com") == ("example.com", 22)
    assert parse_host_port("[::1]:2200") == ("::1", 2200)
    with pytest.raises(InvalidRequest):
        parse_host_port("bad host:22")
