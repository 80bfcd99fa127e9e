"""Workflow-ready (#22) with the real ComfyUI 0.3.64 on the CPU: started by the test as
a plain process, as a supervisord program, or not at all (then by ``restart``'s
command); nodeferry installs a workflow's packs over a real sshd and restarts it
the way it runs; ``/object_info`` says what the server has.

The packs: the real rgthree-comfy (no requirements, so the cached venv is used
as it is and never changed) and a synthetic pack whose import fails (the "pack
that failed"), served by a real git daemon. The workflow resolves to them through
a node database that maps their classes to those loopback URLs, as
ComfyUI-Manager's maps classes to GitHub.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from controller.api.app import create_app
from controller.core.sources.nodedb import CORE_URL, MAP_FILE
from controller.sandbox.gitserver import GitServer, git
from tests.controller.conftest import make_settings
from tests.realworld.packs import shared_dir
from tests.support import comfy_server, realcomfy
from tests.support.procs import end_processes_under
from tests.support.sshd import SshServer, free_port, make_key

pytestmark = [pytest.mark.realworld, pytest.mark.slow]

#: The classes of ComfyUI's own default workflow (the templates package its
#: requirements install), which every test's workflow starts from.
CORE = [
    "CLIPTextEncode",
    "EmptyLatentImage",
    "KSampler",
    "VAEDecode",
    "SaveImage",
    "CheckpointLoaderSimple",
]
GOOD = "Seed (rgthree)"
BROKEN = "NfBrokenProbe"
BROKEN_INIT = """\
raise ImportError("this pack needs a library that is not installed")
NODE_CLASS_MAPPINGS = {"NfBrokenProbe": object}
"""
FINAL = {"completed", "failed", "cancelled", "lost"}


def default_workflow() -> dict[str, Any]:
    """ComfyUI's default text-to-image workflow, as its frontend ships it."""
    venv = realcomfy.base_venv()
    assert venv is not None
    (found,) = venv.glob(
        "lib/python3*/site-packages/comfyui_workflow_templates/templates/default.json"
    )
    data: dict[str, Any] = json.loads(found.read_text())
    return data


def workflow(*extra: str) -> dict[str, Any]:
    """The default workflow with a node of each ``extra`` class added (and a Note,
    which needs no server), the way a user adds a pack's node to it."""
    data = default_workflow()
    assert sorted({n["type"] for n in data["nodes"]}) == sorted(CORE)
    next_id = max(int(n["id"]) for n in data["nodes"]) + 1
    for offset, name in enumerate([*extra, "Note"]):
        data["nodes"].append(
            {
                "id": next_id + offset,
                "type": name,
                "pos": [100, 900 + 120 * offset],
                "size": [300, 100],
                "flags": {},
                "order": next_id + offset,
                "mode": 0,
                "inputs": [],
                "outputs": [],
                "properties": {"Node name for S&R": name},
                "widgets_values": [],
            }
        )
    data["last_node_id"] = next_id + len(extra)
    return data


def _missing(what: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"restart tier: {what}", pytrace=False)
    pytest.skip(f"restart tier: {what}")


@dataclass
class World:
    python: Path
    git: GitServer
    node_db: Path
    key: Path

    def urls(self) -> tuple[str, str]:
        return f"{self.git.base_url}/rgthree-comfy", f"{self.git.base_url}/ComfyUI-NfBroken"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    venv = realcomfy.base_venv()
    shared = shared_dir()
    if venv is None or realcomfy.bundle() is None or shared is None:
        _missing("the real ComfyUI or its venv is missing: python -m tests.support.realcomfy")
    assert venv is not None and shared is not None
    root = tmp_path_factory.mktemp("restart-world")
    served = root / "served"
    served.mkdir()
    git(
        "clone", "-q", "--bare", str(shared / "bundles" / "rgthree-comfy.bundle"),
        str(served / "rgthree-comfy"),
    )  # fmt: skip
    work = root / "broken-work"
    work.mkdir()
    (work / "__init__.py").write_text(BROKEN_INIT)
    git("init", "-q", str(work))
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "a pack whose import fails", cwd=work)
    git("clone", "-q", "--bare", str(work), str(served / "ComfyUI-NfBroken"))
    with GitServer(root / "gitd", served=served) as server:
        node_db = root / "node-db"
        node_db.mkdir()
        good, broken = f"{server.base_url}/rgthree-comfy", f"{server.base_url}/ComfyUI-NfBroken"
        (node_db / MAP_FILE).write_text(
            json.dumps(
                {
                    CORE_URL: [CORE, {"title_aux": "ComfyUI"}],
                    good: [[GOOD, "Context (rgthree)"], {"title_aux": "rgthree"}],
                    broken: [[BROKEN], {"title_aux": "broken"}],
                }
            )
        )
        yield World(venv / "bin" / "python", server, node_db, make_key(root / "id_ed25519"))


