"""``create_app(settings)``: the aiohttp application, used by ``nodeferry serve``
and by tests alike.

Everything is built here (the executor every blocking call runs in, the task
registry, the SSH pool, the task service, fleets, the live views' shared state)
so it is in place before start-up and route modules only add routes;
``cleanup_ctx`` starts the service's periodic jobs and closes it all on shutdown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from controller.api import events, ws
from controller.api.appkeys import (
    EXECUTOR,
    FLEETS,
    KNOWN_HOSTS,
    POOL,
    SERVICE,
    SETTINGS,
    SOCKETS,
    STATS,
    STREAMS,
)
from controller.api.guard import guard_middleware
from controller.api.livestate import OpenStreams, Sockets, TaskListFeed
from controller.api.middleware import error_middleware
from controller.api.routes import setup_routes
from controller.common import datadir
from controller.common.apitoken import ensure_token, read_token, store_token
from controller.common.config import Settings
from controller.common.stats import Stats
from controller.core.fleet import Fleets
from controller.core.fleet_store import FleetStore
from controller.core.registry import Registry
from controller.core.service import TaskService
from controller.ssh.hostkeys import KnownHosts
from controller.ssh.pool import SSHPool
from controller.storage.database import Database
from controller.storage.shared import HostKeyStore, shared_token
from controller.transports import Transports

#: Threads for paramiko, SQLite and file I/O. Many tasks poll at once and a
#: connect may block for the whole connect timeout, so more than the CPU count.
EXECUTOR_THREADS = 32


def create_app(settings: Settings) -> web.Application:
    # The agent bundle is built from the agent sources once per process.
    from agent.bundle import bundle

    settings.validate()
    # The data dir holds the token and known_hosts whatever the database is; the
    # SQLite file only when the registry lives there.
    datadir.prepare(settings.data_dir, None if settings.database_url else settings.database_path)
    database = Database(settings.registry_url)
    if settings.no_auth:
        settings.token = None
    elif settings.token is None:
        settings.token = controller_token(settings, database)
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        # One guard for every route, the WebSocket included (Host, Origin, token).
        middlewares=[error_middleware, guard_middleware],
    )
    stats = Stats()
    known_hosts = KnownHosts(
        settings.known_hosts_path,
        settings.host_key_policy,
        HostKeyStore(database) if database.shared else None,
    )
    executor = ThreadPoolExecutor(EXECUTOR_THREADS, thread_name_prefix="nodeferry-io")
    pool = SSHPool(settings, known_hosts, stats)
    agent_bundle = bundle()
    transports = Transports(settings, pool, stats, agent_bundle.data, agent_bundle.sha256)
    registry = Registry(database)
    app[SETTINGS] = settings
    app[STATS] = stats
    app[KNOWN_HOSTS] = known_hosts
    app[EXECUTOR] = executor
    app[POOL] = pool
    service = TaskService(settings, registry, transports, executor, stats)
    app[SERVICE] = service
    app[FLEETS] = fleets = Fleets(service, FleetStore(database))
    app[SOCKETS] = Sockets(TaskListFeed(service, fleets))
    app[STREAMS] = OpenStreams()
    app.cleanup_ctx.append(_lifecycle)
    # Open streams and sockets would hold a graceful shutdown for its whole timeout.
    app.on_shutdown.append(events.close_streams)
    app.on_shutdown.append(ws.close_sockets)
    setup_routes(app)
    return app


def controller_token(settings: Settings, database: Database) -> str:
    """The API token: ``<data_dir>/token``, made on first start; with a shared
    registry, the one stored there (every replica answers to the same token),
    copied into the data dir so ``nodeferry token`` on this machine prints it."""
    if not database.shared:
        return ensure_token(settings.data_dir)
    token = shared_token(database, read_token(settings.data_dir))
    store_token(settings.data_dir, token)
    return token


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    service = app[SERVICE]
    await service.start_jobs()
    try:
        yield
    finally:
        await service.close()
        app[POOL].close()
        service.registry.close()
        service.registry.db.close()
        app[EXECUTOR].shutdown(wait=False, cancel_futures=True)
