"""Counters of the work the controller does on instances, for tests, the
benchmark and ``/healthz``. Incremented from executor threads; a lost update
under a race would only make a counter low, but the lock keeps them exact."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass
class Stats:
    #: Full reads of a progress document (SFTP open+read, or a local file read).
    remote_reads: int = 0
    #: Cheap ``stat`` calls that decided whether a read was needed.
    remote_stats: int = 0
    #: Progress requests answered from the cache without touching the instance.
    cache_hits: int = 0
    #: Agent commands run (start, status, cancel, cleanup).
    commands: int = 0
    #: Agent bundles uploaded.
    uploads: int = 0
    #: SSH connections opened.
    connections: int = 0
    #: Progress documents (or status answers) that did not parse.
    unreadable_progress: int = 0
    #: Requests refused before the token was looked at: a foreign Host, Origin or
    #: site, or a body that is not JSON (see controller.api.guard).
    refused_requests: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + amount)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "_lock"}