@dataclass
class Instance:
    home: Path
    port: int
    ssh: str
    client: TestClient[Any, Any]
    log: Path


@pytest.fixture
async def instance(world: World, tmp_path: Path) -> AsyncIterator[Instance]:
    """A real ComfyUI checkout reached over a real sshd, and a controller for it."""
    home = realcomfy.checkout(tmp_path / "ComfyUI")
    sshd = SshServer(tmp_path / "sshd", client_key=world.key)
    sshd.start()
    settings = make_settings(
        tmp_path, world.key, online_lookups=False, node_db=world.node_db, allow_local=False
    )
    app = create_app(settings)
    client = TestClient(TestServer(app), headers={"Authorization": f"Bearer {settings.token}"})
    await client.start_server()
    try:
        yield Instance(home, free_port(), sshd.connection_string(), client, tmp_path / "comfy.log")
    finally:
        await client.close()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, end_processes_under, tmp_path)
        await loop.run_in_executor(None, comfy_server.end_servers, home)
        sshd.stop()
        # The leak check: nothing of this ComfyUI is left, whoever started it.
        assert comfy_server.server_pids(home) == {}


async def install(inst: Instance, world: World, **fields: Any) -> dict[str, Any]:
    body = {
        "ssh_connection": inst.ssh,
        "ui_home": str(inst.home),
        "python": str(world.python),
        # ComfyUI's own import report (main.py --quick-test-for-ci --cpu): a node's
        # import alone asks torch for CUDA through comfy.model_management here.
        "verify": "comfyui",
    }
    body.update(fields)
    answer = await inst.client.post("/ssh/install-custom-nodes", json=body)
    started = await answer.json()
    assert answer.status == 202, started
    return await wait_final(inst, started["task_id"])


