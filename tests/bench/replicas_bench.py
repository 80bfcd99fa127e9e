"""Many controllers, one registry: start latency, progress polls per second and
each controller's CPU time per poll, through 1 controller on SQLite (the default)
and 1 and 3 replicas on one real PostgreSQL server, in one run.

Every controller is its own process (``python -m controller serve``) with the real
SSH transport against one real sshd on loopback. On a 2-core machine three
replicas and their clients share those cores, so the total polls per second say
what the machine caps; the CPU time one controller spends per poll is what says
whether N machines would serve about N times the polls (goal: PostgreSQL within
1.5x SQLite's CPU per poll).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.bench.controller_bench import FINAL, HTTP_TIMEOUT, _kill_leftover_workers
from tests.bench.controller_proc import ControllerProcess
from tests.bench.lab import Lab
from tests.bench.procwatch import cpu_seconds
from tests.bench.report import Report, Row
from tests.bench.stats import Summary
from tests.support.postgres import PostgresServer
from tests.support.sshd import SshServer, make_key

SECTION = "replicas"
#: (engine, replicas) measured, in this order; the first is the baseline.
SETUPS = (("sqlite", 1), ("postgresql", 1), ("postgresql", 3))
#: CPU per poll on PostgreSQL may be this many times SQLite's.
CPU_GOAL = 1.5


def run(lab: Lab, report: Report, log: Any) -> None:
    full = lab.size.name == "full"
    starts, seconds, pollers = (30, 10.0, 16) if full else (3, 2.0, 4)
    base = lab.fresh_dir("replicas")
    client_key = make_key(base / "client_key")
    remote_state = base / "remote-state"
    quick = lab.small_repo("replicas-quick-node", {"__init__.py": "NODE_CLASS_MAPPINGS = {}\n"})
    slow = lab.small_repo(
        "replicas-slow-node",
        {
            "__init__.py": "NODE_CLASS_MAPPINGS = {}\n",
            "install.py": "import time\ntime.sleep(600)\n",
        },
    )
    sshd = SshServer(base / "sshd", client_key=client_key)
    lab.stack.callback(sshd.stop)
    sshd.start()
    lab.stack.callback(_kill_leftover_workers, remote_state)
    # Not in the lab's folder: the server runs as the postgres user, who must reach
    # it. Durable (fsync on), as SQLite's commits are.
    postgres = PostgresServer(Path(tempfile.mkdtemp(prefix="nodeferry-bench-pg-")), durable=True)
    postgres.__enter__()
    lab.stack.callback(postgres.__exit__, None, None, None)

    results: dict[tuple[str, int], dict[str, Any]] = {}
    for engine, count in SETUPS:
        url = postgres.url() if engine == "postgresql" else None
        log(f"replicas: {count} controller(s) on {engine}")
        results[(engine, count)] = asyncio.run(
            _measure(
                base / f"{engine}-{count}",
                count,
                url,
                client_key=client_key,
                remote_state=remote_state,
                sshd=sshd,
                urls=(quick, slow),
                starts=starts,
                seconds=seconds,
                pollers=pollers,
            )
        )
    baseline = results[SETUPS[0]]
    for (engine, count), figures in results.items():
        label = f"{count} controller{'s' if count > 1 else ''} on {engine}"
        is_baseline = (engine, count) == SETUPS[0]
        start: Summary = figures["start"]
        report.add(Row(SECTION, f"start answered (p50), {label}", start.p50, "s"))
        report.add(
            Row(
                SECTION,
                f"progress polls per second, {label}",
                figures["polls_per_second"],
                "/s",
                note=f"{pollers} pollers for {figures['seconds']:.1f} s, round-robin over "
                f"the controllers; 2 cores shared by controllers and clients",
            )
        )
        ratio = figures["cpu_per_poll"] / baseline["cpu_per_poll"]
        report.add(
            Row(
                SECTION,
                f"controller CPU per poll, {label}",
                figures["cpu_per_poll"],
                "s",
                baseline=None if is_baseline else baseline["cpu_per_poll"],
                baseline_name=None if is_baseline else "1 controller on SQLite",
                target=None if is_baseline else f"<= {CPU_GOAL}x SQLite",
                met=None if is_baseline or not full else ratio <= CPU_GOAL,
                note=f"{ratio:.2f}x SQLite's; CPU of every controller process / polls served",
            )
        )
        report.detail(SECTION, f"{engine}_{count}", {k: v for k, v in figures.items()})


async def _measure(
    base: Path,
    count: int,
    database_url: str | None,
    *,
    client_key: Path,
    remote_state: Path,
    sshd: SshServer,
    urls: tuple[str, str],
    starts: int,
    seconds: float,
    pollers: int,
) -> dict[str, Any]:
    quick, slow = urls
    settings = {
        "ssh_keys": str(client_key),
        "use_ssh_agent": "false",
        "remote_state_dir": str(remote_state),
        "remote_python": sys.executable,
        "ssh_config": "",
        **({"database_url": database_url} if database_url else {}),
    }
    replicas = [
        ControllerProcess(
            base / f"replica-{i}", {**settings, "local_state_dir": str(base / f"l{i}")}
        )
        for i in range(count)
    ]
    homes = iter(range(1_000_000))

    def home() -> str:
        from controller.sandbox.comfy import make_comfy_home

        root = base / "homes" / f"h{next(homes):04d}"
        make_comfy_home(root, with_venv=False)
        return str(root)

    try:
        for replica in replicas:
            replica.start(60.0)
        headers = replicas[0].auth()
        async with aiohttp.ClientSession(headers=headers, timeout=HTTP_TIMEOUT) as session:

            async def start(index: int, node: str) -> tuple[str, float]:
                body = {
                    "ssh_connection": sshd.connection_string(),
                    "ui_home": home(),
                    "nodes": [node],
                    "python": sys.executable,
                }
                began = time.perf_counter()
                url = f"{replicas[index % count].url}/ssh/install-custom-nodes"
                async with session.post(url, json=body) as response:
                    data = await response.json()
                    if response.status != 202:
                        raise RuntimeError(f"start answered {response.status}: {data}")
                return str(data["task_id"]), time.perf_counter() - began

            latencies: list[float] = []
            ids: list[str] = []
            for i in range(starts):
                task_id, elapsed = await start(i, quick)
                ids.append(task_id)
                latencies.append(elapsed)
            await _until_final(session, replicas[0].url, ids, 120.0)

            slow_id, _ = await start(0, slow)
            progress_file = remote_state / "tasks" / slow_id / "progress.json"
            deadline = time.monotonic() + 60
            while b"running_install_scripts" not in _read(progress_file):
                if time.monotonic() > deadline:
                    raise RuntimeError("the slow task never reached its install script")
                await asyncio.sleep(0.05)
            poll_body = {"task_id": slow_id}
            served = 0
            cpu_before = [cpu_seconds(r.pid) or 0.0 for r in replicas]
            began = time.monotonic()

            async def poller(index: int) -> None:
                nonlocal served
                url = f"{replicas[index % count].url}/ssh/install-custom-nodes/progress"
                while time.monotonic() - began < seconds:
                    async with session.post(url, json=poll_body) as response:
                        await response.read()
                        if response.status == 200:
                            served += 1

            await asyncio.gather(*(poller(i) for i in range(pollers)))
            elapsed = time.monotonic() - began
            cpu = sum(
                (cpu_seconds(r.pid) or 0.0) - b for r, b in zip(replicas, cpu_before, strict=True)
            )
            async with session.post(f"{replicas[0].url}/api/tasks/{slow_id}/cancel") as response:
                await response.read()
            await _until_final(session, replicas[-1].url, [slow_id], 60.0)
    finally:
        for replica in replicas:
            replica.stop()
    return {
        "start": Summary.of(latencies),
        "polls": served,
        "seconds": elapsed,
        "polls_per_second": served / elapsed,
        "cpu_seconds": cpu,
        "cpu_per_poll": cpu / max(served, 1),
    }


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


async def _until_final(
    session: aiohttp.ClientSession, url: str, ids: list[str], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        async with session.get(f"{url}/api/tasks?limit=500") as response:
            states = {t["task_id"]: t["state"] for t in (await response.json())["tasks"]}
        if all(states.get(task_id) in FINAL for task_id in ids):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"tasks did not finish in {timeout:.0f} s")
        await asyncio.sleep(0.2)
