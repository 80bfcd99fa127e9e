"""What must survive: a controller restart, an sshd restart, a dead agent, two
controllers racing, and the retention job."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from controller.api.appkeys import SERVICE
from controller.common.config import Settings
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

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


_running_state = "running_install_scripts"


def _running(status: int, body: dict[str, Any]) -> bool:
    return status == 200 and body.get("state") == _running_state


async def test_controller_restart_mid_install(
    make_client: AppFactory,
    settings: Settings,
    sshd: SshServer,
    home: ComfyHome,
    node_repos: NodeRepos,
) -> None:
    (home.root / "sleep_seconds").write_text("4")
    first = await make_client(settings)
    task_id = await start_install(
        first, install_body(sshd.connection_string(), home, [node_repos.sleeper.url])
    )
    _, running = await wait_for(first, task_id, _running)
    worker_pid = running["pid"]
    await first.close()

    second = await make_client(settings)
    status, body = await poll(second, task_id)
    assert status == 200
    assert body["state"] in ("running_install_scripts", "completed")
    final = await wait_final(second, task_id)
    assert final["state"] == "completed"
    assert final["pid"] == worker_pid  # the same install, never restarted
    assert (home.custom_nodes / "ComfyUI-Sleeper" / "slept.marker").exists()
    listing = await (await second.get("/api/tasks")).json()
    assert [t["task_id"] for t in listing["tasks"]] == [task_id]


async def test_sshd_restart_mid_install(
    client: Any, sshd: SshServer, home: ComfyHome, node_repos: NodeRepos
) -> None:
    (home.root / "sleep_seconds").write_text("6")
    task_id = await start_install(
        client, install_body(sshd.connection_string(), home, [node_repos.sleeper.url])
    )
    _, running = await wait_for(client, task_id, _running)
    # The network goes away: the listener and every open session die.
    sshd.stop(drop_sessions=True)
    _, stale = await wait_for(client, task_id, lambda s, b: s == 503, timeout=30)
    answer = await client.get(f"/api/tasks/{task_id}")
    assert answer.status == 503 and answer.headers["Retry-After"] == "2"
    assert stale["stale"] is True
    assert stale["success"] is False and stale["error"] == "unreachable"
    assert stale["state"] == "running_install_scripts"
    assert stale["task_id"] == task_id
    assert "cannot be reached" in stale["message"]
    sshd.start()
    final = await wait_final(client, task_id)
    assert final["state"] == "completed"
    assert final["pid"] == running["pid"]
    assert final["stale"] is False
    assert (home.custom_nodes / "ComfyUI-Sleeper" / "slept.marker").exists()


async def test_killed_agent_reads_lost_within_10s(
    client: Any, sshd: SshServer, home: ComfyHome, node_repos: NodeRepos
) -> None:
    (home.root / "sleep_seconds").write_text("120")
    task_id = await start_install(
        client, install_body(sshd.connection_string(), home, [node_repos.sleeper.url])
    )
    _, running = await wait_for(client, task_id, _running)
    worker = running["pid"]
    # The worker leads its own session: kill it and everything it started.
    os.killpg(worker, signal.SIGKILL)
    # Three silent heartbeats (1 s each) by the controller's clock, then `status`
    # says the worker is gone: lost (the ~3 s figure is measured in tests/bench).
    # SIGKILL leaves the worker no chance to write a final document of its own.
    final = await wait_final(client, task_id, timeout=60)
    assert final["state"] == "lost", final
    assert final["error_code"] == "lost"
    assert str(worker) in final["error"] or "died" in final["error"]
    assert final["success"] is False and final["in_progress"] is False


async def test_a_silent_document_prompts_status_after_three_heartbeats_not_lost(
    make_client: AppFactory,
    tmp_path: Path,
    client_key: Path,
    sshd: SshServer,
    home: ComfyHome,
    node_repos: NodeRepos,
) -> None:
    # Default heartbeat; the monitor job stays out of the way (polls drive refreshes).
    settings = make_settings(tmp_path, client_key, monitor_interval=3600)
    heartbeat = settings.heartbeat_interval
    client = await make_client(settings)
    task_id = await start_install(
        client, install_body(sshd.connection_string(), home, [node_repos.gated.url])
    )
    _, running = await wait_for(client, task_id, _running)
    live = client.app[SERVICE]._live[task_id]
    checked_before = live.liveness_mono
    # Frozen, the worker is alive but its document goes silent.
    os.killpg(running["pid"], signal.SIGSTOP)
    try:
        _, body = await wait_for(
            client,
            task_id,
            lambda s, b: live.liveness_mono != checked_before or b["state"] != _running_state,
            timeout=30,
        )
        silent_for = live.liveness_mono - live.changed_mono
        # Keep polling past a few more heartbeats: status keeps saying it lives.
        deadline = time.monotonic() + 2 * heartbeat
        while time.monotonic() < deadline:
            status, body = await poll(client, task_id)
            assert status == 200 and body["state"] == _running_state, body
            await asyncio.sleep(0.1)
    finally:
        os.killpg(running["pid"], signal.SIGCONT)
    assert body["state"] == _running_state
    # Asked once the document had been silent for three heartbeats, not sooner (and
    # not much later: polls every 0.1 s drive the check; the slack is for load).
    assert 3 * heartbeat <= silent_for < 3 * heartbeat + 10, silent_for
    (home.root / "release").touch()
    assert (await wait_final(client, task_id))["state"] == "completed"


async def test_two_controllers_race_on_one_instance(
    make_client: AppFactory,
    tmp_path: Path,
    client_key: Path,
    sshd: SshServer,
    home: ComfyHome,
    node_repos: NodeRepos,
) -> None:
    # Two controllers with their own registries, sharing the instance's agent state.
    remote_state = str(tmp_path / "shared-remote-state")
    one = await make_client(
        make_settings(tmp_path / "one", client_key, remote_state_dir=remote_state)
    )
    two = await make_client(
        make_settings(tmp_path / "two", client_key, remote_state_dir=remote_state)
    )
    # The install holds at its gate until released, so whichever starts second
    # finds the first still running, however the two starts interleave.
    body = install_body(sshd.connection_string(), home, [node_repos.gated.url])
    task_one, task_two = await asyncio.gather(start_install(one, body), start_install(two, body))

    def settled(status: int, doc: dict[str, Any]) -> bool:
        return doc.get("state") in ("failed", _running_state)

    (_, doc_one), (_, doc_two) = await asyncio.gather(
        wait_for(one, task_one, settled), wait_for(two, task_two, settled)
    )
    assert sorted([doc_one["state"], doc_two["state"]]) == ["failed", _running_state]
    (home.root / "release").write_text("go")
    final_one, final_two = await asyncio.gather(
        wait_final(one, task_one), wait_final(two, task_two)
    )
    states = sorted([final_one["state"], final_two["state"]])
    assert states == ["completed", "failed"]
    loser = final_one if final_one["state"] == "failed" else final_two
    winner = final_two if loser is final_one else final_one
    assert loser["error_code"] == "conflict"
    assert "nothing was installed" in loser["error"]
    assert winner["task_id"] in loser["error"]
    assert home.node_dirs() == ["ComfyUI-Gated"]


async def test_retention_job_removes_old_tasks_and_their_files(
    make_client: AppFactory,
    tmp_path: Path,
    client_key: Path,
    sshd: SshServer,
    home: ComfyHome,
    node_repos: NodeRepos,
) -> None:
    settings = make_settings(tmp_path, client_key, retention=1.0, cleanup_interval=0.5)
    client = await make_client(settings)
    task_id = await start_install(
        client, install_body(sshd.connection_string(), home, [node_repos.plain.url])
    )
    await wait_final(client, task_id)
    task_dir = Path(settings.remote_state_dir) / "tasks" / task_id
    assert (task_dir / "progress.json").exists()
    deadline = time.monotonic() + 30
    while (await client.get(f"/api/tasks/{task_id}")).status != 404:
        assert time.monotonic() < deadline, "the retention job never removed the task"
        await asyncio.sleep(0.2)
    assert not task_dir.exists()
    # The install itself is untouched.
    assert home.node_dirs() == ["ComfyUI-Plain"]


async def test_retention_keeps_unfinished_tasks(
    make_client: AppFactory,
    tmp_path: Path,
    client_key: Path,
    sshd: SshServer,
    home: ComfyHome,
    node_repos: NodeRepos,
) -> None:
    settings = make_settings(tmp_path, client_key, retention=1.0)
    client = await make_client(settings)
    (home.root / "sleep_seconds").write_text("3")
    task_id = await start_install(
        client, install_body(sshd.connection_string(), home, [node_repos.sleeper.url])
    )
    await wait_for(client, task_id, _running)
    service = client.app[SERVICE]
    assert await service.cleanup(now=time.time() + 3600) == []
    assert (await wait_final(client, task_id))["state"] == "completed"
    assert await service.cleanup(now=time.time() + 3600) == [task_id]


async def test_a_start_that_never_reached_the_agent_is_launched_after_a_restart(
    make_client: AppFactory,
    settings: Settings,
    sshd: SshServer,
    home: ComfyHome,
    node_repos: NodeRepos,
) -> None:
    # A controller died between answering 202 and running `agent start`.
    import uuid

    from controller.common.target import parse_target
    from controller.core.registry import Registry, TaskRecord
    from protocol import InstallSpec

    task_id = str(uuid.uuid4())
    spec = InstallSpec.from_dict(
        {"task_id": task_id, "ui_home": str(home.root), "nodes": [node_repos.plain.url]}
    )
    registry = Registry(settings.database_path)
    registry.add_if_free(
        TaskRecord(
            task_id,
            parse_target(sshd.connection_string()),
            spec.ui_home,
            spec.to_dict(),
            time.time(),
        )
    )
    registry.close()
    client = await make_client(settings)
    # The restarted controller launches it (the agent would refuse a second start
    # of a task it already has, so this can never install twice) and it completes.
    final = await wait_final(client, task_id)
    assert final["state"] == "completed" and final["successful"] == 1, final
    # The home is free for a new install.
    again = await start_install(
        client, install_body(sshd.connection_string(), home, [node_repos.plain.url])
    )
    assert (await wait_final(client, again))["state"] == "completed"


async def test_a_task_started_elsewhere_is_found_through_ssh_connection(
    make_client: AppFactory,
    tmp_path: Path,
    client_key: Path,
    sshd: SshServer,
    home: ComfyHome,
    node_repos: NodeRepos,
) -> None:
    # Controller one starts the install; controller two has never heard of it.
    remote_state = str(tmp_path / "shared-remote-state")
    one = await make_client(
        make_settings(tmp_path / "one", client_key, remote_state_dir=remote_state)
    )
    two = await make_client(
        make_settings(tmp_path / "two", client_key, remote_state_dir=remote_state)
    )
    # The install waits for our word, so it is surely still running when looked for.
    task_id = await start_install(
        one, install_body(sshd.connection_string(), home, [node_repos.gated.url])
    )
    await wait_for(one, task_id, _running)
    status, _ = await poll(two, task_id)
    assert status == 404
    # Controller two does not have the instance's host key yet: a read does not
    # reach out to it (nor record the key).
    accepted = sshd.accepted_count()
    unknown_host = await two.post(
        "/ssh/install-custom-nodes/progress",
        json={"task_id": task_id, "ssh_connection": sshd.connection_string()},
    )
    assert unknown_host.status == 404
    assert "host's key" in (await unknown_host.json())["message"]
    assert sshd.accepted_count() == accepted
    known_two = tmp_path / "two" / "controller-data" / "known_hosts"
    assert not known_two.exists()
    # Once it has (the operator added it), it looks there.
    known_two.write_text(sshd.known_hosts_line())
    found = await two.post(
        "/ssh/install-custom-nodes/progress",
        json={"task_id": task_id, "ssh_connection": sshd.connection_string()},
    )
    body = await found.json()
    assert found.status == 200, body
    assert body["task_id"] == task_id and body["state"] == "running_install_scripts"
    (home.root / "release").touch()
    # From now on controller two follows it without being told where.
    final = await wait_final(two, task_id)
    assert final["state"] == "completed"
    assert (home.custom_nodes / "ComfyUI-Gated" / "released.marker").exists()
    listing = await (await two.get("/api/tasks")).json()
    assert [t["task_id"] for t in listing["tasks"]] == [task_id]
    # A task that is on neither controller nor instance stays unknown.
    absent = await two.post(
        "/ssh/install-custom-nodes/progress",
        json={
            "task_id": "3f2b8e0a-5c1d-4e7f-9a2b-1c3d5e7f9a2b",
            "ssh_connection": sshd.connection_string(),
        },
    )
    assert absent.status == 404
    assert (await absent.json())["in_progress"] is False
