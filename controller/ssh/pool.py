"""Pooled paramiko connections, one pool for all instances.

Blocking code: call it from the app's executor, never from the event loop.

Per (user, host, port) the pool keeps up to ``max_connections_per_host``
connections with at most ``max_channels_per_connection`` channels each (one of
them the connection's SFTP session): sshd's ``MaxSessions`` (10) frees slots
late, and 50 threads on one connection saw most channel opens refused. A caller
that finds every slot busy waits for one instead of failing. Sockets get
``TCP_NODELAY`` (an exec round trip on loopback drops from ~48 ms to ~6 ms) and
a keepalive; a connection that dropped is replaced on next use.

Connecting is single-flight per host: callers that need a connection while one
is being opened wait for that attempt, and if it fails they all fail with its
error at once (a silent host costs every waiter one connect timeout, not one
each in turn). Failures are not cached; the next caller tries again.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import paramiko

from controller.common.config import Settings
from controller.common.errors import AuthFailed, RemoteError, Unreachable
from controller.common.stats import Stats
from controller.common.target import Target
from controller.ssh.hostkeys import KnownHosts

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Errors that mean the connection itself is gone.
DROPPED = (EOFError, OSError, paramiko.SSHException)


@dataclass
class CommandResult:
    command: str
    exit_status: int
    stdout: bytes
    stderr: bytes


class Connection:
    def __init__(self, target: Target, transport: paramiko.Transport, capacity: int) -> None:
        self.target = target
        self.transport = transport
        self.capacity = capacity
        self.in_use = 0
        self.sftp: paramiko.SFTPClient | None = None
        self.sftp_lock = threading.Lock()
        self.home: str | None = None
        self.dead = False
        #: The jump host's connection this one runs through (closed with it).
        self.jump: Connection | None = None

    @property
    def alive(self) -> bool:
        return not self.dead and self.transport.is_active()

    @property
    def free_slots(self) -> int:
        return self.capacity - (1 if self.sftp is not None else 0) - self.in_use

    def close(self) -> None:
        self.dead = True
        with contextlib.suppress(Exception):
            if self.sftp is not None:
                self.sftp.close()
        with contextlib.suppress(Exception):
            self.transport.close()
        if self.jump is not None:
            self.jump.close()


class _Attempt:
    """A connection being opened; waiters learn its outcome."""

    def __init__(self, limit: float) -> None:
        #: The longest it can take (TCP connect, handshake and login timeouts).
        self.limit = limit
        self.error: BaseException | None = None


class SSHPool:
    def __init__(self, settings: Settings, known_hosts: KnownHosts, stats: Stats) -> None:
        self.settings = settings
        self.known_hosts = known_hosts
        self.stats = stats
        self._cond = threading.Condition()
        self._connections: dict[str, list[Connection]] = {}
        self._attempts: dict[str, _Attempt] = {}
        self._closed = False

    # -- connecting -------------------------------------------------------------

    def _keys(self, target: Target) -> list[paramiko.PKey]:
        keys: list[paramiko.PKey] = []
        # The target's own key files (``-i`` from keys_dir, or the operator's ssh
        # config IdentityFile) go first, as ssh offers them.
        paths = [Path(p) for p in target.identities]
        paths += [p for p in self.settings.key_paths() if p not in paths]
        for path in paths:
            try:
                keys.append(paramiko.PKey.from_path(Path(path)))
            except (OSError, paramiko.SSHException, ValueError) as exc:
                log.warning("cannot use SSH key %s: %s", path, exc)
        if self.settings.use_ssh_agent and os.environ.get("SSH_AUTH_SOCK"):
            with contextlib.suppress(paramiko.SSHException, OSError):
                keys.extend(paramiko.Agent().get_keys())
        return keys

    def _socket(
        self, target: Target, where: str
    ) -> tuple[socket.socket | paramiko.Channel, Connection | None]:
        """A byte stream to the target's sshd: a TCP socket, or, with a jump host, a
        direct-tcpip channel through a connection of its own to that host (ssh -J does
        the same; nothing runs a shell)."""
        timeout = self.settings.connect_timeout
        if target.jump is not None:
            jump = self._open(target.jump)
            try:
                channel = jump.transport.open_channel(
                    "direct-tcpip", (target.host, target.port), ("127.0.0.1", 0), timeout=timeout
                )
            except paramiko.ChannelException as exc:
                jump.close()
                raise Unreachable(
                    f"cannot connect to {where}: the jump host {target.jump.where} could not "
                    f"reach it ({exc.text or exc.code})"
                ) from None
            except DROPPED as exc:
                jump.close()
                raise Unreachable(
                    f"cannot connect to {where}: the jump host {target.jump.where} dropped the "
                    f"connection ({exc})"
                ) from None
            return channel, jump
        try:
            sock = socket.create_connection((target.host, target.port), timeout=timeout)
        except TimeoutError:
            raise Unreachable(f"cannot connect to {where}: timed out after {timeout:g} s") from None
        except ConnectionRefusedError:
            raise Unreachable(
                f"cannot connect to {where}: connection refused (is sshd running on port "
                f"{target.port}?)"
            ) from None
        except OSError as exc:
            raise Unreachable(f"cannot connect to {where}: {exc.strerror or exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, None

    def _open(self, target: Target) -> Connection:
        """A new logged-in connection, or an error that says which host and port and
        what happened: refused, timed out, no SSH banner, handshake failed, host key
        changed (:class:`HostKeyChanged`), login refused (:class:`AuthFailed`)."""
        timeout = self.settings.connect_timeout
        where = target.where
        sock, jump = self._socket(target, where)
        transport = paramiko.Transport(sock)
        transport.banner_timeout = timeout
        transport.handshake_timeout = timeout
        transport.auth_timeout = timeout
        try:
            server_key = _handshake(transport, where, timeout)
            self.known_hosts.check(target.host, target.port, server_key)
            self._authenticate(transport, target, where)
        except BaseException:
            transport.close()
            if jump is not None:
                jump.close()
            raise
        transport.set_keepalive(max(1, int(self.settings.keepalive_interval)))
        self.stats.add("connections")
        conn = Connection(target, transport, self.settings.max_channels_per_connection)
        conn.jump = jump
        return conn

    def _authenticate(self, transport: paramiko.Transport, target: Target, where: str) -> None:
        keys = self._keys(target)
        if not keys:
            raise AuthFailed(
                f"no SSH key to log in to {where}: set ssh_keys (NODEFERRY_SSH_KEYS) or "
                "create ~/.ssh/id_ed25519"
            )
        tried = []
        for key in keys:
            tried.append(f"{key.get_name()} {key.fingerprint}")
            try:
                transport.auth_publickey(target.user, key)
            except paramiko.BadAuthenticationType as exc:
                raise AuthFailed(
                    f"{where} does not accept public-key logins (it allows: "
                    f"{', '.join(exc.allowed_types) or 'nothing'})"
                ) from None
            except paramiko.AuthenticationException:
                continue
            except DROPPED as exc:
                raise Unreachable(
                    f"connection to {where} dropped while logging in: {exc}"
                ) from None
            if transport.is_authenticated():
                return
        raise AuthFailed(
            f"authentication as {where} failed with key(s): {'; '.join(tried)}. Add the "
            "controller's public key to ~/.ssh/authorized_keys on the instance."
        )

    # -- slots -------------------------------------------------------------------

    def _live(self, key: str) -> list[Connection]:
        conns = self._connections.setdefault(key, [])
        for conn in [c for c in conns if not c.alive]:
            conns.remove(conn)
            conn.close()
        return conns

    def _acquire(self, target: Target, *, want_sftp: bool) -> tuple[Connection, bool]:
        """A connection, and whether a channel slot was reserved on it (``in_use`` += 1;
        give it back with :meth:`_release`). For SFTP, a connection that already has an
        SFTP session comes without a reservation.

        Connecting is single-flight per host: callers that find an attempt under way
        wait for it instead of queueing attempts of their own, and when it fails with
        no connection to fall back on they all fail at once with its error. The
        failure is not remembered: a caller that arrives later tries again.
        """
        key = target.key
        deadline = time.monotonic() + self.settings.connect_timeout + self.settings.command_timeout
        joined: _Attempt | None = None
        with self._cond:
            while True:
                if self._closed:
                    raise Unreachable("the controller is shutting down")
                conns = self._live(key)
                if want_sftp:
                    with_sftp = [c for c in conns if c.sftp is not None]
                    if with_sftp:
                        return with_sftp[0], False
                free = [c for c in conns if c.free_slots > 0]
                if free:
                    conn = max(free, key=lambda c: c.free_slots)
                    conn.in_use += 1
                    return conn, True
                attempt = self._attempts.get(key)
                if attempt is not None:
                    if joined is not attempt:
                        joined = attempt
                        # Its outcome is worth waiting for even past our deadline:
                        # the attempt is bounded by the connect timeouts.
                        deadline = max(deadline, time.monotonic() + attempt.limit)
                elif joined is not None and joined.error is not None:
                    if not conns:
                        raise _shared_error(joined.error, target)
                    # The host is reachable (those connections are busy): wait for
                    # a slot rather than trying again at once.
                elif len(conns) < self.settings.max_connections_per_host:
                    attempt = _Attempt(limit=3 * self.settings.connect_timeout + 5)
                    self._attempts[key] = attempt
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise Unreachable(f"{target} is busy: no SSH channel became free in time")
                self._cond.wait(remaining)
        try:
            conn = self._open(target)
        except BaseException as exc:
            with self._cond:
                attempt.error = exc
                self._attempts.pop(key, None)
                self._cond.notify_all()
            raise
        with self._cond:
            self._attempts.pop(key, None)
            self._connections.setdefault(key, []).append(conn)
            conn.in_use += 1
            self._cond.notify_all()
        return conn, True

    def _release(self, conn: Connection) -> None:
        with self._cond:
            conn.in_use -= 1
            self._cond.notify_all()

    def _drop(self, conn: Connection) -> None:
        with self._cond:
            conn.close()
            self._cond.notify_all()

    # -- operations ----------------------------------------------------------------

    def sftp(self, target: Target, operation: Callable[[paramiko.SFTPClient, str], T]) -> T:
        """Run ``operation(sftp, home_dir)`` on a pooled SFTP session.

        SFTP calls are idempotent reads and writes of whole files, so one retry on a
        fresh connection hides a dropped one.
        """
        for attempt in (1, 2):
            conn, reserved = self._acquire(target, want_sftp=True)
            try:
                with conn.sftp_lock:
                    try:
                        if conn.sftp is None:
                            # The reserved slot becomes the connection's SFTP channel.
                            client = conn.transport.open_sftp_client()
                            if client is None:
                                raise paramiko.SSHException("the SFTP subsystem is not available")
                            channel = client.get_channel()
                            if channel is not None:
                                channel.settimeout(self.settings.command_timeout)
                            conn.home = client.normalize(".")
                            conn.sftp = client
                    finally:
                        if reserved:
                            self._release(conn)
                    if conn.sftp is None or conn.home is None:  # set together above
                        raise paramiko.SSHException("the SFTP session did not open")
                    return operation(conn.sftp, conn.home)
            except DROPPED as exc:
                if conn.transport.is_active() and not isinstance(
                    exc, (paramiko.SSHException, TimeoutError)
                ):
                    # An SFTP status reply (no such file, permission denied): the
                    # connection is fine and the caller decides what it means.
                    raise
                self._drop(conn)
                if attempt == 2:
                    raise Unreachable(f"lost the connection to {target}: {exc}") from None
        raise AssertionError("unreachable")

    def run(
        self, target: Target, command: str, stdin: bytes | None, timeout: float
    ) -> CommandResult:
        """Run ``command`` (already quoted) and collect its output and exit status.

        A session that could not be opened or whose exec request was refused never
        ran the command, so that step is retried: on a fresh connection when a pooled
        one died unnoticed, or on another slot when sshd allows fewer sessions per
        connection than configured (MaxSessions).
        """
        deadline = time.monotonic() + self.settings.connect_timeout + timeout
        refusals = 0
        while True:
            conn, _ = self._acquire(target, want_sftp=False)
            try:
                channel = self._exec(conn, command, timeout)
                if channel is None:
                    refusals += 1
                    if time.monotonic() > deadline:
                        raise Unreachable(f"{target} kept refusing SSH sessions ({refusals} times)")
                    # sshd frees a closed session's slot a little later: queue, don't fail.
                    time.sleep(min(0.5, 0.02 * refusals))
                    continue
                try:
                    if stdin:
                        channel.sendall(stdin)
                    channel.shutdown_write()
                    stdout = _read_all(channel.recv)
                    stderr = _read_all(channel.recv_stderr)
                    status = channel.recv_exit_status()
                except TimeoutError:
                    raise RemoteError(
                        f"a command on {target} did not finish within {timeout:g} s: {command}"
                    ) from None
                except DROPPED as exc:
                    self._drop(conn)
                    raise Unreachable(f"lost the connection to {target}: {exc}") from None
                finally:
                    channel.close()
            finally:
                self._release(conn)
            self.stats.add("commands")
            return CommandResult(command, status, stdout, stderr)

    def _exec(self, conn: Connection, command: str, timeout: float) -> paramiko.Channel | None:
        """A channel running ``command``, or None when the session was refused (and
        the connection dropped or its capacity lowered, so a retry goes elsewhere)."""
        channel: paramiko.Channel | None = None
        try:
            channel = conn.transport.open_session(timeout=self.settings.connect_timeout)
            channel.settimeout(timeout)
            channel.exec_command(command)
        except DROPPED as exc:
            if channel is not None:
                channel.close()
            if not conn.transport.is_active() or not isinstance(exc, paramiko.SSHException):
                self._drop(conn)
                return None
            # sshd allows fewer sessions than we assumed: what is open on this
            # connection now (other callers' channels and its SFTP) is its limit.
            log.info("%s refused a session (%s); using fewer per connection", conn.target, exc)
            with self._cond:
                open_now = conn.in_use - 1 + (1 if conn.sftp is not None else 0)
                conn.capacity = max(1, open_now)
            return None
        return channel

    def connection_count(self, target: Target) -> int:
        with self._cond:
            return len(self._live(target.key))

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for conns in self._connections.values():
                for conn in conns:
                    conn.close()
            self._connections.clear()
            self._cond.notify_all()


def _read_all(recv: Callable[[int], bytes]) -> bytes:
    chunks: list[bytes] = []
    while True:
        chunk = recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _handshake(transport: paramiko.Transport, where: str, timeout: float) -> paramiko.PKey:
    """Run the SSH handshake; the server's host key."""
    began = time.monotonic()
    failure: BaseException | None = None
    try:
        # A little longer than the banner timeout, so a silent peer ends in
        # paramiko's banner error rather than in a race with it.
        transport.start_client(timeout=timeout + 1)
    except (paramiko.SSHException, EOFError, OSError) as exc:
        failure = exc
    # start_client returns quietly when its timeout passes mid-handshake.
    if failure is not None or not transport.is_active() or transport.host_key is None:
        raise _handshake_error(where, transport, failure, timeout, time.monotonic() - began)
    return transport.get_remote_server_key()


def _handshake_error(
    where: str,
    transport: paramiko.Transport,
    exc: BaseException | None,
    timeout: float,
    took: float,
) -> Unreachable:
    """Say which step of the SSH handshake failed, and how."""
    if not transport.remote_version:
        if took >= timeout * 0.9:
            return Unreachable(
                f"SSH handshake with {where} timed out after {timeout:g} s waiting for the "
                "server's banner: the port accepts connections but sends nothing (is it "
                "an SSH server?)"
            )
        return Unreachable(f"{where} closed the connection before sending an SSH banner")
    if exc is None or took >= timeout * 0.9:
        return Unreachable(f"SSH handshake with {where} timed out after {timeout:g} s")
    return Unreachable(f"SSH handshake with {where} failed: {exc}")


def _shared_error(error: BaseException, target: Target) -> BaseException:
    """A copy of a failed connection attempt's error for one of its waiters (an
    exception object raised in several threads at once would share a traceback)."""
    if isinstance(error, RemoteError):
        return copy.copy(error)
    return Unreachable(f"cannot connect to {target}: {error}")
