"""``nodeferry install --ssh A --ssh B``: one fleet, one view, an honest exit status."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.frontends.conftest import DemoWorld, RunningController
from tests.frontends.test_cli import (  # the autouse fixture: commands find the token
    _commands_find_the_token,  # noqa: F401
    install_args,
    run_cli,
)
from tests.support.sshd import free_port

pytestmark = pytest.mark.slow


@pytest.mark.timeout(150)
def test_install_on_two_instances_one_down(
    controller: RunningController, world: DemoWorld, tmp_path: Path
) -> None:
    # An instance that is down: nothing listens on its port.
    down = f"root@127.0.0.1 -p {free_port()}"
    home = world.new_ui_home(tmp_path / "json")
    args = install_args(world, home, world.nodes()[:1], controller.url)
    result = run_cli(*args, "--ssh", "local", "--ssh", down, "--json")
    assert result.returncode == 1, result.stderr
    fleet = json.loads(result.stdout)
    assert (fleet["instances"], fleet["completed"], fleet["failed"]) == (2, 1, 1)
    local, remote = fleet["per_instance"]
    assert local["target"] == "local" and local["state"] == "completed" and local["success"]
    assert remote["state"] == "failed" and remote["error_code"] == "start_failed"
    assert (home / "custom_nodes" / "ComfyUI-Demo-Basics").is_dir()

    # The human view: a line per instance as its state changes, then the table.
    home = world.new_ui_home(tmp_path / "human")
    args = install_args(world, home, world.nodes()[:1], controller.url)
    human = run_cli(*args, "--ssh", "local", "--ssh", down)
    assert human.returncode == 1, human.stderr
    assert f"fleet {fleet['fleet_id']}" not in human.stdout  # a new fleet each time
    assert "local:" + str(home) + " completed" in human.stdout, human.stdout
    assert "✗ 1 of 2 instances installed every node; 1 failed" in human.stdout
