"""Ways to reach the machine an install runs on: ``ssh`` and ``local``.

Imports ``controller.ssh`` and ``controller.common`` only (of the controller):
the task core builds on it, never the reverse.
"""

from __future__ import annotations

import threading

from controller.common.config import Settings
from controller.common.stats import Stats
from controller.common.target import Target
from controller.ssh.pool import SSHPool
from controller.transports.base import AgentReply, FileStat, Transport
from controller.transports.local import LocalTransport
from controller.transports.ssh import SshTransport

__all__ = ["AgentReply", "FileStat", "Transport", "Transports"]


class Transports:
    """One transport object per machine, so per-machine facts (home dir, agent
    uploaded) are learnt once."""

    def __init__(
        self,
        settings: Settings,
        pool: SSHPool,
        stats: Stats,
        bundle_data: bytes,
        bundle_sha256: str,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.stats = stats
        self._bundle = (bundle_data, bundle_sha256)
        self._lock = threading.Lock()
        self._by_key: dict[str, Transport] = {}

    def get(self, target: Target) -> Transport:
        with self._lock:
            transport = self._by_key.get(target.key)
            if transport is None:
                if target.kind == "local":
                    transport = LocalTransport(self.settings, self.stats, *self._bundle)
                else:
                    transport = SshTransport(
                        target, self.pool, self.settings, self.stats, *self._bundle
                    )
                self._by_key[target.key] = transport
            return transport

    def forget(self, target: Target) -> None:
        """Drop what was learnt about ``target`` (after it was replaced, say)."""
        with self._lock:
            self._by_key.pop(target.key, None)
