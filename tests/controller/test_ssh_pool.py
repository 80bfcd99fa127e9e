"""The SSH pool and host-key policy against a real sshd."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from controller.common.config import Settings
from controller.common.errors import AuthFailed, HostKeyChanged, HostKeyError, Unreachable
from controller.common.stats import Stats
from controller.common.target import Target, parse_target
from controller.ssh.hostkeys import KnownHosts
from controller.ssh.pool import SSHPool
from tests.bench.blackhole import Blackhole
from tests.controller.conftest import make_settings
from tests.support.sshd import SshServer, make_key

pytestmark = pytest.mark.timeout(60)


def _pool(settings: Settings) -> SSHPool:
    return SSHPool(
        settings, KnownHosts(settings.known_hosts_path, settings.host_key_policy), Stats()
    )


def _target(server: SshServer) -> Target:
    return parse_target(server.connection_string())


def test_commands_stdin_exit_status_and_nodelay(
    tmp_path: Path, client_key: Path, sshd: SshServer
) -> None:
    pool = _pool(make_settings(tmp_path, client_key))
    try:
        target = _target(sshd)
        result = pool.run(target, "cat; echo oops >&2; exit 3", b"payload", timeout=10)
        assert (result.exit_status, result.stdout, result.stderr) == (3, b"payload", b"oops\n")
        conn = pool._connections[target.key][0]
        sock = conn.transport.sock
        assert isinstance(sock, socket.socket)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        # Pooled: the next command reuses the connection.
        pool.run(target, "true", None, timeout=10)
        assert pool.stats.connections == 1
        home = pool.sftp(target, lambda sftp, home: home)
        assert home == str(Path.home())
    finally:
        pool.close()


@pytest.mark.parametrize(("max_connections", "expected"), [(4, range(3, 5)), (1, range(1, 2))])
def test_channels_per_connection_are_capped_and_callers_queue(
    tmp_path: Path, client_key: Path, sshd: SshServer, max_connections: int, expected: range
) -> None:
    settings = make_settings(
        tmp_path,
        client_key,
        max_channels_per_connection=5,
        max_connections_per_host=max_connections,
    )
    pool = _pool(settings)
    target = _target(sshd)
    errors: list[BaseException] = []
    results: list[int] = []

    def work() -> None:
        try:
            results.append(pool.run(target, "sleep 0.3; echo ok", None, timeout=30).exit_status)
        except BaseException as exc:
            errors.append(exc)

    try:
        threads = [threading.Thread(target=work) for _ in range(15)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        assert results == [0] * 15
        assert pool.connection_count(target) in expected
        assert all(c.in_use == 0 for c in pool._connections[target.key])
    finally:
        pool.close()


def test_reconnects_after_a_drop(tmp_path: Path, client_key: Path, sshd: SshServer) -> None:
    pool = _pool(make_settings(tmp_path, client_key))
    target = _target(sshd)
    try:
        assert pool.run(target, "echo one", None, timeout=10).stdout == b"one\n"
        assert pool.sftp(target, lambda sftp, home: sftp.stat(home).st_size) is not None
        assert sshd.kill_sessions() >= 1
        deadline = time.monotonic() + 10
        while pool._connections[target.key][0].transport.is_active():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # SFTP retries on a fresh connection by itself; commands get a new one too.
        assert pool.sftp(target, lambda sftp, home: home) == str(Path.home())
        assert pool.run(target, "echo two", None, timeout=10).stdout == b"two\n"
        assert pool.stats.connections == 2
    finally:
        pool.close()


def test_unreachable_and_wrong_key(tmp_path: Path, client_key: Path, sshd: SshServer) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    # A refused connection fails at once, not after the connect timeout: with a
    # 60 s timeout, the generous 30 s bound (for a loaded machine) tells the two apart.
    pool = _pool(make_settings(tmp_path, client_key, connect_timeout=60))
    try:
        began = time.monotonic()
        with pytest.raises(Unreachable, match="cannot connect"):
            pool.run(Target("ssh", "root", "127.0.0.1", free), "true", None, timeout=5)
        assert time.monotonic() - began < 30
    finally:
        pool.close()
    stranger = make_key(tmp_path / "stranger")
    pool = _pool(make_settings(tmp_path, stranger))
    try:
        with pytest.raises(AuthFailed, match=r"authentication as root@127\.0\.0\.1"):
            pool.run(_target(sshd), "true", None, timeout=5)
    finally:
        pool.close()
    assert sshd.session_count() == 0


def test_host_key_policies(tmp_path: Path, client_key: Path, sshd: SshServer) -> None:
    target = _target(sshd)
    strict = _pool(make_settings(tmp_path, client_key, host_key_policy="strict"))
    try:
        with pytest.raises(HostKeyError, match="not in"):
            strict.run(target, "true", None, timeout=5)
    finally:
        strict.close()

    tofu_settings = make_settings(tmp_path, client_key)
    tofu = _pool(tofu_settings)
    try:
        tofu.run(target, "true", None, timeout=5)
    finally:
        tofu.close()
    assert sshd.host_public_key() in tofu_settings.known_hosts_path.read_text()

    # Now strict accepts it (it is recorded) ...
    strict = _pool(make_settings(tmp_path, client_key, host_key_policy="strict"))
    try:
        strict.run(target, "true", None, timeout=5)
    finally:
        strict.close()

    # ... and a new key on the same address is refused until forgotten.
    sshd.stop()
    impostor = SshServer(tmp_path / "impostor", port=sshd.port, client_key=client_key).start()
    try:
        tofu = _pool(tofu_settings)
        try:
            with pytest.raises(
                HostKeyChanged, match=re.escape(f"nodeferry hosts forget 127.0.0.1:{sshd.port}")
            ):
                tofu.run(target, "true", None, timeout=5)
            assert impostor.session_count() == 0
            insecure = _pool(make_settings(tmp_path, client_key, host_key_policy="insecure"))
            try:
                assert insecure.run(target, "echo in", None, timeout=5).stdout == b"in\n"
            finally:
                insecure.close()
            assert KnownHosts(tofu_settings.known_hosts_path, "tofu").forget("127.0.0.1", sshd.port)
            assert tofu.run(target, "true", None, timeout=5).exit_status == 0
            assert impostor.host_public_key() in tofu_settings.known_hosts_path.read_text()
        finally:
            tofu.close()
    finally:
        impostor.stop()


def test_adapts_to_a_lower_max_sessions(tmp_path: Path, client_key: Path) -> None:
    strict_server = SshServer(
        tmp_path / "sshd-max2", client_key=client_key, extra_config="MaxSessions 2"
    ).start()
    pool = _pool(
        make_settings(
            tmp_path, client_key, max_channels_per_connection=5, max_connections_per_host=4
        )
    )
    target = _target(strict_server)
    errors: list[BaseException] = []
    results: list[int] = []

    def work() -> None:
        try:
            results.append(pool.run(target, "sleep 0.3", None, timeout=30).exit_status)
        except BaseException as exc:
            errors.append(exc)

    try:
        threads = [threading.Thread(target=work) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        assert results == [0] * 8
        # It learnt the lower limit instead of failing.
        assert any(c.capacity < 5 for c in pool._connections[target.key])
    finally:
        pool.close()
        strict_server.stop()


def _at_once(count: int, call: Callable[[], object]) -> list[BaseException | None]:
    """Run ``call`` in ``count`` threads released together; each one's exception."""
    outcomes: list[BaseException | None] = [None] * count
    gate = threading.Barrier(count)

    def work(index: int) -> None:
        gate.wait(10)
        try:
            call()
        except BaseException as exc:
            outcomes[index] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    return outcomes


