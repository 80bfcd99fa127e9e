"""A TCP proxy on 127.0.0.1 that fails the first connections it gets, then passes
the rest to a real server: a git server with transient failures.

No pytest here.

    with FlakyProxy(("127.0.0.1", git_port), fail_first=1) as proxy:
        proxy.port        # clone git://127.0.0.1:<proxy.port>/repo
        proxy.connections # how many arrived, the failed ones included

A failed connection is accepted and closed at once, as a server that drops the
connection does: git reports "the remote end hung up unexpectedly".

With ``v0_only`` the proxy is an old git server: it strips the client's request
for protocol v2 from the git:// request line, so upload-pack speaks v0 and
enforces ``uploadpack.allowReachableSHA1InWant`` (v2 lets any reachable commit
be fetched by id).
"""

from __future__ import annotations

import contextlib
import socket
import threading


class FlakyProxy:
    def __init__(
        self, upstream: tuple[str, int], fail_first: int = 1, *, v0_only: bool = False
    ) -> None:
        self.upstream = upstream
        self.fail_first = fail_first
        self.v0_only = v0_only
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def __enter__(self) -> FlakyProxy:
        thread = threading.Thread(target=self._accept, name="flaky-proxy", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()
        for thread in self._threads:
            thread.join(5)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            if self.connections <= self.fail_first:
                conn.close()
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                conn.close()
                continue
            with self._lock:
                self._sockets += [conn, upstream]
            for src, dst, first in ((conn, upstream, self.v0_only), (upstream, conn, False)):
                pipe = threading.Thread(target=self._pipe, args=(src, dst, first), daemon=True)
                pipe.start()
                self._threads.append(pipe)

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, strip_v2: bool) -> None:
        with contextlib.suppress(OSError):
            if strip_v2:
                dst.sendall(_without_v2(src.recv(65536)))
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def _without_v2(request: bytes) -> bytes:
    """The git:// request pkt-line without its ``version=2`` extra parameter."""
    body = request[4:].replace(b"\0version=2\0", b"")
    return b"%04x" % (len(body) + 4) + body
