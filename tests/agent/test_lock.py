"""Locks end to end: one sandbox ComfyUI's lock reproduces its nodes and package
versions in a second one (real git daemon, real venvs, local wheelhouse), and
``agent diff`` names every way an instance drifted from a lock."""

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from controller.sandbox.comfy import ComfyHome, make_comfy_home, pip_install
from controller.sandbox.gitserver import git
from controller.sandbox.wheels import build_wheel
from protocol import Lock, Progress
from protocol.snapshot import manager_snapshot
from tests.agent.conftest import Agent, Repos

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def old_wheels(tmp_path: Path) -> Path:
    """A second wheelhouse with versions older than the shared one's."""
    wh = tmp_path / "old-wheels"
    build_wheel(wh, "otherdep", "1.0")
    build_wheel(wh, "driftdep", "1.0")
    return wh


def run_spec(agent: Agent, spec: dict[str, Any], expect: int = 0) -> Progress:
    return Progress.from_dict(
        agent.json("run", "--spec", "-", input=json.dumps(spec), expect=expect)
    )


def lock_of(progress: Progress) -> dict[str, Any]:
    assert progress.log_file
    data: dict[str, Any] = json.loads((Path(progress.log_file).parent / "lock.json").read_text())
    return data


def test_lock_reproduces_commits_and_versions_in_a_second_home(
    agent: Agent,
    comfy: ComfyHome,
    repos: Repos,
    venv_template: Path,
    tmp_path: Path,
    old_wheels: Path,
) -> None:
    pip_args = [*agent.pip_args, "--find-links", str(old_wheels)]
    # Sandbox A: otherdep 1.0 already there, so with-reqs2's unpinned "otherdep" keeps it.
    pip_install(comfy.python, old_wheels, "otherdep==1.0")
    first = run_spec(
        agent,
        agent.spec(
            comfy.root,
            [
                repos.plain.url,
                repos.with_reqs.url,
                repos.with_reqs2.url,
                {"url": repos.pinned.url, "ref": repos.pinned_first},
            ],
            pip_args=pip_args,
        ),
    )
    assert first.state == "completed" and first.failed == 0
    lock_a = lock_of(first)
    parsed = Lock.from_dict(lock_a)  # what the agent writes, the protocol reads
    assert lock_a["schema"] == 1 and lock_a["ui_home"] == str(comfy.root)
    assert lock_a["python"]["path"] and lock_a["python"]["version"].count(".") == 2
    assert lock_a["torch"] == {"torch": "1.0.0"}
    assert {n["name"]: n["commit"] for n in lock_a["nodes"]} == {
        "plain": repos.plain.head,
        "with-reqs": repos.with_reqs.head,
        "with-reqs2": repos.with_reqs2.head,
        "pinned": repos.pinned_first,
    }
    packages = lock_a["packages"]
    assert packages["tinydep"] == "1.0" and packages["otherdep"] == "1.0"
    assert packages["torch"] == "1.0.0" and "pip" in packages

    # Sandbox B, fresh: without the lock, "otherdep" would resolve to 2.0.
    home_b = make_comfy_home(tmp_path / "ComfyUI-B", venv_template=venv_template)
    second = run_spec(agent, agent.spec(home_b.root, [], lock=lock_a, pip_args=pip_args))
    assert second.state == "completed" and second.failed == 0, second.nodes
    assert second.warnings == []
    for node in parsed.nodes:
        head = git("rev-parse", "HEAD", cwd=home_b.custom_nodes / node.name)
        assert head == node.commit
    assert home_b.installed("otherdep") == "1.0"
    assert home_b.installed("tinydep") == "1.0"
    lock_b = lock_of(second)
    assert lock_b["nodes"] == lock_a["nodes"]
    assert lock_b["packages"] == lock_a["packages"]

    # Nothing differs between B and A's lock.
    same = agent.run("diff", "--ui-home", str(home_b.root), "--lock", "-", input=json.dumps(lock_a))
    assert same.returncode == 0, same.stdout + same.stderr
    assert json.loads(same.stdout)["equal"] is True

    # ComfyUI-Manager's snapshot of that lock.
    snapshot = manager_snapshot(parsed)
    assert set(snapshot) == {
        "comfyui",
        "git_custom_nodes",
        "cnr_custom_nodes",
        "file_custom_nodes",
        "pips",
    }
    assert snapshot["git_custom_nodes"][repos.pinned.url] == {
        "hash": repos.pinned_first,
        "disabled": False,
    }
    assert snapshot["pips"]["otherdep"] == "1.0"
    assert snapshot["comfyui"] is None  # the sandbox home is not a git clone


