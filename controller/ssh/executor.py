"""SSH work on threads of its own, with a limit per host and one for all.

A host that accepts TCP and never answers holds a thread for the whole connect
timeout. On the app's shared executor, forty such hosts took every thread, and a
start to a healthy host waited ten seconds behind them. Here:

- SSH work never runs on the executor that serves SQLite and files;
- ``threads`` is the global limit;
- a host that has not answered yet (or whose last job failed to reach it) runs
  one job at a time, the others wait on the event loop without a thread; once it
  answers, up to ``per_host`` jobs run at once;
- when that one job finds the host unreachable, the jobs that waited for it fail
  with the same error at once: they share its connection attempt, as concurrent
  connects to one host share one in the SSH pool.

So a dead host costs one thread for at most the connect timeout, and healthy
hosts are starved only when more than ``threads - 1`` dead hosts are tried at once.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from controller.common.errors import Unreachable

T = TypeVar("T")

#: Failures that say the host did not answer (as opposed to answering "no", or an
#: SFTP error such as a missing file, which is an answer).
NO_ANSWER = (Unreachable, ConnectionError, TimeoutError, EOFError)


@dataclass
class _Host:
    active: int = 0
    answered: bool = False
    waiters: list[asyncio.Future[None]] = field(default_factory=list)


class HostLimitedExecutor:
    def __init__(self, threads: int, per_host: int) -> None:
        self.per_host = per_host
        self._threads = ThreadPoolExecutor(threads, thread_name_prefix="nodeferry-ssh")
        self._hosts: dict[str, _Host] = {}

    def _limit(self, host: _Host) -> int:
        return self.per_host if host.answered else 1

    def running(self, key: str) -> int:
        """Jobs for ``key`` on a thread now (for tests and benchmarks)."""
        host = self._hosts.get(key)
        return host.active if host else 0

    def waiting(self, key: str) -> int:
        host = self._hosts.get(key)
        return len(host.waiters) if host else 0

    async def run(self, key: str, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``function(*args, **kwargs)`` on an SSH thread, within ``key``'s limit."""
        loop = asyncio.get_running_loop()
        host = self._hosts.setdefault(key, _Host())
        while host.active >= self._limit(host):
            waiter: asyncio.Future[None] = loop.create_future()
            host.waiters.append(waiter)
            try:
                await waiter
            finally:
                host.waiters.remove(waiter)
        host.active += 1
        probing = not host.answered
        try:
            job = self._threads.submit(functools.partial(function, *args, **kwargs))
        except BaseException:
            self._release(host, None, probing=False)
            raise
        # Released when the thread is done, not when an awaiting request gives up:
        # a cancelled request does not free a thread that is still blocked.
        job.add_done_callback(
            lambda done: loop.call_soon_threadsafe(self._release, host, done, probing)
        )
        return await asyncio.wrap_future(job)

    def _release(self, host: _Host, done: Future[Any] | None, probing: bool) -> None:
        host.active -= 1
        error = done.exception() if done is not None and not done.cancelled() else None
        if done is not None and not done.cancelled():
            host.answered = error is None or not isinstance(error, NO_ANSWER)
        shared = Unreachable(str(error)) if probing and isinstance(error, NO_ANSWER) else None
        for waiter in host.waiters:
            if waiter.done():
                continue
            if shared is not None:
                waiter.set_exception(shared)
            else:
                waiter.set_result(None)

    def shutdown(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
