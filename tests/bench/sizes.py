"""How much each benchmark does: the full size (the figures in docs/BENCHMARKS.md)
and the smoke size (CI: proves the script still runs, says nothing about speed)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BenchSize:
    name: str
    # install wall time
    repos: int
    history_mb: tuple[float, float]
    install_scripts: int
    install_runs: int
    proxy_delay: float
    #: Other ``clone_jobs`` settings the agent is measured with (the headline: the default).
    compare_clone_jobs: tuple[int, ...]
    # start
    warm_starts: int
    cold_starts: int
    unreachable_starts: int
    #: Silent hosts connecting at once while a healthy host is started.
    blackhole_hosts: int
    # progress polls
    http_polls: int
    ssh_polls: int
    paramiko_polls: int
    # scale
    scale_hosts: int
    scale_tasks_per_host: int
    scale_pollers: int
    #: The offered load of the paced run, in polls/s over all pollers together.
    scale_rate: float
    scale_seconds: float
    #: A closed-loop run (every poller sends its next poll at once) finds the ceiling.
    saturation_seconds: float
    #: Polls spaced just over the refresh interval, so each one reads the instance.
    uncached_polls: int
    sse_watchers: int
    sse_seconds: float
    # freshness
    freshness_nodes: int
    freshness_poll_interval: float
    #: A hard stop for the whole run, in seconds; sections past it are skipped.
    budget: float


FULL = BenchSize(
    name="full",
    repos=30,
    history_mb=(1.5, 5.0),
    install_scripts=2,
    install_runs=3,
    proxy_delay=0.05,
    compare_clone_jobs=(4, 8, 12),
    warm_starts=40,
    cold_starts=5,
    unreachable_starts=5,
    blackhole_hosts=40,
    http_polls=400,
    ssh_polls=30,
    paramiko_polls=30,
    scale_hosts=50,
    scale_tasks_per_host=2,
    scale_pollers=100,
    scale_rate=300.0,
    scale_seconds=30.0,
    saturation_seconds=15.0,
    uncached_polls=20,
    sse_watchers=100,
    sse_seconds=15.0,
    freshness_nodes=12,
    freshness_poll_interval=0.1,
    budget=840.0,
)

SMOKE = BenchSize(
    name="smoke",
    repos=4,
    history_mb=(0.1, 0.3),
    install_scripts=1,
    install_runs=1,
    proxy_delay=0.01,
    compare_clone_jobs=(),
    warm_starts=3,
    cold_starts=1,
    unreachable_starts=1,
    blackhole_hosts=4,
    http_polls=20,
    ssh_polls=2,
    paramiko_polls=2,
    scale_hosts=2,
    scale_tasks_per_host=2,
    scale_pollers=8,
    scale_rate=40.0,
    scale_seconds=2.0,
    saturation_seconds=2.0,
    uncached_polls=2,
    sse_watchers=5,
    sse_seconds=2.0,
    freshness_nodes=3,
    freshness_poll_interval=0.1,
    budget=120.0,
)

SIZES = {size.name: size for size in (FULL, SMOKE)}
