"""Benchmarks that drive the controller over HTTP: start, progress poll,
freshness, and scale (many sshd instances, many pollers, many event-stream
watchers).

The controller runs as its own process (``python -m controller serve``) with its
real SSH transport against real sshd instances on loopback. Every sshd here
logs the same root user in, so the "instances" share this machine's filesystem:
the agent's state dir (``remote_state_dir``) is a local directory the benchmark
can also watch directly, which is how it times "the agent is running" and node
state changes without going through the controller it is measuring.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from controller.common.config import Settings
from controller.sandbox.comfy import make_comfy_home
from protocol.progress import parse_time
from tests.bench.baselines import ParamikoPoller, SshCatPoller, SshTarget, time_polls
from tests.bench.blackhole import Blackhole
from tests.bench.controller_proc import ControllerProcess
from tests.bench.lab import Lab
from tests.bench.latency_proxy import LatencyProxy
from tests.bench.procwatch import cpu_seconds, peak_rss_bytes
from tests.bench.report import Report, Row
from tests.bench.stats import Summary
from tests.support.sshd import SshServer, make_key

Log = Callable[[str], None]

#: install.py of the "slow" node sleeps this long: a task that stays running for
#: as long as a measurement needs it. Every such task is cancelled afterwards.
SLOW_SECONDS = 600
FINAL = ("completed", "failed", "cancelled", "lost")
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=60)
CONCURRENT_CONTROL = 16  # starts/cancels in flight at once during scale set-up


@dataclass
class ControllerEnv:
    lab: Lab
    base: Path
    client_key: Path
    remote_state: Path
    main: SshServer
    controller: ControllerProcess
    quick_url: str
    slow_url: str
    homes: Iterator[int] = field(default_factory=lambda: iter(range(1_000_000)))
    servers: list[SshServer] = field(default_factory=list)

    @property
    def python(self) -> str:
        """The interpreter tasks without requirements name (never installed into)."""
        assert self.lab.venv_template is not None
        return str(self.lab.venv_template / "bin" / "python")

    def cheap_home(self) -> str:
        """A ComfyUI-looking directory of its own (one install per home at a time)."""
        root = self.base / "homes" / f"h{next(self.homes):05d}"
        make_comfy_home(root, with_venv=False)
        return str(root)

    def new_sshd(self, label: str) -> SshServer:
        server = SshServer(self.base / "sshd" / label, client_key=self.client_key)
        server.start()
        self.servers.append(server)
        return server

    def progress_file(self, task_id: str) -> Path:
        return self.remote_state / "tasks" / task_id / "progress.json"

    def read_progress(self, task_id: str) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self.progress_file(task_id).read_text())
        except (OSError, ValueError):
            return None
        return data

    def ssh_target(self, server: SshServer) -> SshTarget:
        known = self.base / f"known_hosts-{server.port}"
        known.write_text(server.known_hosts_line())
        return SshTarget("127.0.0.1", server.port, server.user, self.client_key, known)


def controller_env(lab: Lab, log: Log) -> ControllerEnv:
    """The controller, its main sshd and the test repositories; made once per run."""
    existing = lab.shared.get("controller")
    if isinstance(existing, ControllerEnv):
        return existing
    assert lab.git is not None
    base = lab.fresh_dir("controller")
    client_key = make_key(base / "client_key")
    remote_state = base / "remote-state"
    quick = lab.small_repo("bench-quick-node", {"__init__.py": "NODE_CLASS_MAPPINGS = {}\n"})
    slow = lab.small_repo(
        "bench-slow-node",
        {
            "__init__.py": "NODE_CLASS_MAPPINGS = {}\n",
            "install.py": f"import time\ntime.sleep({SLOW_SECONDS})\n",
        },
    )
    main = SshServer(base / "sshd" / "main", client_key=client_key)
    lab.stack.callback(_stop_servers, lab)
    main.start()
    controller = ControllerProcess(
        base / "controller",
        {
            "ssh_keys": str(client_key),
            "use_ssh_agent": "false",
            "host_key_policy": "tofu",
            "remote_state_dir": str(remote_state),
            # The interpreter an instance runs the agent with: an absolute path, as
            # /usr/bin/python3 is on an instance (not this machine's pyenv shim).
            "remote_python": sys.executable,
        },
    )
    env = ControllerEnv(
        lab=lab,
        base=base,
        client_key=client_key,
        remote_state=remote_state,
        main=main,
        controller=controller,
        quick_url=quick,
        slow_url=slow,
    )
    env.servers.append(main)
    lab.shared["controller"] = env
    lab.stack.callback(controller.stop)
    # Runs first at exit: no agent worker of ours may outlive the benchmark.
    lab.stack.callback(_kill_leftover_workers, remote_state)
    controller.start()
    log(f"controller pid {controller.pid} at {controller.url}; main sshd on {main.port}")
    return env


def _stop_servers(lab: Lab) -> None:
    env = lab.shared.get("controller")
    if isinstance(env, ControllerEnv):
        for server in env.servers:
            server.stop()


def _kill_leftover_workers(remote_state: Path) -> None:
    for progress in (remote_state / "tasks").glob("*/progress.json"):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            doc = json.loads(progress.read_text())
            if doc["state"] in FINAL or not doc.get("pid"):
                continue
            pid = int(doc["pid"])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            # Only a worker whose command line names this task is ours to stop.
            if doc["task_id"].encode() in cmdline:
                os.killpg(pid, signal.SIGKILL)


# -- HTTP helpers -------------------------------------------------------------------


async def post(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any], float]:
    started = time.perf_counter()
    async with session.post(url, json=body) as response:
        data = await response.json(content_type=None)
        elapsed = time.perf_counter() - started
        return response.status, data, elapsed


async def start_task(
    session: aiohttp.ClientSession,
    env: ControllerEnv,
    ssh_connection: str,
    nodes: list[str],
    *,
    ui_home: str | None = None,
    python: str | None = None,
    pip_args: list[str] | None = None,
) -> tuple[str, float]:
    body: dict[str, Any] = {
        "ssh_connection": ssh_connection,
        "ui_home": ui_home or env.cheap_home(),
        "nodes": nodes,
        "python": python or env.python,
        "pip_args": pip_args or [],
    }
    status, data, elapsed = await post(
        session, f"{env.controller.url}/ssh/install-custom-nodes", body
    )
    if status != 202:
        raise RuntimeError(f"start answered {status}: {data}")
    return str(data["task_id"]), elapsed


async def wait_for(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.005
) -> float:
    """Await ``predicate()`` with a deadline; returns when it first held (perf_counter)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.perf_counter()
        await asyncio.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def _state_is(env: ControllerEnv, task_id: str, states: tuple[str, ...]) -> Callable[[], bool]:
    def check() -> bool:
        doc = env.read_progress(task_id)
        return doc is not None and doc["state"] in states

    return check