def test_instance_torch_wins_over_the_lock_and_says_so(
    agent: Agent, comfy: ComfyHome, repos: Repos, tmp_path: Path, venv_template: Path
) -> None:
    first = run_spec(agent, agent.spec(comfy.root, [repos.with_reqs.url]))
    lock = lock_of(first)
    lock["torch"]["torch"] = "2.0.0"
    lock["packages"]["torch"] = "2.0.0"
    home_b = make_comfy_home(tmp_path / "ComfyUI-B", venv_template=venv_template)
    second = run_spec(agent, agent.spec(home_b.root, [], lock=lock))
    assert second.failed == 0
    assert second.warnings == ["torch: the lock has 2.0.0, this instance has 1.0.0; kept 1.0.0"]
    assert home_b.installed("torch") == "1.0.0"
    constraints = (Path(second.log_file or "").parent / "constraints.txt").read_text()
    assert "torch==1.0.0\n" in constraints and "tinydep==1.0\n" in constraints


def test_diff_names_each_difference(
    agent: Agent, comfy: ComfyHome, repos: Repos, wheelhouse: Path, old_wheels: Path
) -> None:
    pip_install(comfy.python, old_wheels, "driftdep==1.0")
    first = run_spec(
        agent,
        agent.spec(comfy.root, [repos.plain.url, repos.with_reqs.url, repos.pinned.url]),
    )
    lock = lock_of(first)
    lock_file = comfy.root.parent / "lock.json"
    lock_file.write_text(json.dumps(lock))
    # Drift: a node removed, one moved to another commit, one added; a package
    # removed, one at another version, one added.
    shutil.rmtree(comfy.custom_nodes / "plain")
    git("fetch", "-q", "--unshallow", cwd=comfy.custom_nodes / "pinned")
    git("checkout", "-q", repos.pinned_first, cwd=comfy.custom_nodes / "pinned")
    git("clone", "-q", repos.with_install.url, str(comfy.custom_nodes / "with-install"))
    pip_install(comfy.python, wheelhouse, "otherdep==2.0")
    subprocess.run(
        [str(comfy.python), "-m", "pip", "uninstall", "-qy", "driftdep"],
        check=True,
        capture_output=True,
    )
    build_wheel(old_wheels, "tinydep", "0.9")
    pip_install(comfy.python, old_wheels, "tinydep==0.9")
    before = sorted(p.name for p in comfy.custom_nodes.iterdir())

    result = agent.run("diff", "--ui-home", str(comfy.root), "--lock", str(lock_file))
    assert result.returncode == 1, result.stdout + result.stderr
    body = json.loads(result.stdout)
    assert body["equal"] is False
    nodes = body["nodes"]
    assert [n["name"] for n in nodes["missing"]] == ["plain"]
    assert nodes["other_commit"] == [
        {
            "name": "pinned",
            "url": repos.pinned.url,
            "locked": repos.pinned.head,
            "actual": repos.pinned_first,
        }
    ]
    assert [n["name"] for n in nodes["extra"]] == ["with-install"]
    assert nodes["other_url"] == []
    packages = body["packages"]
    assert packages["missing"] == {"driftdep": "1.0"}
    assert packages["other_version"] == {"tinydep": {"locked": "1.0", "actual": "0.9"}}
    assert packages["extra"] == {"otherdep": "2.0"}
    # diff changed nothing.
    assert sorted(p.name for p in comfy.custom_nodes.iterdir()) == before
    assert comfy.installed("tinydep") == "0.9"


def test_diff_rejects_a_bad_lock(agent: Agent, comfy: ComfyHome) -> None:
    bad = agent.run("diff", "--ui-home", str(comfy.root), "--lock", "-", input='{"schema": 7}')
    assert bad.returncode == 2
    body = json.loads(bad.stdout)
    assert body["field"] == "lock.schema" and "unsupported lock schema" in body["message"]
