"""Typed keys for what the app holds. A module of its own so route modules
(the event stream, the dashboard) can import them without importing the app."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from controller.common.config import Settings
from controller.common.stats import Stats
from controller.core.fleet import Fleets
from controller.core.service import TaskService
from controller.ssh.hostkeys import KnownHosts
from controller.ssh.pool import SSHPool

SETTINGS = web.AppKey("settings", Settings)
STATS = web.AppKey("stats", Stats)
KNOWN_HOSTS = web.AppKey("known_hosts", KnownHosts)
#: The executor every blocking call runs in (paramiko, SQLite, files).
EXECUTOR = web.AppKey("executor", ThreadPoolExecutor)
POOL = web.AppKey("pool", SSHPool)
#: The task service; present once the app has started (cleanup_ctx).
SERVICE = web.AppKey("service", TaskService)
#: Fleets: many instances started as one (``api/fleet``).
FLEETS = web.AppKey("fleets", Fleets)