def test_connection_attempts_are_single_flight_per_host(tmp_path: Path, client_key: Path) -> None:
    connect_timeout = 2.0
    pool = _pool(make_settings(tmp_path, client_key, connect_timeout=connect_timeout))
    try:
        with Blackhole() as silent:
            target = Target("ssh", "root", "127.0.0.1", silent.port)
            began = time.monotonic()
            outcomes = _at_once(6, lambda: pool.run(target, "true", None, timeout=5))
            elapsed = time.monotonic() - began
            accepted = silent.accepted
        # One attempt, shared: every caller fails when it times out, with its error.
        assert accepted == 1
        assert elapsed < connect_timeout + 3, elapsed
        assert all(isinstance(exc, Unreachable) for exc in outcomes), outcomes
        messages = {str(exc) for exc in outcomes}
        assert len(messages) == 1, messages
        assert f"root@127.0.0.1:{silent.port}" in messages.pop()
        # The failure is not remembered: once an sshd listens there, it connects.
        server = SshServer(tmp_path / "sshd-late", port=silent.port, client_key=client_key)
        server.start()
        try:
            assert pool.run(target, "echo up", None, timeout=10).stdout == b"up\n"
        finally:
            server.stop()
    finally:
        pool.close()


def test_a_failed_login_fails_every_waiter_at_once(
    tmp_path: Path, client_key: Path, sshd: SshServer
) -> None:
    pool = _pool(make_settings(tmp_path, make_key(tmp_path / "stranger")))
    try:
        outcomes = _at_once(5, lambda: pool.run(_target(sshd), "true", None, timeout=5))
    finally:
        pool.close()
    assert all(isinstance(exc, AuthFailed) for exc in outcomes), outcomes
    assert len({str(exc) for exc in outcomes}) == 1
    # One login attempt reached sshd, not five (sshd logs a refusal before it answers).
    assert sshd.log_text().count("Failed publickey for") == 1
    assert sshd.session_count() == 0