def _has_document(env: ControllerEnv, task_id: str) -> Callable[[], bool]:
    """The agent has written its first document: the worker is running."""
    return env.progress_file(task_id).exists


async def cancel_all(session: aiohttp.ClientSession, env: ControllerEnv, ids: list[str]) -> None:
    gate = asyncio.Semaphore(CONCURRENT_CONTROL)

    async def cancel(task_id: str) -> None:
        async with gate:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                await post(session, f"{env.controller.url}/api/tasks/{task_id}/cancel", {})

    await asyncio.gather(*(cancel(task_id) for task_id in ids))


# -- 1. start -------------------------------------------------------------------------


def run_start(lab: Lab, report: Report, log: Log) -> None:
    env = controller_env(lab, log)
    asyncio.run(_start(env, report, log))


async def _start(env: ControllerEnv, report: Report, log: Log) -> None:
    size = env.lab.size
    async with aiohttp.ClientSession(
        headers=env.controller.auth(), timeout=HTTP_TIMEOUT
    ) as session:
        main = env.main.connection_string()
        # First contact with the main host (connection, host key, bundle upload):
        # not measured here; the cold runs below measure exactly that.
        task_id, _ = await start_task(session, env, main, [env.quick_url])
        await wait_for(_state_is(env, task_id, FINAL), 60, "the warm-up install")

        warm_202: list[float] = []
        warm_running: list[float] = []
        for _ in range(size.warm_starts):
            began = time.perf_counter()
            task_id, elapsed = await start_task(session, env, main, [env.quick_url])
            running_at = await wait_for(_has_document(env, task_id), 30, "the agent's document")
            warm_202.append(elapsed)
            warm_running.append(running_at - began)
            # One at a time: each start is measured on a quiet machine.
            await wait_for(_state_is(env, task_id, FINAL), 60, "a warm install to finish")
        log(f"warm starts: 202 p50 {Summary.of(warm_202).p50 * 1000:.1f} ms")

        cold_202: list[float] = []
        cold_running: list[float] = []
        first_bytes: list[int] = []
        second_bytes: list[int] = []
        second_uploads: list[int] = []
        bundle_rewritten = 0
        for index in range(size.cold_starts):
            server = env.new_sshd(f"cold-{index}")
            # Counts what the controller sends to this instance, without delay.
            with LatencyProxy("127.0.0.1", server.port, delay=0.0) as counter:
                for bundle in (env.remote_state / "agent").glob("*.pyz"):
                    bundle.unlink()
                target = f"{server.user}@127.0.0.1 -p {counter.port}"
                began = time.perf_counter()
                task_id, elapsed = await start_task(session, env, target, [env.quick_url])
                running_at = await wait_for(_has_document(env, task_id), 60, "a cold start")
                cold_202.append(elapsed)
                cold_running.append(running_at - began)
                await wait_for(_state_is(env, task_id, FINAL), 60, "a cold install to finish")
                first_bytes.append(counter.bytes_up)
                bundles = list((env.remote_state / "agent").glob("*.pyz"))
                stamp = [(b.stat().st_ino, b.stat().st_mtime_ns) for b in bundles]
                uploads_before = env.controller.stats()["uploads"]
                sent_before = counter.bytes_up
                task_id, _ = await start_task(session, env, target, [env.quick_url])
                await wait_for(_state_is(env, task_id, FINAL), 60, "a second start to finish")
                second_bytes.append(counter.bytes_up - sent_before)
                second_uploads.append(env.controller.stats()["uploads"] - uploads_before)
                after = [(b.stat().st_ino, b.stat().st_mtime_ns) for b in bundles]
                bundle_rewritten += int(after != stamp)
            server.stop()
        log(f"cold starts: agent running p50 {Summary.of(cold_running).p50 * 1000:.0f} ms")

        unreachable_202: list[float] = []
        unreachable_failed: list[float] = []
        one_host_failed: list[float] = []
        errors: list[str] = []
        one_host_errors: list[str] = []
        with contextlib.ExitStack() as holes:
            sent: dict[str, float] = {}
            for _ in range(size.unreachable_starts):
                # One silent host per start: a single first contact failing.
                hole = holes.enter_context(Blackhole())
                target = f"root@127.0.0.1 -p {hole.port}"
                start_mark = time.perf_counter()
                task_id, elapsed = await start_task(session, env, target, [env.quick_url])
                unreachable_202.append(elapsed)
                sent[task_id] = start_mark
            # And as many starts at once to one silent host: they share one
            # connection attempt, so all should fail after one connect timeout.
            shared = holes.enter_context(Blackhole())
            one_host: dict[str, float] = {}
            for _ in range(max(2, size.unreachable_starts)):
                target = f"root@127.0.0.1 -p {shared.port}"
                start_mark = time.perf_counter()
                task_id, elapsed = await start_task(session, env, target, [env.quick_url])
                unreachable_202.append(elapsed)
                one_host[task_id] = start_mark

            async def failed_after(task_id: str, start_mark: float) -> tuple[float, str]:
                data = await _wait_api_final(session, env, task_id, 120)
                return time.perf_counter() - start_mark, str(data.get("error"))

            for took, error in await asyncio.gather(
                *(failed_after(t, mark) for t, mark in sent.items())
            ):
                unreachable_failed.append(took)
                errors.append(error)
            for took, error in await asyncio.gather(
                *(failed_after(t, mark) for t, mark in one_host.items())
            ):
                one_host_failed.append(took)
                one_host_errors.append(error)
            one_host_attempts = shared.accepted

        # Many hosts that accept TCP and never answer, all in their handshakes at
        # once: a start to a healthy host must not queue behind them (issue 8.9).
        beside_silent: list[float] = []
        with contextlib.ExitStack() as holes:
            silent = [holes.enter_context(Blackhole()) for _ in range(size.blackhole_hosts)]
            for hole in silent:
                await start_task(session, env, f"root@127.0.0.1 -p {hole.port}", [env.quick_url])
            await wait_for(
                lambda: all(hole.accepted for hole in silent), 60, "every silent host's connect"
            )
            for _ in range(5):
                start_mark = time.perf_counter()
                task_id, _ = await start_task(session, env, main, [env.quick_url])
                await wait_for(_has_document(env, task_id), 60, "a start beside silent hosts")
                beside_silent.append(time.perf_counter() - start_mark)
                await wait_for(_state_is(env, task_id, FINAL), 60, "that install to finish")
            still_silent = all(hole.accepted == 1 for hole in silent)
        log(
            f"start beside {len(silent)} silent hosts: agent running max {max(beside_silent):.3f} s"
        )

    warm = Summary.of(warm_202)
    report.add(
        Row(
            "start",
            "POST start -> 202, warm (p50)",
            warm.p50,
            "s",
            target="<= 50 ms",
            met=warm.p50 <= 0.05,
        )
    )
    every = warm_202 + cold_202 + unreachable_202
    report.add(
        Row(
            "start",
            "POST start -> 202, slowest of all (warm, cold, unreachable)",
            max(every),
            "s",
            target="< 1 s",
            met=max(every) < 1.0,
        )
    )
    report.add(Row("start", "POST start -> 202, cold (p50)", Summary.of(cold_202).p50, "s"))
    report.add(
        Row(
            "start",
            "POST start -> 202, unreachable host (max)",
            max(unreachable_202),
            "s",
            target="< 1 s",
            met=max(unreachable_202) < 1.0,
        )
    )
    report.add(
        Row(
            "start",
            "POST start -> agent running, warm (p50)",
            Summary.of(warm_running).p50,
            "s",
            note="until the agent's first document exists on the instance",
        )
    )
    report.add(
        Row(
            "start",
            "POST start -> agent running, cold incl. upload (p50)",
            Summary.of(cold_running).p50,
            "s",
            note="new host: connect, host key, auth, bundle upload, start",
        )
    )
    report.add(
        Row(
            "start",
            "unreachable host -> task reads failed (p50)",
            Summary.of(unreachable_failed).p50,
            "s",
            note="bounded by the controller's connect timeout",
        )
    )
    report.add(
        Row(
            "start",
            f"{len(one_host_failed)} starts at once to one unreachable host -> all read "
            "failed (max)",
            max(one_host_failed),
            "s",
            note=f"{one_host_attempts} connection attempt(s) reached the host; "
            f"{len(set(one_host_errors))} distinct error(s)",
        )
    )
    report.add(
        Row(
            "start",
            f"start -> agent running on a healthy host while {size.blackhole_hosts} silent "
            "hosts connect (p50)",
            Summary.of(beside_silent).p50,
            "s",
            target="<= 2x warm start",
            met=Summary.of(beside_silent).p50 <= 2 * Summary.of(warm_running).p50,
            note=f"warm start on its own: p50 {Summary.of(warm_running).p50:.2f} s; "
            + ("the silent connects were still pending" if still_silent else "connects retried"),
        )
    )
    report.detail("start", "agent_running_beside_silent_hosts", Summary.of(beside_silent))
    uploaded_again = sum(second_uploads)
    report.add(
        Row(
            "footprint",
            "bundle bytes uploaded on a second start",
            uploaded_again * len(_bundle_bytes()),
            "bytes",
            target="0",
            met=uploaded_again == 0 and bundle_rewritten == 0,
            note=f"wire: first start sent {Summary.of(first_bytes).p50:.0f} B, second "
            f"{Summary.of(second_bytes).p50:.0f} B (SSH framing, the start command, the spec)",
        )
    )
    report.detail("start", "warm_202", warm)
    report.detail("start", "warm_agent_running", Summary.of(warm_running))
    report.detail("start", "cold_202", Summary.of(cold_202))
    report.detail("start", "cold_agent_running", Summary.of(cold_running))
    report.detail("start", "unreachable_202", Summary.of(unreachable_202))
    report.detail("start", "unreachable_to_failed", Summary.of(unreachable_failed))
    report.detail("start", "unreachable_errors", sorted(set(errors)))
    report.detail("start", "one_host_unreachable_to_failed", Summary.of(one_host_failed))
    report.detail("start", "one_host_unreachable_errors", sorted(set(one_host_errors)))
    report.detail("start", "one_host_connection_attempts", one_host_attempts)
    report.detail("start", "first_start_bytes_sent", first_bytes)
    report.detail("start", "second_start_bytes_sent", second_bytes)
    report.detail("start", "second_start_uploads", second_uploads)
    report.detail("start", "bundle_rewritten_on_second_start", bundle_rewritten)


