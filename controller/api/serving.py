"""Serving the app on a socket so that half-open clients cost nothing.

aiohttp keeps a connection that never finishes its request line for its
keep-alive timeout, 3630 s by default, and has no connection cap: a thousand
such sockets used every file descriptor the process had, and then ``/healthz``,
the API and the SSH pool all failed with "Too many open files". Here:

- ``client_idle_timeout`` closes a connection that has not sent a whole request
  (its headers) within that many seconds of connecting, or of its last answer;
  a running request, an event stream or a WebSocket is not idle;
- ``max_client_connections`` caps open client connections: one past the cap is
  answered 503 and closed at once, so descriptors stay for SSH and SQLite;
- the soft open-file limit is raised to the hard one at start, and the cap is
  kept below it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from controller.common.config import Settings

log = logging.getLogger(__name__)

#: Descriptors kept for everything but client connections: SSH sessions to a
#: hundred instances, SQLite, the agent bundle, logs.
RESERVED_FDS = 512

_REFUSAL_BODY = (
    b'{"success": false, "error": "too_many_connections", '
    b'"message": "the controller has too many open connections; try again"}'
)
_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Connection: close\r\nRetry-After: 5\r\n"
    b"Content-Length: " + str(len(_REFUSAL_BODY)).encode() + b"\r\n\r\n" + _REFUSAL_BODY
)


def raise_open_file_limit() -> int:
    """The soft RLIMIT_NOFILE raised to the hard one; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return soft


def connection_cap(settings: Settings, open_file_limit: int) -> int:
    """The configured cap, kept below what the open-file limit leaves for clients."""
    room = max(16, open_file_limit - RESERVED_FDS)
    return min(settings.max_client_connections, room)


class _Refuse(asyncio.Protocol):
    """One connection past the cap: a 503 and the socket closed, nothing read."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if isinstance(transport, asyncio.WriteTransport):
            transport.write(_REFUSAL)
        transport.close()


class CappedTCPSite(web.BaseSite):
    """``web.TCPSite`` with a cap on open connections."""

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, *, max_connections: int
    ) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self._max = max_connections
        self.refused = 0

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    def _factory(self) -> asyncio.Protocol:
        server = self._runner.server
        if server is None:  # start() sets it up before the first connection
            raise RuntimeError("the site's runner was not set up")
        if len(server.connections) >= self._max:
            self.refused += 1
            return _Refuse()
        return server()

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._factory, self._host, self._port, backlog=self._backlog, reuse_address=True
        )


def runner_for(
    app: web.Application,
    settings: Settings,
    access_log_class: type[AbstractAccessLogger] | None = None,
) -> web.AppRunner:
    kwargs: dict[str, Any] = {"keepalive_timeout": settings.client_idle_timeout}
    if access_log_class is not None:
        kwargs["access_log_class"] = access_log_class
    return web.AppRunner(app, **kwargs)


async def serve(
    app: web.Application,
    settings: Settings,
    access_log_class: type[AbstractAccessLogger] | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM, then shut down as ``web.run_app`` does."""
    cap = connection_cap(settings, raise_open_file_limit())
    runner = runner_for(app, settings, access_log_class)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        site = CappedTCPSite(runner, settings.host, settings.port, max_connections=cap)
        await site.start()
        log.info("accepting up to %d client connections", cap)
        await stop.wait()
    finally:
        await runner.cleanup()
