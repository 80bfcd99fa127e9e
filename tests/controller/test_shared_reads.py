"""Progress reads are shared: many readers of one task cost one remote read per
refresh interval; an unchanged file is only stat'ed; watchers see every change."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from controller.api.appkeys import SERVICE, STATS
from controller.core.service import TaskView
from controller.sandbox.comfy import ComfyHome
from tests.controller.conftest import (
    AppFactory,
    NodeRepos,
    install_body,
    make_settings,
    poll,
    start_install,
    wait_final,
    wait_for,
)
from tests.support.sshd import SshServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


async def test_concurrent_pollers_share_one_read(
    make_client: AppFactory,
    tmp_path: Path,
    client_key: Path,
    sshd: SshServer,
    home: ComfyHome,
    node_repos: NodeRepos,
) -> None:
    # The monitor job stays out of the way so every read below is one we caused.
    settings = make_settings(tmp_path, client_key, refresh_interval=0.5, monitor_interval=3600)
    client = await make_client(settings)
    (home.root / "sleep_seconds").write_text("6")
    task_id = await start_install(
        client, install_body(sshd.connection_string(), home, [node_repos.sleeper.url])
    )
    await wait_for(client, task_id, lambda s, b: b["state"] == "running_install_scripts")
    stats = client.app[STATS]

    # 100 requests at once: one read in flight serves them all. The cached document
    # is made too old to be served while it revalidates, so no poll of the burst
    # may see it (a merely stale one would legitimately be served once, beside the
    # refreshed one).
    live = client.app[SERVICE]._live[task_id]
    old_read_at = live.view.read_at
    live.read_mono = time.monotonic() - 10 * settings.refresh_interval
    before = stats.snapshot()
    began = time.monotonic()
    responses = await asyncio.gather(
        *(
            client.post("/ssh/install-custom-nodes/progress", json={"task_id": task_id})
            for _ in range(100)
        )
    )
    bodies = [await r.json() for r in responses]
    after = stats.snapshot()
    # On a loaded machine the burst may outlast one refresh interval.
    refreshes = int((time.monotonic() - began) / settings.refresh_interval) + 1
    assert all(r.status == 200 for r in responses)
    assert old_read_at not in {b["read_at"] for b in bodies}
    assert len({b["read_at"] for b in bodies}) <= refreshes
    reads = after["remote_reads"] - before["remote_reads"]
    stat_calls = after["remote_stats"] - before["remote_stats"]
    assert 1 <= stat_calls <= refreshes
    assert reads <= stat_calls
    assert after["cache_hits"] - before["cache_hits"] >= 100 - refreshes

    # Polling for 2 s costs at most one stat per refresh interval, and reads only
    # when the file changed (the agent's heartbeat rewrites it every 2 s).
    before = stats.snapshot()
    began = time.monotonic()
    polls = 0
    while time.monotonic() - began < 2.0:
        await asyncio.gather(
            *(
                client.post("/ssh/install-custom-nodes/progress", json={"task_id": task_id})
                for _ in range(10)
            )
        )
        polls += 10
        await asyncio.sleep(0.05)
    after = stats.snapshot()
    elapsed = time.monotonic() - began
    max_refreshes = int(elapsed / settings.refresh_interval) + 2
    assert polls >= 100
    assert after["remote_stats"] - before["remote_stats"] <= max_refreshes
    assert after["remote_reads"] - before["remote_reads"] <= max_refreshes
    await wait_final(client, task_id)


async def test_unchanged_file_is_only_stated(
    make_client: AppFactory,
    tmp_path: Path,
    client_key: Path,
    sshd: SshServer,
    home: ComfyHome,
    node_repos: NodeRepos,
) -> None:
    settings = make_settings(tmp_path, client_key, refresh_interval=0.1, monitor_interval=3600)
    client = await make_client(settings)
    (home.root / "sleep_seconds").write_text("2")
    task_id = await start_install(
        client, install_body(sshd.connection_string(), home, [node_repos.sleeper.url])
    )
    _, running = await wait_for(
        client, task_id, lambda s, b: b["state"] == "running_install_scripts"
    )
    stats = client.app[STATS]
    # Freeze the worker: its document stops changing (no heartbeat) while it lives.
    worker = running["pid"]
    os.killpg(worker, signal.SIGSTOP)
    try:
        # Once the frozen file has been read a second after it last changed, polls
        # cost a stat each and no read.
        async def reads_settled() -> None:
            while True:
                before = stats.snapshot()["remote_reads"]
                for _ in range(5):
                    await client.get(f"/api/tasks/{task_id}")
                    await asyncio.sleep(0.12)
                if stats.snapshot()["remote_reads"] == before:
                    return

        await asyncio.wait_for(reads_settled(), 60)
        live = client.app[SERVICE]._live[task_id]
        before = stats.snapshot()
        for _ in range(10):
            # One refresh per poll, whatever the load: the previous one has ended,
            # and the cached document is too old to be served while one runs.
            if live.inflight is not None:
                await asyncio.wait({live.inflight})
            live.read_mono = time.monotonic() - 10 * settings.refresh_interval
            response = await client.get(f"/api/tasks/{task_id}")
            assert response.status == 200
        after = stats.snapshot()
    finally:
        os.killpg(worker, signal.SIGCONT)
    assert after["remote_stats"] - before["remote_stats"] == 10
    assert after["remote_reads"] == before["remote_reads"]
    # Thawed, it changes again and is fetched again, to the end: by a counted read,
    # or through the agent's `status` command once the worker has exited.
    final = await wait_final(client, task_id)
    assert final["state"] == "completed"
    end = stats.snapshot()
    assert (end["remote_reads"] + end["commands"]) > (after["remote_reads"] + after["commands"])


async def test_watchers_share_reads_and_see_the_end(
    make_client: AppFactory,
    tmp_path: Path,
    client_key: Path,
    sshd: SshServer,
    home: ComfyHome,
    node_repos: NodeRepos,
) -> None:
    settings = make_settings(tmp_path, client_key, refresh_interval=0.3, monitor_interval=3600)
    client = await make_client(settings)
    (home.root / "sleep_seconds").write_text("2")
    task_id = await start_install(
        client,
        install_body(
            sshd.connection_string(), home, [node_repos.plain.url, node_repos.sleeper.url]
        ),
    )
    service = client.app[SERVICE]
    stats = client.app[STATS]

    async def follow() -> list[TaskView]:
        seen = []
        async for view in service.watch(task_id, heartbeat=10.0):
            assert view is not None
            seen.append(view)
        return seen

    began = time.monotonic()
    before = stats.snapshot()["remote_reads"]
    runs = await asyncio.wait_for(asyncio.gather(*(follow() for _ in range(20))), 60)
    elapsed = time.monotonic() - began
    reads = stats.snapshot()["remote_reads"] - before
    for seen in runs:
        assert seen[-1].progress.state == "completed"
        versions = [v.version for v in seen]
        assert versions == sorted(set(versions))
        states = [v.progress.state for v in seen]
        assert states[0] in ("starting", "cloning", "running_install_scripts")
    # Twenty watchers, one reader's worth of reads.
    assert reads <= int(elapsed / settings.refresh_interval) + 2
    final = await wait_final(client, task_id)
    assert final["state"] == "completed"


async def test_heartbeat_yields_none_while_idle(
    client: Any, sshd: SshServer, home: ComfyHome, node_repos: NodeRepos
) -> None:
    (home.root / "sleep_seconds").write_text("4")
    task_id = await start_install(
        client, install_body(sshd.connection_string(), home, [node_repos.sleeper.url])
    )
    await wait_for(client, task_id, lambda s, b: b["state"] == "running_install_scripts")
    service = client.app[SERVICE]
    watcher = service.watch(task_id, heartbeat=0.3)
    kinds = []
    async for view in watcher:
        kinds.append("none" if view is None else view.progress.state)
        if len(kinds) >= 6 or (view is not None and view.progress.is_final):
            break
    await watcher.aclose()
    assert "none" in kinds
    await wait_final(client, task_id)


def _sftp_servers(sshd: SshServer) -> list[int]:
    """Pids of the sftp-server processes serving ``sshd``'s sessions."""
    assert sshd.pid is not None
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    tree, found = {sshd.pid}, []
    for _ in range(4):  # listener -> session -> (privsep child ->) sftp-server
        tree |= {pid for pid, parent in parents.items() if parent in tree}
    for pid in tree:
        with contextlib.suppress(OSError):
            if b"sftp-server" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
    return found


