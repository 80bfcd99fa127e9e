"""A TCP proxy on 127.0.0.1 in front of a real server that fails only the
connections a test asks it to: a git server with transient failures, or an old one.

No pytest here.

    with FlakyProxy(("127.0.0.1", git_port), fail_first=1) as proxy:
        proxy.port        # clone git://127.0.0.1:<proxy.port>/repo
        proxy.connections # how many arrived, the failed ones included

``fail_first=N`` accepts the first N connections and hangs up on them at once, as
a server that drops the connection does: git reports "Could not read from remote
repository" (or "the remote end hung up unexpectedly"). The default is 0: nothing
fails unless a test says so.

With ``v0_only`` the proxy is an old git server: it strips the client's request
for protocol v2 from the git:// request line, so upload-pack speaks v0 and
enforces ``uploadpack.allowReachableSHA1InWant`` (v2 lets any reachable commit
be fetched by id).

Under load it stays a faithful wire, so a test fails only for what it tests:

- No read timeout. A loaded machine may take any time to start upload-pack or to
  pack objects; a timeout would turn a slow, healthy server into a dropped
  connection. Nothing here waits without an end, though: leaving the ``with``
  shuts every socket down, which ends every blocked read.
- The request line is read whole, by its pkt-line length. git writes a pkt-line's
  4-byte header and its payload in two ``write`` calls, so one ``recv`` may hold
  only ``0037``; rewriting that alone sent the daemon a flush packet ("Protocol
  error: ''" in its log, "Could not read from remote repository" in git's).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable

_CHUNK = 65536
_V2_REQUEST = b"\0version=2\0"


class FlakyProxy:
    def __init__(
        self, upstream: tuple[str, int], *, fail_first: int = 0, v0_only: bool = False
    ) -> None:
        if upstream[0] != "127.0.0.1":
            raise ValueError("the flaky proxy only connects 127.0.0.1 to 127.0.0.1")
        if fail_first < 0:
            raise ValueError("fail_first must not be negative")
        self.upstream = upstream
        self.fail_first = fail_first
        self.v0_only = v0_only
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        # Only the accept loop polls, to notice the end of the ``with``; the
        # connections it hands out block.
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def __enter__(self) -> FlakyProxy:
        self._spawn(self._accept, "flaky-proxy")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        with self._lock:
            sockets = list(self._sockets)
            threads = list(self._threads)
        for sock in sockets:
            # shutdown, not only close: close() does not wake a thread blocked in recv().
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        for thread in threads:
            thread.join(5)
        self._listener.close()

    def _spawn(self, target: Callable[..., None], name: str, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _keep(self, sock: socket.socket) -> bool:
        """Track ``sock`` for __exit__; False (and closed) once the proxy is stopping."""
        with self._lock:
            if self._stop.is_set():
                sock.close()
                return False
            self._sockets.append(sock)
            return True

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            conn.settimeout(None)  # blocking whatever socket.setdefaulttimeout() says
            if not self._keep(conn):
                continue
            if self.connections <= self.fail_first:
                self._spawn(_hang_up, "flaky-proxy-fail", conn)  # the failure asked for
            else:
                # Its own thread: a slow upstream must not hold up the next accept.
                self._spawn(self._serve, "flaky-proxy-conn", conn)

    def _serve(self, conn: socket.socket) -> None:
        try:
            # Blocking, no timeout: the connect waits as long as the kernel lets it.
            upstream = socket.create_connection(self.upstream)
        except OSError:
            _hang_up(conn)  # the server is down: pass that on as a hang-up
            return
        upstream.settimeout(None)
        if not self._keep(upstream):
            return
        self._spawn(_pipe, "flaky-proxy-down", upstream, conn)
        with contextlib.suppress(OSError):
            if self.v0_only:
                request = _read_pkt_line(conn)
                upstream.sendall(_without_v2(request))
        _pipe(conn, upstream)


def _hang_up(conn: socket.socket) -> None:
    """End the connection the way a server that drops it does: an EOF, every time.

    A bare close() with the client's request unread makes the kernel send a reset
    instead ("Connection reset by peer"), or not, depending on whether the request
    had arrived yet: the failure would change with the timing.
    """
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(_CHUNK):
            pass  # until the client, told of the end, closes its side
    conn.close()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    """Copy ``src`` to ``dst`` until ``src`` ends; then end ``dst``'s side too.

    A clean end (EOF) half-closes ``dst`` so the reply can still come back; a
    reset or a shutdown from __exit__ ends both directions, or the other pipe's
    read would wait for a peer that is gone.
    """
    try:
        while data := src.recv(_CHUNK):
            dst.sendall(data)
    except OSError:
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        return
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    """``size`` bytes, or fewer only when the peer closed first."""
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _read_pkt_line(sock: socket.socket) -> bytes:
    """One whole pkt-line (4 hex digits of length, header included, then the payload).

    Whatever does not parse as one is returned as read, to be passed on unchanged:
    the server, not the proxy, says what is wrong with it.
    """
    header = _read_exactly(sock, 4)
    try:
        length = int(header, 16)
    except ValueError:
        return header
    if len(header) < 4 or length <= 4:
        return header  # short, a flush (0000) or a delimiter: nothing more belongs to it
    return header + _read_exactly(sock, length - 4)


def _without_v2(request: bytes) -> bytes:
    """The git:// request pkt-line without its ``version=2`` extra parameter."""
    body = request[4:]
    if _V2_REQUEST not in body:
        return request
    body = body.replace(_V2_REQUEST, b"")
    return b"%04x" % (len(body) + 4) + body