def _bundle_bytes() -> bytes:
    from agent.bundle import bundle

    return bundle().data


async def _wait_api_final(
    session: aiohttp.ClientSession, env: ControllerEnv, task_id: str, timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    url = f"{env.controller.url}/ssh/install-custom-nodes/progress"
    while time.monotonic() < deadline:
        _status, data, _ = await post(session, url, {"task_id": task_id})
        if data.get("completed") or data.get("state") in FINAL:
            return data
        await asyncio.sleep(0.05)
    raise TimeoutError(f"task {task_id} did not finish within {timeout:.0f} s")


# -- 2. progress poll -----------------------------------------------------------------


def run_poll(lab: Lab, report: Report, log: Log) -> None:
    env = controller_env(lab, log)
    task_id = asyncio.run(_start_slow(env, env.main))
    try:
        http = asyncio.run(_http_polls(env, task_id, lab.size.http_polls))
        # Spaced past what the cache serves while it refreshes, so each poll waits
        # for the instance (closer-spaced polls get the cached document at once).
        uncached = asyncio.run(
            _http_polls(env, task_id, lab.size.uncached_polls, spacing=_stale_limit() + 0.05)
        )
        target = env.ssh_target(env.main)
        remote_file = str(env.progress_file(task_id))
        log(f"HTTP polls p50 {http['latency'].p50 * 1000:.2f} ms; now ssh-per-poll")
        ssh = Summary.of(
            time_polls(SshCatPoller(target, remote_file).poll, lab.size.ssh_polls, max_seconds=60)
        )
        log(f"ssh cat p50 {ssh.p50 * 1000:.0f} ms; now paramiko-per-poll")
        paramiko = Summary.of(
            time_polls(
                ParamikoPoller(target, remote_file).poll, lab.size.paramiko_polls, max_seconds=60
            )
        )
    finally:
        asyncio.run(_cancel_one(env, task_id))
    latency: Summary = http["latency"]
    report.add(
        Row(
            "poll",
            "progress poll over HTTP, warm (p50)",
            latency.p50,
            "s",
            target="<= 10 ms",
            met=latency.p50 <= 0.010,
        )
    )
    report.add(
        Row(
            "poll",
            "progress poll (p50) vs a new ssh process per poll",
            latency.p50,
            "s",
            baseline=ssh.p50,
            baseline_name="ssh host cat FILE",
            target=">= 20x",
            met=ssh.p50 / latency.p50 >= 20,
        )
    )
    report.add(
        Row(
            "poll",
            "progress poll (p50) vs a new paramiko connection per poll",
            latency.p50,
            "s",
            baseline=paramiko.p50,
            baseline_name="paramiko connect+cat",
        )
    )
    fresh: Summary = uncached["latency"]
    report.add(
        Row(
            "poll",
            "progress poll over HTTP that goes to the instance (p50)",
            fresh.p50,
            "s",
            baseline=ssh.p50,
            baseline_name="ssh host cat FILE",
            note=f"polls spaced past the {_stale_limit() * 1000:.0f} ms the cache may serve: "
            f"{uncached['remote_stats']} SFTP stats, {uncached['remote_reads']} reads "
            f"for {fresh.count} polls",
        )
    )
    report.add(Row("poll", "progress poll over HTTP, warm (p99)", latency.p99, "s"))
    report.detail("poll", "http", latency)
    report.detail("poll", "http_uncached", fresh)
    report.detail("poll", "http_uncached_remote_reads", uncached["remote_reads"])
    report.detail("poll", "http_uncached_remote_stats", uncached["remote_stats"])
    report.detail("poll", "http_remote_reads", http["remote_reads"])
    report.detail("poll", "http_remote_stats", http["remote_stats"])
    report.detail("poll", "http_seconds", http["seconds"])
    report.detail("poll", "ssh_cat", ssh)
    report.detail("poll", "paramiko", paramiko)


async def _start_slow(env: ControllerEnv, server: SshServer) -> str:
    async with aiohttp.ClientSession(
        headers=env.controller.auth(), timeout=HTTP_TIMEOUT
    ) as session:
        task_id, _ = await start_task(session, env, server.connection_string(), [env.slow_url])
    await wait_for(
        _state_is(env, task_id, ("running_install_scripts", *FINAL)), 60, "the slow task"
    )
    state = env.read_progress(task_id) or {}
    if state.get("state") != "running_install_scripts":
        raise RuntimeError(f"the slow task ended early: {state.get('state')} {state.get('error')}")
    return task_id


async def _cancel_one(env: ControllerEnv, task_id: str) -> None:
    async with aiohttp.ClientSession(
        headers=env.controller.auth(), timeout=HTTP_TIMEOUT
    ) as session:
        await cancel_all(session, env, [task_id])


def _refresh_interval() -> float:
    # The benchmark runs the controller with its defaults, this one included.
    return Settings().refresh_interval


def _stale_limit() -> float:
    """How old a cached document the controller still serves while it refreshes."""
    from controller.core.reader import STALE_SERVE_INTERVALS

    return STALE_SERVE_INTERVALS * _refresh_interval()


async def _http_polls(
    env: ControllerEnv, task_id: str, count: int, *, spacing: float = 0.0
) -> dict[str, Any]:
    url = f"{env.controller.url}/ssh/install-custom-nodes/progress"
    body = {"ssh_connection": env.main.connection_string(), "task_id": task_id}
    samples: list[float] = []
    before = env.controller.stats()
    started = time.monotonic()
    async with aiohttp.ClientSession(
        headers=env.controller.auth(), timeout=HTTP_TIMEOUT
    ) as session:
        for _ in range(3):  # the keep-alive connection, the first read
            await post(session, url, body)
        for _ in range(count):
            if spacing:
                await asyncio.sleep(spacing)  # the pacing under test, not a synchronisation
            status, data, elapsed = await post(session, url, body)
            if status != 200 or not data.get("in_progress"):
                raise RuntimeError(f"poll answered {status}: {data.get('state')}")
            samples.append(elapsed)
            if time.monotonic() - started > 120:
                break
    after = env.controller.stats()
    return {
        "latency": Summary.of(samples),
        "remote_reads": after["remote_reads"] - before["remote_reads"],
        "remote_stats": after["remote_stats"] - before["remote_stats"],
        "seconds": time.monotonic() - started,
    }


# -- 5. freshness ---------------------------------------------------------------------


def run_freshness(lab: Lab, report: Report, log: Log) -> None:
    env = controller_env(lab, log)
    result = asyncio.run(_freshness(env, log))
    for name, label in (("poll", "HTTP poller"), ("sse", "event stream")):
        samples = result[name]
        if not samples:
            report.fail("freshness", f"the {label} saw no change")
            continue
        summary = Summary.of(samples)
        interval = (
            f" every {lab.size.freshness_poll_interval * 1000:.0f} ms" if name == "poll" else ""
        )
        report.add(
            Row(
                "freshness",
                f"change on instance -> seen by {label}{interval} (p95)",
                summary.p95,
                "s",
                target="<= 1 s",
                met=summary.p95 <= 1.0,
                note=f"p50 {summary.p50 * 1000:.0f} ms, max {summary.maximum * 1000:.0f} ms, "
                f"{summary.count} changes",
            )
        )
        report.detail("freshness", name, summary)
    report.detail("freshness", "nodes", result["nodes"])
    report.detail("freshness", "slowest_sightings", result["slowest"])


async def _freshness(env: ControllerEnv, log: Log) -> dict[str, Any]:
    lab = env.lab
    home = lab.fresh_home("freshness")
    urls = lab.node_urls(via_proxy=True, limit=lab.size.freshness_nodes)
    seen: dict[str, list[tuple[float, dict[str, Any]]]] = {"poll": [], "sse": []}
    async with aiohttp.ClientSession(
        headers=env.controller.auth(), timeout=HTTP_TIMEOUT
    ) as session:
        task_id, _ = await start_task(
            session,
            env,
            env.main.connection_string(),
            urls,
            ui_home=str(home.root),
            python=str(home.python),
            pip_args=lab.pip_args,
        )
        done = asyncio.Event()
        poller = asyncio.create_task(_freshness_poller(env, session, task_id, seen["poll"], done))
        watcher = asyncio.create_task(_freshness_watcher(env, task_id, seen["sse"]))
        try:
            await asyncio.wait_for(watcher, 300)
            await asyncio.wait_for(poller, 300)
        finally:
            done.set()
            for task in (poller, watcher):
                task.cancel()
    final = env.read_progress(task_id) or {}
    if final.get("state") != "completed":
        raise RuntimeError(
            f"the freshness install ended {final.get('state')}: {final.get('error')}"
        )
    lab.discard(home.root.parent)
    return {
        "poll": _staleness(seen["poll"]),
        "sse": _staleness(seen["sse"]),
        "slowest": {name: _slowest(observed) for name, observed in seen.items()},
        "nodes": len(urls),
    }


async def _freshness_poller(
    env: ControllerEnv,
    session: aiohttp.ClientSession,
    task_id: str,
    out: list[tuple[float, dict[str, Any]]],
    done: asyncio.Event,
) -> None:
    url = f"{env.controller.url}/ssh/install-custom-nodes/progress"
    deadline = time.monotonic() + 300
    while not done.is_set() and time.monotonic() < deadline:
        _status, data, _ = await post(session, url, {"task_id": task_id})
        out.append((time.time(), data))
        if data.get("completed"):
            return
        await asyncio.sleep(env.lab.size.freshness_poll_interval)


async def _freshness_watcher(
    env: ControllerEnv, task_id: str, out: list[tuple[float, dict[str, Any]]]
) -> None:
    from controller.client import iter_sse

    timeout = aiohttp.ClientTimeout(total=300, sock_read=60)
    url = f"{env.controller.url}/api/tasks/{task_id}/events"
    async with (
        aiohttp.ClientSession(headers=env.controller.auth(), timeout=timeout) as session,
        session.get(url) as response,
    ):
        if response.status != 200:
            raise RuntimeError(f"event stream answered {response.status}")
        async for event in iter_sse(response.content):
            if event.event not in ("progress", "final"):
                continue
            out.append((time.time(), json.loads(event.data)))
            if event.event == "final":
                return


def _staleness(observations: list[tuple[float, dict[str, Any]]]) -> list[float]:
    """For every node state change with a timestamp (started, finished) and every new
    document, seconds from the moment the agent recorded it to its first sighting."""
    return list(_sightings(observations).values())


def _slowest(observations: list[tuple[float, dict[str, Any]]], count: int = 3) -> list[str]:
    """The changes seen latest, for the JSON: what a tail figure is made of."""
    ranked = sorted(_sightings(observations).items(), key=lambda item: -item[1])
    return [f"{ident}: {late * 1000:.0f} ms" for ident, late in ranked[:count]]


def _sightings(observations: list[tuple[float, dict[str, Any]]]) -> dict[str, float]:
    stamps: dict[str, float] = {}
    for seen_at, doc in observations:
        marks = [("doc", doc.get("updated_at"))]
        for node in doc.get("nodes", []):
            marks.append((f"{node['name']}:started", node.get("started_at")))
            marks.append((f"{node['name']}:finished", node.get("finished_at")))
        for key, stamp in marks:
            if not stamp:
                continue
            ident = f"{key}@{stamp}"
            if ident not in stamps:
                stamps[ident] = max(0.0, seen_at - parse_time(stamp).timestamp())
    return stamps


# -- 3. scale ---------------------------------------------------------------------------


def run_scale(lab: Lab, report: Report, log: Log) -> None:
    env = controller_env(lab, log)
    size = lab.size
    hosts: list[SshServer] = []
    try:
        for index in range(size.scale_hosts):
            hosts.append(env.new_sshd(f"scale-{index}"))
    except RuntimeError as exc:
        log(f"sshd {len(hosts) + 1} did not start ({exc}); scaling with {len(hosts)}")
    if not hosts:
        raise RuntimeError("no sshd instance started for the scale run")
    log(f"{len(hosts)} sshd instances up; starting {len(hosts) * size.scale_tasks_per_host} tasks")
    result = asyncio.run(_scale(env, hosts, log))
    for server in hosts:
        server.stop()
    paced, saturated = result["paced"], result["saturated"]
    where = f"{size.scale_pollers} pollers, {result['tasks']} tasks on {len(hosts)} sshd"
    paced_latency: Summary = paced["latency"]
    report.add(
        Row(
            "scale",
            f"{where}, offered {size.scale_rate:.0f} polls/s: achieved",
            paced["rate"],
            "polls/s",
        )
    )
    report.add(Row("scale", "poll latency at that load (p50)", paced_latency.p50, "s"))
    split = ""
    if paced["latency_cached"] and paced["latency_waited_for_read"]:
        split = (
            f"p99 of polls answered from the cache {paced['latency_cached'].p99 * 1000:.0f} ms, "
            f"of polls that waited for a fresh read "
            f"{paced['latency_waited_for_read'].p99 * 1000:.0f} ms "
            f"({paced['latency_waited_for_read'].count} of {paced['polls']})"
        )
    report.add(
        Row(
            "scale",
            "poll latency at that load (p99)",
            paced_latency.p99,
            "s",
            target="<= 100 ms",
            met=paced_latency.p99 <= 0.1 and paced["rate"] >= 0.95 * size.scale_rate,
            note=split,
        )
    )
    report.add(
        Row(
            "scale",
            "controller CPU at that load",
            paced["cpu_percent"],
            "%",
            note="of one core",
        )
    )
    sat_latency: Summary = saturated["latency"]
    report.add(
        Row(
            "scale",
            f"{where}, closed loop: throughput",
            saturated["rate"],
            "polls/s",
            target=">= 300 polls/s",
            met=saturated["rate"] >= 300,
            note=f"p50 {sat_latency.p50 * 1000:.0f} ms, p99 {sat_latency.p99 * 1000:.0f} ms "
            "(queueing: each poller sends its next poll at once); controller CPU "
            f"{saturated['cpu_percent']:.0f}%, benchmark client CPU "
            f"{saturated['client_cpu_percent']:.0f}% of one core",
        )
    )
    report.add(
        Row(
            "scale",
            "controller peak RSS",
            result["peak_rss"],
            "bytes",
            target="<= 150 MB",
            met=result["peak_rss"] <= 150 * 1000 * 1000,
        )
    )
    for key in ("paced", "saturated", "tasks", "peak_rss", "start_all_seconds"):
        report.detail("scale", key, result[key])
    report.detail("scale", "sshd_instances", len(hosts))
    report.detail("scale", "sshd_requested", size.scale_hosts)

    sse = asyncio.run(_sse_reads(env, log))
    one = sse["one"]
    report.add(
        Row(
            "scale",
            f"{size.sse_watchers} event-stream watchers on one task: remote reads",
            sse["many"]["reads_per_s"],
            "reads/s",
            target=f"~1 per refresh interval (<= {1 / sse['refresh_interval']:.1f}/s)",
            met=sse["many"]["reads_per_s"] <= 1.25 / sse["refresh_interval"],
            note=f"1 watcher: {one['reads_per_s']:.1f} reads/s; plus "
            f"{sse['many']['stats_per_s']:.1f} stat/s; {sse['many']['events']} events delivered",
        )
    )
    report.detail("scale", "sse", sse)


async def _scale(env: ControllerEnv, hosts: list[SshServer], log: Log) -> dict[str, Any]:
    size = env.lab.size
    tasks: list[tuple[str, str]] = []
    gate = asyncio.Semaphore(CONCURRENT_CONTROL)
    async with aiohttp.ClientSession(
        headers=env.controller.auth(), timeout=HTTP_TIMEOUT
    ) as session:

        async def start(server: SshServer) -> None:
            async with gate:
                task_id, _ = await start_task(
                    session, env, server.connection_string(), [env.slow_url]
                )
                tasks.append((task_id, server.connection_string()))

        began = time.monotonic()
        try:
            await asyncio.gather(
                *(start(s) for s in hosts for _ in range(size.scale_tasks_per_host))
            )
            ids = [task_id for task_id, _ in tasks]
            await wait_for(
                lambda: all(_state_is(env, t, ("running_install_scripts", *FINAL))() for t in ids),
                180,
                "every scale task to be running",
                interval=0.2,
            )
            start_all = time.monotonic() - began
            ended = [t for t in ids if _state_is(env, t, FINAL)()]
            if ended:
                raise RuntimeError(f"{len(ended)} scale tasks ended early, e.g. {ended[0]}")
            log(
                f"{len(ids)} tasks running after {start_all:.0f} s; {size.scale_pollers} "
                f"pollers at {size.scale_rate:.0f} polls/s for {size.scale_seconds:.0f} s"
            )
            paced = await _pollers(env, tasks, size.scale_seconds, rate=size.scale_rate)
            log(
                f"paced: {paced['rate']:.0f} polls/s, p99 {paced['latency'].p99 * 1000:.0f} ms; "
                f"closed loop for {size.saturation_seconds:.0f} s"
            )
            saturated = await _pollers(env, tasks, size.saturation_seconds, rate=None)
            log(f"closed loop: {saturated['rate']:.0f} polls/s")
        finally:
            await cancel_all(session, env, [task_id for task_id, _ in tasks])
    return {
        "paced": paced,
        "saturated": saturated,
        "tasks": len(tasks),
        "start_all_seconds": start_all,
        "peak_rss": peak_rss_bytes(env.controller.pid) or 0,
    }


async def _pollers(
    env: ControllerEnv, tasks: list[tuple[str, str]], seconds: float, *, rate: float | None
) -> dict[str, Any]:
    """``scale_pollers`` clients polling for ``seconds``: paced so that together they
    offer ``rate`` polls/s, or (``rate`` None) each sending its next poll at once."""
    size = env.lab.size
    url = f"{env.controller.url}/ssh/install-custom-nodes/progress"
    latencies: list[float] = []
    # Split by whether the answer came from the cache or waited for a fresh read
    # (its read_at is later than the moment the poll was sent).
    cached: list[float] = []
    waited: list[float] = []
    errors = 0
    max_polls = 200_000  # a bound on the loop whatever the machine's speed
    pollers = size.scale_pollers
    interval = pollers / rate if rate else 0.0
    before = env.controller.stats()
    cpu_before = cpu_seconds(env.controller.pid) or 0.0
    client_before = _own_cpu()
    started = time.monotonic()
    deadline = started + seconds

    async def poller(session: aiohttp.ClientSession, index: int) -> None:
        nonlocal errors
        task_id, connection = tasks[index % len(tasks)]
        body = {"ssh_connection": connection, "task_id": task_id}
        due = started + interval * index / pollers  # spread evenly over one interval
        while time.monotonic() < deadline and len(latencies) < max_polls:
            if interval:
                # The poll schedule itself; a late poll goes at once, never skipped.
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                due += interval
                if time.monotonic() >= deadline:
                    break
            sent_at = time.time()
            try:
                status, data, elapsed = await post(session, url, body)
            except (aiohttp.ClientError, TimeoutError):
                errors += 1
                continue
            if status != 200:
                errors += 1
            latencies.append(elapsed)
            read_at = data.get("read_at")
            # read_at has millisecond resolution: allow for the truncation.
            if read_at and parse_time(read_at).timestamp() >= sent_at - 0.001:
                waited.append(elapsed)
            else:
                cached.append(elapsed)

    # One keep-alive connection per poller, as separate frontends would have.
    connector = aiohttp.TCPConnector(limit=pollers)
    async with aiohttp.ClientSession(
        headers=env.controller.auth(), timeout=HTTP_TIMEOUT, connector=connector
    ) as session:
        await asyncio.gather(*(poller(session, i) for i in range(pollers)))
    elapsed = time.monotonic() - started
    cpu_after = cpu_seconds(env.controller.pid) or cpu_before
    after = env.controller.stats()
    if not latencies:
        raise RuntimeError(f"no poll succeeded ({errors} errors)")
    return {
        "latency": Summary.of(latencies),
        "latency_cached": Summary.of(cached) if cached else None,
        "latency_waited_for_read": Summary.of(waited) if waited else None,
        "polls": len(latencies),
        "rate": len(latencies) / elapsed,
        "errors": errors,
        "seconds": elapsed,
        "cpu_percent": 100.0 * (cpu_after - cpu_before) / elapsed,
        "client_cpu_percent": 100.0 * (_own_cpu() - client_before) / elapsed,
        "remote_reads": after["remote_reads"] - before["remote_reads"],
        "remote_stats": after["remote_stats"] - before["remote_stats"],
    }


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _sse_reads(env: ControllerEnv, log: Log) -> dict[str, Any]:
    size = env.lab.size
    task_id = await _start_slow(env, env.main)
    try:
        one = await _watch(env, task_id, 1, size.sse_seconds)
        log(f"1 watcher: {one['reads_per_s']:.2f} reads/s; now {size.sse_watchers}")
        many = await _watch(env, task_id, size.sse_watchers, size.sse_seconds)
    finally:
        await _cancel_one(env, task_id)
    refresh = _refresh_interval()
    return {"one": one, "many": many, "refresh_interval": refresh}


async def _watch(env: ControllerEnv, task_id: str, watchers: int, seconds: float) -> dict[str, Any]:
    from controller.client import iter_sse

    url = f"{env.controller.url}/api/tasks/{task_id}/events"
    events = 0
    opened = 0
    timeout = aiohttp.ClientTimeout(total=seconds + 60, sock_read=30)
    connector = aiohttp.TCPConnector(limit=watchers + 1)
    async with aiohttp.ClientSession(
        headers=env.controller.auth(), timeout=timeout, connector=connector
    ) as session:
        all_open = asyncio.Event()

        async def watch() -> None:
            nonlocal events, opened
            async with session.get(url) as response:
                if response.status != 200:
                    raise RuntimeError(f"event stream answered {response.status}")
                opened += 1
                if opened == watchers:
                    all_open.set()
                async for event in iter_sse(response.content):
                    if event.event in ("progress", "final"):
                        events += 1

        streams = [asyncio.create_task(watch()) for _ in range(watchers)]
        try:
            await asyncio.wait_for(all_open.wait(), 60)
            before = env.controller.stats()
            started = time.monotonic()
            await asyncio.sleep(seconds)  # the measurement window itself, not a wait
            after = env.controller.stats()
            elapsed = time.monotonic() - started
        finally:
            for stream in streams:
                stream.cancel()
            await asyncio.gather(*streams, return_exceptions=True)
    return {
        "watchers": watchers,
        "seconds": elapsed,
        "reads_per_s": (after["remote_reads"] - before["remote_reads"]) / elapsed,
        "stats_per_s": (after["remote_stats"] - before["remote_stats"]) / elapsed,
        "events": events,
    }