async def test_polls_are_served_from_cache_while_the_refresh_runs(
    make_client: AppFactory,
    tmp_path: Path,
    client_key: Path,
    sshd: SshServer,
    home: ComfyHome,
    node_repos: NodeRepos,
) -> None:
    # Long intervals so the machine's load cannot age the cache behind our back.
    settings = make_settings(tmp_path, client_key, refresh_interval=2.0, monitor_interval=3600)
    client = await make_client(settings)
    (home.root / "sleep_seconds").write_text("120")
    task_id = await start_install(
        client, install_body(sshd.connection_string(), home, [node_repos.sleeper.url])
    )
    await wait_for(client, task_id, lambda s, b: b["state"] == "running_install_scripts")
    live = client.app[SERVICE]._live[task_id]
    stats = client.app[STATS]
    (sftp_server,) = _sftp_servers(sshd)
    # A slow instance: every SFTP request now hangs until the server is thawed.
    os.kill(sftp_server, signal.SIGSTOP)
    try:
        cached_read_at = live.view.read_at
        before = stats.snapshot()
        # Past the refresh interval but recent: served at once, one refresh started.
        live.read_mono = time.monotonic() - 1.1 * settings.refresh_interval
        # Served from the cache: the frozen SFTP server is never waited on.
        results = await asyncio.wait_for(
            asyncio.gather(*(poll(client, task_id) for _ in range(20))), 30
        )
        assert [status for status, _ in results] == [200] * 20
        assert {body["read_at"] for _, body in results} == {cached_read_at}
        refresh = live.inflight
        assert refresh is not None and not refresh.done()

        # Much older than the interval: a poll waits for that same read.
        live.read_mono = time.monotonic() - 10 * settings.refresh_interval
        waiting = asyncio.ensure_future(poll(client, task_id))
        done, _ = await asyncio.wait({waiting}, timeout=0.5)
        assert not done, "a very stale document was served without a new read"
        assert live.inflight is refresh
        assert stats.snapshot()["remote_stats"] - before["remote_stats"] <= 1
    finally:
        os.kill(sftp_server, signal.SIGCONT)
    status, fresh = await asyncio.wait_for(waiting, 20)
    assert status == 200 and fresh["read_at"] != cached_read_at
    assert fresh["state"] == "running_install_scripts"
    assert stats.snapshot()["remote_stats"] - before["remote_stats"] == 1
    cancelled = await client.post(f"/api/tasks/{task_id}/cancel")
    assert (await cancelled.json())["state"] == "cancelled"
