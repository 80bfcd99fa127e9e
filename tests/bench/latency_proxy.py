"""A loopback TCP proxy that adds a fixed one-way delay, so a benchmark sees the
network the way a rented GPU instance far from its git host does.

Each chunk read from one side is delivered to the other side ``delay`` seconds
after it was read, in order, without any bandwidth cap: latency, not
throughput, is what the proxy models. A new connection also waits one round
trip (2 x ``delay``) before anything is forwarded, standing in for the TCP
handshake a real network charges before the first byte.

The proxy runs its own asyncio loop in a daemon thread so synchronous code (a
``git clone`` subprocess, a timing loop) can use it as a context manager::

    with LatencyProxy("127.0.0.1", daemon_port, delay=0.05) as proxy:
        subprocess.run(["git", "clone", f"git://127.0.0.1:{proxy.port}/repo"])
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from types import TracebackType

_CHUNK = 64 * 1024


class LatencyProxy:
    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        delay: float = 0.05,
        listen_host: str = "127.0.0.1",
    ) -> None:
        if target_host != "127.0.0.1" or listen_host != "127.0.0.1":
            # The benchmarks must never reach beyond loopback.
            raise ValueError("the latency proxy only connects 127.0.0.1 to 127.0.0.1")
        if delay < 0:
            raise ValueError("delay must not be negative")
        self.target_host = target_host
        self.target_port = target_port
        self.delay = delay
        self.listen_host = listen_host
        self.port = 0
        self.connections = 0
        #: Bytes forwarded client -> target and target -> client, for "what was sent".
        self.bytes_up = 0
        self.bytes_down = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> int:
        """Listen on a free loopback port and return it."""
        if self._thread is not None:
            raise RuntimeError("proxy already started")
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._handle, self.listen_host, 0)
                )
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:  # handed to the caller of start()
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._shutdown())
            loop.close()

        self._thread = threading.Thread(target=run, name="latency-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("latency proxy did not start within 10 s")
        if failure:
            raise failure[0]
        return self.port

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._thread = None
        self._loop = None

    def __enter__(self) -> LatencyProxy:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- forwarding --------------------------------------------------------------

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self._forward(client_r, client_w)
        except asyncio.CancelledError:
            # The proxy is stopping: the connection simply ends.
            client_w.close()
        finally:
            if task is not None:
                self._tasks.discard(task)

    async def _forward(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        await asyncio.sleep(2 * self.delay)
        try:
            server_r, server_w = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            client_w.close()
            return
        pipes = [
            asyncio.ensure_future(self._pipe(client_r, server_w, upstream=True)),
            asyncio.ensure_future(self._pipe(server_r, client_w, upstream=False)),
        ]
        try:
            # A reset on one side ends the other too, or its read would wait forever.
            await asyncio.wait(pipes, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for writer in (client_w, server_w):
                writer.close()
            for pipe in pipes:
                pipe.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, upstream: bool
    ) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    with contextlib.suppress(OSError):
                        if writer.can_write_eof():
                            writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

        sender = asyncio.ensure_future(deliver())
        try:
            while True:
                try:
                    data = await reader.read(_CHUNK)
                except OSError:
                    data = b""
                queue.put_nowait((loop.time() + self.delay, data))
                if upstream:
                    self.bytes_up += len(data)
                else:
                    self.bytes_down += len(data)
                if not data:
                    break
            await sender
        finally:
            if not sender.done():
                sender.cancel()
