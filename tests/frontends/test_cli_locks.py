"""``nodeferry lock``, ``snapshot``, ``diff`` and ``install --lock`` / ``--no-verify`` as
a person runs them: subprocesses against a running controller (local transport,
the real agent, the demo sandbox's git daemon and venv)."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest

from tests.frontends.conftest import DemoWorld, RunningController
from tests.frontends.test_cli import (  # the autouse fixture: commands find the token
    _commands_find_the_token,  # noqa: F401
    install_args,
    run_cli,
)

pytestmark = pytest.mark.slow


@pytest.mark.timeout(240)
def test_lock_snapshot_reproduce_and_diff_from_the_command_line(
    controller: RunningController, world: DemoWorld, tmp_path: Path
) -> None:
    url = controller.url
    home_a = world.new_ui_home(tmp_path / "A")
    nodes = world.nodes()[:2]
    first = run_cli(*install_args(world, home_a, nodes, url), "--json")
    assert first.returncode == 0, first.stdout + first.stderr
    task = json.loads(first.stdout)["task_id"]

    lock_file = tmp_path / "lock.json"
    written = run_cli("lock", "--controller", url, task, "-o", str(lock_file))
    assert written.returncode == 0, written.stderr
    lock = json.loads(lock_file.read_text())
    printed = run_cli("lock", "--controller", url, task)
    assert printed.returncode == 0 and json.loads(printed.stdout) == lock
    assert lock["schema"] == 1 and lock["ui_home"] == str(home_a)
    locked = {n["name"]: n["commit"] for n in lock["nodes"]}
    assert len(locked) == 2

    snapshot = run_cli("snapshot", "--controller", url, task)
    assert snapshot.returncode == 0, snapshot.stderr
    manager = json.loads(snapshot.stdout)
    assert {v["hash"] for v in manager["git_custom_nodes"].values()} == set(locked.values())

    # install --lock into a second home: the same nodes at the same commits.
    home_b = world.new_ui_home(tmp_path / "B")
    again = run_cli(*install_args(world, home_b, [], url), "--lock", str(lock_file), "--json")
    assert again.returncode == 0, again.stdout + again.stderr
    reproduced = json.loads(again.stdout)
    assert {n["name"]: n["commit"] for n in reproduced["nodes"]} == locked

    # The demo homes share the sandbox's venv, which the agent would not find alone.
    python = ["--python", str(world.sandbox.python)]
    same = run_cli("diff", "--controller", url, "--ui-home", str(home_b), *python, str(lock_file))
    assert same.returncode == 0, same.stdout + same.stderr
    assert "matches the lock" in same.stdout

    gone = sorted(locked)[0]
    shutil.rmtree(home_b / "custom_nodes" / gone)
    drifted = run_cli(
        "diff", "--controller", url, "--ui-home", str(home_b), *python, str(lock_file)
    )
    assert drifted.returncode == 1, drifted.stdout + drifted.stderr
    assert "differs from the lock in 1 way:" in drifted.stdout
    assert f"node missing: {gone}" in drifted.stdout
    as_json = run_cli(
        "diff", "--controller", url, "--ui-home", str(home_b), *python, "--json", str(lock_file)
    )
    assert as_json.returncode == 1
    body = json.loads(as_json.stdout)
    assert body["equal"] is False
    assert [n["name"] for n in body["differences"]["nodes"]["missing"]] == [gone]


@pytest.mark.timeout(150)
def test_lock_commands_refuse_bad_input(
    controller: RunningController, world: DemoWorld, tmp_path: Path
) -> None:
    url = controller.url
    unknown = run_cli("lock", "--controller", url, str(uuid.uuid4()))
    assert unknown.returncode == 4 and "no task" in unknown.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": 9}))
    home = world.new_ui_home(tmp_path)
    refused = run_cli(*install_args(world, home, [], url), "--lock", str(bad))
    assert refused.returncode == 2 and "lock.schema" in refused.stderr
    both = run_cli(*install_args(world, home, world.nodes()[:1], url), "--lock", str(bad))
    assert both.returncode == 2 and "not both" in both.stderr
    diff = run_cli("diff", "--controller", url, "--ui-home", str(home), str(tmp_path / "none"))
    assert diff.returncode == 2 and "cannot read" in diff.stderr
    assert list((home / "custom_nodes").iterdir()) == []


@pytest.mark.timeout(150)
def test_no_verify_skips_the_import_check(
    controller: RunningController, world: DemoWorld, tmp_path: Path
) -> None:
    home = world.new_ui_home(tmp_path)
    done = run_cli(
        *install_args(world, home, world.nodes()[:1], controller.url), "--no-verify", "--json"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["nodes"][0]["import"]["status"] == "skipped"