async def wait_final(inst: Instance, task_id: str, timeout: float = 150.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while True:
        reply = await inst.client.post(
            "/ssh/install-custom-nodes/progress", json={"task_id": task_id}
        )
        doc: dict[str, Any] = await reply.json()
        if not seen or seen[-1] != doc.get("state"):
            seen.append(str(doc.get("state")))
        if reply.status == 200 and doc.get("state") in FINAL:
            doc["seen_states"] = seen
            return doc
        assert time.monotonic() < deadline, f"not final in {timeout}s: {seen} {doc}"
        await asyncio.sleep(0.25)


def one_server(home: Path) -> tuple[int, list[str]]:
    pids = comfy_server.server_pids(home)
    assert len(pids) == 1, pids
    return next(iter(pids.items()))


def node(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(n for n in doc["nodes"] if n["name"] == name)


@pytest.mark.timeout(240)
async def test_a_plain_process_is_restarted_and_a_class_of_the_failed_pack_reads_missing(
    world: World, instance: Instance
) -> None:
    started = comfy_server.start_plain(instance.home, world.python, instance.port, instance.log)
    try:
        before = comfy_server.wait_ready(instance.port, 120, instance.log)
        assert GOOD not in before
        old_pid, old_argv = one_server(instance.home)
        doc = await install(instance, world, workflow=workflow(GOOD, BROKEN), restart="auto")
        assert doc["state"] == "completed", doc
        assert "restarting" in doc["seen_states"]
        assert node(doc, "rgthree-comfy")["status"] == "installed", node(doc, "rgthree-comfy")
        assert node(doc, "ComfyUI-NfBroken")["status"] == "failed"
        ready = doc["ready"]
        print(f"restarted by process: {ready['seconds']:.1f}s, {ready['classes']} classes")
        assert ready["restarted_by"] == "process"
        # Every class the workflow needs is asked for; only the failed pack's is missing.
        assert ready["missing"] == [BROKEN]
        assert ready["classes"] > len(before)
        assert doc["success"] is False and BROKEN in doc["error"]
        new_pid, new_argv = one_server(instance.home)
        assert new_pid != old_pid and ready["pid"] == new_pid
        assert new_argv == old_argv
        after = comfy_server.object_info(instance.port)
        assert after is not None and GOOD in after and BROKEN not in after
        # The old server is gone (only its zombie was left for us to reap).
        assert started.wait(timeout=10) is not None

        # Standalone, against the running server: the workflow without the broken
        # pack can run, the one with it cannot, and nothing restarts.
        asked = {"ssh_connection": instance.ssh, "ui_home": str(instance.home)}
        reply = await instance.client.post("/api/ready", json={**asked, "workflow": workflow(GOOD)})
        body = await reply.json()
        assert reply.status == 200, body
        assert body["can_run"] is True and body["ready"]["missing"] == []
        assert body["ready"]["restarted_by"] is None and body["ready"]["pid"] == new_pid
        reply = await instance.client.post(
            "/api/ready", json={**asked, "workflow": workflow(GOOD, BROKEN)}
        )
        body = await reply.json()
        assert body["can_run"] is False and body["ready"]["missing"] == [BROKEN]
        assert one_server(instance.home)[0] == new_pid
    finally:
        comfy_server.end_servers(instance.home)
        started.wait(timeout=30)


@pytest.mark.timeout(240)
async def test_a_supervisord_program_is_restarted_with_supervisorctl(
    world: World, instance: Instance, tmp_path: Path
) -> None:
    with comfy_server.Supervisord(
        tmp_path / "supervisor", instance.home, world.python, instance.port, "comfyui"
    ) as supervisor:
        comfy_server.wait_ready(instance.port, 120, supervisor.log)
        old_pid, old_argv = one_server(instance.home)
        # verify: false here: the restarted server's own answer is the check.
        doc = await install(instance, world, workflow=workflow(GOOD), restart="auto", verify=False)
        assert doc["state"] == "completed" and doc["success"] is True, doc
        ready = doc["ready"]
        print(f"restarted by supervisor: {ready['seconds']:.1f}s, {ready['classes']} classes")
        assert ready["restarted_by"] == "supervisor" and ready["service"] == "comfyui"
        assert ready["missing"] == []
        new_pid, new_argv = one_server(instance.home)
        assert new_pid != old_pid and new_argv == old_argv
        # supervisord itself started the new one: it is its program, running.
        status = supervisor.ctl("status", "comfyui")
        assert "RUNNING" in status and f"pid {new_pid}," in status
        info = comfy_server.object_info(instance.port)
        assert info is not None and GOOD in info


@pytest.mark.timeout(240)
async def test_with_nothing_running_the_configured_command_starts_it(
    world: World, instance: Instance
) -> None:
    assert comfy_server.server_pids(instance.home) == {}
    argv = comfy_server.server_argv(world.python, instance.port)
    doc = await install(
        instance,
        world,
        workflow=workflow(GOOD, BROKEN),
        restart={"command": argv},
        ready_timeout=120,
        # Not checked by nodeferry: the broken pack reads "installed", and the
        # server's answer is what still fails the task.
        verify=False,
    )
    assert doc["state"] == "completed", doc
    assert node(doc, "ComfyUI-NfBroken")["status"] == "installed"
    ready = doc["ready"]
    print(f"started by the command: {ready['seconds']:.1f}s, {ready['classes']} classes")
    assert ready["restarted_by"] == "command" and ready["missing"] == [BROKEN]
    assert doc["success"] is False
    pid, running = one_server(instance.home)
    assert running == argv and ready["pid"] == pid
    # Its output went to the task's folder on the instance, not to a terminal.
    logs = list((instance.home.parent / "remote-state" / "tasks").glob("*/comfyui.log"))
    assert len(logs) == 1 and "Starting server" in logs[0].read_text(errors="replace")


@pytest.mark.timeout(120)
async def test_without_a_running_comfyui_the_answer_is_honest_and_not_a_failure(
    world: World, instance: Instance
) -> None:
    good, _broken = world.urls()
    doc = await install(instance, world, nodes=[good], restart="auto", verify=False)
    assert doc["state"] == "completed" and doc["success"] is True, doc
    assert doc["ready"]["note"] == "no running ComfyUI found for this home"
    assert doc["ready"]["restarted_by"] is None and doc["ready"]["classes"] is None
    assert comfy_server.server_pids(instance.home) == {}


@pytest.mark.timeout(30)
def test_the_tier_ends_what_it_starts(tmp_path: Path) -> None:
    """comfy_server's own contract: end_servers stops a server by pid, and the
    /proc lookup sees it while it runs (so the leak assertions above can fail)."""
    home = tmp_path / "ComfyUI"
    home.mkdir()
    (home / "main.py").write_text("import time\ntime.sleep(60)\n")
    proc = subprocess.Popen(["python3", "main.py", "--port", "1"], cwd=home, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while proc.pid not in comfy_server.server_pids(home) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.pid in comfy_server.server_pids(home)
        assert comfy_server.end_servers(home) == [proc.pid]
        assert proc.wait(timeout=10) is not None
        assert comfy_server.server_pids(home) == {}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
