"""FlakyProxy against a real git daemon and real git: it fails only what a test asks
for, waits as long as a slow server takes, and reads git's request line whole."""

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.sandbox.gitserver import GitServer, Repo, git_env
from tests.support.flaky import FlakyProxy

pytestmark = pytest.mark.timeout(120)

V2_REQUEST = b"git-upload-pack /%s\0host=127.0.0.1\0\0version=2\0"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GitServer, Repo]]:
    with GitServer(tmp_path_factory.mktemp("gitd")) as server:
        yield server, server.add_repo("plain", {"a.txt": "1\n"})


def ls_remote(port: int, name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "ls-remote", f"git://127.0.0.1:{port}/{name}"],
        capture_output=True,
        text=True,
        env=git_env(),
        timeout=60,
        check=False,
    )


def first_reply(port: int, request: bytes, *, pause: float) -> bytes:
    """Send ``request`` as git does, header and payload in two writes, ``pause`` apart."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(b"%04x" % (len(request) + 4))
        # The gap a loaded client may leave between its two writes: the proxy must
        # wait for the rest of the line, however long it takes.
        time.sleep(pause)
        sock.sendall(request)
        return sock.recv(4096)


def test_nothing_fails_unless_asked(served: tuple[GitServer, Repo]) -> None:
    server, repo = served
    with FlakyProxy(("127.0.0.1", server.port)) as proxy:
        result = ls_remote(proxy.port, repo.name)
    assert result.returncode == 0, result.stderr
    assert repo.head in result.stdout
    assert proxy.connections == 1


def test_fail_first_fails_exactly_that_many(served: tuple[GitServer, Repo]) -> None:
    server, repo = served
    with FlakyProxy(("127.0.0.1", server.port), fail_first=2) as proxy:
        results = [ls_remote(proxy.port, repo.name) for _ in range(3)]
    assert [r.returncode for r in results] == [128, 128, 0], [r.stderr for r in results]
    # An EOF at first contact every time, never a reset that depends on timing.
    for failed in results[:2]:
        assert "Could not read from remote repository" in failed.stderr, failed.stderr
    assert repo.head in results[2].stdout
    assert proxy.connections == 3


@pytest.mark.parametrize("pause", [0.0, 0.5])
def test_v0_only_reads_a_request_line_split_across_writes(
    served: tuple[GitServer, Repo], pause: float
) -> None:
    server, repo = served
    with FlakyProxy(("127.0.0.1", server.port), v0_only=True) as proxy:
        reply = first_reply(proxy.port, V2_REQUEST % repo.name.encode(), pause=pause)
    # A v0 ref advertisement (v2 would start "version 2"), with the head commit first.
    assert reply[4:44].decode() == repo.head, reply
    assert b"version 2" not in reply


def test_v0_only_real_git_speaks_v0(served: tuple[GitServer, Repo]) -> None:
    server, repo = served
    with FlakyProxy(("127.0.0.1", server.port), v0_only=True) as proxy:
        result = subprocess.run(
            ["git", "ls-remote", f"git://127.0.0.1:{proxy.port}/{repo.name}"],
            capture_output=True,
            text=True,
            env=dict(git_env(), GIT_TRACE_PACKET="1"),
            timeout=60,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    assert repo.head in result.stdout
    assert "version 2" not in result.stderr  # the trace of what the server said


@pytest.mark.slow
def test_a_server_slower_than_any_old_timeout_still_answers(tmp_path: Path) -> None:
    """The upstream says nothing for 12 s (the proxy used to give up after 10)."""
    listener = socket.create_server(("127.0.0.1", 0))
    served = threading.Event()

    def slow_server() -> None:
        conn, _ = listener.accept()
        with conn:
            request = conn.recv(64)
            served.wait(12)  # a loaded machine starting upload-pack
            conn.sendall(b"late answer to " + request)

    thread = threading.Thread(target=slow_server, daemon=True)
    thread.start()
    try:
        with (
            FlakyProxy(("127.0.0.1", listener.getsockname()[1])) as proxy,
            socket.create_connection(("127.0.0.1", proxy.port), timeout=60) as client,
        ):
            client.sendall(b"hello")
            assert client.recv(64) == b"late answer to hello"
    finally:
        served.set()
        thread.join(5)
        listener.close()


def test_leaving_the_with_ends_open_connections(served: tuple[GitServer, Repo]) -> None:
    server, _ = served
    with FlakyProxy(("127.0.0.1", server.port), v0_only=True) as proxy:
        idle = socket.create_connection(("127.0.0.1", proxy.port), timeout=60)
        # Half a header and then nothing: the proxy waits for the rest of the line.
        idle.sendall(b"00")
        deadline = time.monotonic() + 60
        while proxy.connections == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proxy.connections == 1
        started = time.monotonic()
    with idle:
        assert idle.recv(16) == b""  # the proxy hung up
    assert time.monotonic() - started < 5
    assert not [t.name for t in proxy._threads if t.is_alive()]


def test_an_upstream_that_is_down_is_a_hang_up() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # closed again: nothing listens there
    with FlakyProxy(("127.0.0.1", port)) as proxy:
        result = ls_remote(proxy.port, "anything")
    assert result.returncode == 128
    assert "Could not read from remote repository" in result.stderr, result.stderr
    assert proxy.connections == 1


def test_refuses_a_non_loopback_upstream() -> None:
    with pytest.raises(ValueError, match="only connects"):
        FlakyProxy(("10.0.0.1", 9418))
