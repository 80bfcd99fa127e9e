"""``nodeferry install --snapshot FILE`` against a running controller, with the
sandbox's nodes behind the loopback git daemon."""

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


@pytest.mark.timeout(150)
def test_install_from_a_yaml_snapshot(
    controller: RunningController, world: DemoWorld, tmp_path: Path
) -> None:
    first, second = world.nodes()[:2]
    snapshot = tmp_path / "snapshot.yaml"
    snapshot.write_text(
        "comfyui: b779349b55e79aff81a98b752f5cb486c71812db\n"
        "git_custom_nodes:\n"
        f"  {first.split('@')[0]}:\n    hash: null\n    disabled: false\n"
        f"  {second.split('@')[0]}:\n    hash: null\n    disabled: true\n"
    )
    home = world.new_ui_home(tmp_path / "snap")
    args = install_args(world, home, [], controller.url)
    done = run_cli(*args, "--snapshot", str(snapshot), "--json")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["success"] is True
    assert [n["url"] for n in document["nodes"]] == [first.split("@")[0]]
    assert document["resolution"]["nodes"][0]["rule"] == "snapshot"
    assert any("disabled" in w for w in document["resolution"]["warnings"])

    broken = tmp_path / "broken.yaml"
    broken.write_text("git_custom_nodes: [unclosed\n")
    refused = run_cli(*args, "--snapshot", str(broken))
    assert refused.returncode == 2 and "--snapshot" in refused.stderr
