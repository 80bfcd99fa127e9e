"""``nodeferry install`` with every option at a value other than its default, on
one instance and on a fleet of two (``--ssh A --ssh B``, which once dropped six
of them): each option is in the request the command sent, and each one that
reaches the agent is in the ``spec.json`` the agent wrote on the instance.

The instances are two real sshd processes on loopback; each gives its sessions
a HOME of their own, so ``~/ComfyUI`` is a different folder on each, as on two
machines built from one image."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from controller.api.app import create_app
from controller.common.config import Settings
from controller.core.schemas import INSTALL_FIELDS
from controller.sandbox.comfy import ComfyHome
from tests.controller.conftest import NodeRepos, comfy_home, make_settings
from tests.support.options import command_line, non_default, with_flags
from tests.support.procs import end_processes_under
from tests.support.sshd import SshServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

SPEC = {field.name for field in INSTALL_FIELDS if field.spec}


class Instance:
    """One sshd whose sessions live in their own HOME, with a ComfyUI in it."""

    def __init__(self, base: Path, client_key: Path) -> None:
        self.home_dir = base / "home"
        self.home_dir.mkdir(parents=True)
        self.comfy: ComfyHome = comfy_home(self.home_dir / "ComfyUI")
        self.sshd = SshServer(
            base / "sshd", client_key=client_key, extra_config=f"SetEnv HOME={self.home_dir}"
        )


@pytest.fixture
def instances(tmp_path: Path, client_key: Path) -> Iterator[list[Instance]]:
    made = [Instance(tmp_path / name, client_key) for name in ("a", "b")]
    try:
        for instance in made:
            instance.sshd.start()
        yield made
    finally:
        for instance in made:
            instance.sshd.stop()


Recorded = dict[str, list[dict[str, Any]]]


@pytest.fixture
async def controller(
    tmp_path: Path, client_key: Path
) -> AsyncIterator[tuple[TestClient[web.Request, web.Application], Settings, Recorded]]:
    """The controller, recording the body of every request that starts something."""
    settings = make_settings(tmp_path, client_key)
    app = create_app(settings)
    recorded: Recorded = {}

    @web.middleware
    async def record(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.method == "POST" and request.can_read_body:
            recorded.setdefault(request.path, []).append(json.loads(await request.read()))
        return await handler(request)

    app.middlewares.append(record)
    client = TestClient(TestServer(app), headers={"Authorization": f"Bearer {settings.token}"})
    await client.start_server()
    try:
        yield client, settings, recorded
    finally:
        await client.close()
        await asyncio.get_running_loop().run_in_executor(None, end_processes_under, tmp_path)


async def nodeferry(
    client: TestClient[Any, Any], settings: Settings, *args: str
) -> tuple[int, str, str]:
    """``nodeferry ARGS`` in its own process, against the test's controller."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "controller.cli.main",
        *args,
        "--controller",
        str(client.make_url("")),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "NODEFERRY_TOKEN": settings.token or ""},
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=180)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def spec_on_instance(settings: Settings, task_id: str) -> dict[str, Any]:
    """What the agent was given, as it wrote it into its task folder."""
    path = Path(settings.remote_state_dir) / "tasks" / task_id / "spec.json"
    spec: dict[str, Any] = json.loads(path.read_text())
    return spec


def assert_options_arrived(
    sent: dict[str, Any], spec: dict[str, Any], options: dict[str, Any]
) -> None:
    for name, value in options.items():
        assert sent.get(name) == value, f"the request lacks {name}={value!r}: {sent}"
        if name in SPEC:
            assert spec[name] == value, f"spec.json has {name}={spec.get(name)!r}, not {value!r}"


async def test_a_fleet_install_passes_every_option_to_every_instance(
    controller: tuple[TestClient[Any, Any], Settings, Recorded],
    instances: list[Instance],
    node_repos: NodeRepos,
    tmp_path: Path,
) -> None:
    client, settings, recorded = controller
    lock = {
        "schema": 1,
        "created_at": "2026-01-01T00:00:00.000Z",
        "ui_home": "~/ComfyUI",
        "nodes": [
            {"name": repo.name, "url": repo.url, "commit": repo.head}
            for repo in (node_repos.plain, node_repos.second)
        ],
        "packages": {},
    }
    lock_file = tmp_path / "lock.json"
    lock_file.write_text(json.dumps(lock))
    options = with_flags(non_default())
    targets = [arg for i in instances for arg in ("--ssh", i.sshd.connection_string())]
    status, out, err = await nodeferry(
        client,
        settings,
        "install",
        *targets,
        "--ui-home",
        "~/ComfyUI",
        "--lock",
        str(lock_file),
        *command_line(options),
        "--json",
    )
    assert status == 0, err + out
    fleet = json.loads(out)
    assert fleet["all_succeeded"] is True and fleet["instances"] == 2, fleet
    [sent] = recorded["/api/fleet"]
    assert sent["lock"]["nodes"] == lock["nodes"], "the fleet did not get the lock"
    for instance, member in zip(instances, fleet["per_instance"], strict=True):
        spec = spec_on_instance(settings, member["task_id"])
        assert_options_arrived(sent, spec, options)
        assert spec["lock"]["nodes"] == lock["nodes"] and "nodes" not in spec
        assert spec["ui_home"] == "~/ComfyUI"
        for repo in (node_repos.plain, node_repos.second):
            assert (instance.comfy.custom_nodes / repo.name / "__init__.py").is_file()


async def test_a_single_install_passes_every_option(
    controller: tuple[TestClient[Any, Any], Settings, Recorded],
    instances: list[Instance],
    node_repos: NodeRepos,
) -> None:
    client, settings, recorded = controller
    instance = instances[0]
    options = with_flags(non_default())
    status, out, err = await nodeferry(
        client,
        settings,
        "install",
        "--ssh",
        instance.sshd.connection_string(),
        "--ui-home",
        str(instance.comfy.root),
        *command_line(options),
        node_repos.plain.url,
        f"{node_repos.second.url}@main",
        "--json",
    )
    assert status == 0, err + out
    final = json.loads(out)
    assert final["state"] == "completed" and final["success"] is True, final
    [sent] = recorded["/ssh/install-custom-nodes"]
    spec = spec_on_instance(settings, final["task_id"])
    assert_options_arrived(sent, spec, options)
    assert [(n["url"], n["ref"]) for n in spec["nodes"]] == [
        (node_repos.plain.url, None),
        (node_repos.second.url, "main"),
    ]
