"""A loopback port that accepts TCP connections and never says a word.

It stands in for an instance whose network drops everything after the SYN: a
client gets no SSH banner and has only its own timeout to go by. (Dropping
packets outright needs firewall rules, which a benchmark should not touch.)

``accepted`` counts every connection the kernel has completed by the time it is
read, not only those the background thread got round to: on a loaded machine
that thread may not run for seconds, and a test reading the count right after
its client gave up must still see the attempt.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from types import TracebackType


class Blackhole:
    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        self._sock.setblocking(False)
        self.port: int = self._sock.getsockname()[1]
        self._accepted = 0
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="blackhole", daemon=True)

    @property
    def accepted(self) -> int:
        self._drain()
        return self._accepted

    def _drain(self) -> None:
        """Take every connection waiting in the backlog; they are held, silent."""
        with self._lock:
            while True:
                try:
                    conn, _ = self._sock.accept()
                except OSError:  # nothing waiting (EAGAIN), or closed: the next round
                    return
                self._accepted += 1
                self._held.append(conn)  # held open and silent until stop()

    def _run(self) -> None:
        # Holding connections as they come keeps the backlog from filling up.
        while not self._stop.is_set():
            with contextlib.suppress(OSError, ValueError):
                ready, _, _ = select.select([self._sock], [], [], 0.2)
                if ready:
                    self._drain()

    def __enter__(self) -> Blackhole:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(5)
        with self._lock:
            for conn in self._held:
                with contextlib.suppress(OSError):
                    conn.close()
            self._sock.close()
