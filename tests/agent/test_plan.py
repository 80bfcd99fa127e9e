"""Plan mode end to end against the git daemon, wheelhouses and a real venv: a plan
changes nothing, predicts the install's package changes, and an apply installs it
or refuses drift; policies refuse before anything is touched."""

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from controller.sandbox.comfy import NODE_INIT, ComfyHome, isolated_pip_env
from controller.sandbox.gitserver import GitServer, Repo
from controller.sandbox.wheels import build_wheel
from protocol import Progress
from tests.agent.conftest import Agent, Repos

pytestmark = pytest.mark.timeout(180)


def tree_hash(root: Path) -> str:
    """Every path, mode and file content under ``root`` (symlinks as their target)."""
    digest = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            digest.update(str(path.relative_to(root)).encode())
            if path.is_symlink():
                digest.update(os.readlink(path).encode())
            else:
                digest.update(path.read_bytes())
    return digest.hexdigest()


def freeze(comfy: ComfyHome) -> str:
    return subprocess.run(
        [str(comfy.python), "-m", "pip", "freeze", "--all"],
        capture_output=True,
        text=True,
        check=True,
        env=isolated_pip_env(),
        timeout=60,
    ).stdout


@pytest.fixture(scope="module")
def shared_wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wheels = tmp_path_factory.mktemp("plan-wheels")
    build_wheel(wheels, "sharedlib", "1.0")
    build_wheel(wheels, "sharedlib", "2.0")
    return wheels


@pytest.fixture(scope="module")
def old_sharedlib(git_server: GitServer) -> Repo:
    return git_server.add_repo(
        "wants-old-sharedlib", {"__init__.py": NODE_INIT, "requirements.txt": "sharedlib<2\n"}
    )


def run(agent: Agent, spec: dict[str, Any], expect: int = 0) -> Progress:
    return Progress.from_dict(
        agent.json("run", "--spec", "-", input=json.dumps(spec), expect=expect)
    )


def with_sharedlib_2(agent: Agent, comfy: ComfyHome, wheels: Path) -> None:
    subprocess.run(
        [
            str(comfy.python),
            "-m",
            "pip",
            "install",
            "-q",
            *agent.pip_args,
            "--find-links",
            str(wheels),
            "sharedlib==2.0",
        ],
        check=True,
        env=isolated_pip_env(),
        timeout=120,
        capture_output=True,
    )


def expectation(plan_task: Progress) -> dict[str, Any]:
    plan = plan_task.plan
    assert plan is not None
    return {
        "plan_id": plan_task.task_id,
        "heads": plan["environment"]["heads"],
        "packages": plan["environment"]["packages"],
        "pins": plan["apply"]["pins"],
    }


@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_a_plan_changes_nothing_and_predicts_the_install(
    installer: str,
    agent: Agent,
    comfy: ComfyHome,
    repos: Repos,
    shared_wheels: Path,
    old_sharedlib: Repo,
) -> None:
    agent.env["NODEFERRY_AGENT_INSTALLER"] = installer
    with_sharedlib_2(agent, comfy, shared_wheels)
    pip_args = [*agent.pip_args, "--find-links", str(shared_wheels)]
    nodes = [repos.with_reqs.url, repos.with_install.url, old_sharedlib.url]
    tree, frozen = tree_hash(comfy.root), freeze(comfy)

    listing = sorted(str(p) for p in comfy.root.rglob("*"))
    planned = run(agent, agent.spec(comfy.root, nodes, pip_args=pip_args, mode="plan"))
    assert set(str(p) for p in comfy.root.rglob("*")) ^ set(listing) == set()
    assert (tree_hash(comfy.root), freeze(comfy)) == (tree, frozen)
    assert planned.state == "completed" and planned.plan is not None
    assert {n.status for n in planned.nodes} == {"planned"}
    plan = planned.plan
    assert [n["action"] for n in plan["nodes"]] == ["new", "new", "new"]
    assert plan["packages"]["added"] == {"tinydep": [None, "1.0"]}
    assert plan["packages"]["downgraded"] == {"sharedlib": ["2.0", "1.0"]}
    assert plan["reasons"]["sharedlib"][0] == "wants-old-sharedlib: sharedlib<2"
    assert plan["install_scripts"] == ["with-install"]
    assert plan["interpreter"]["path"] == str(comfy.python)
    assert plan["installer"] == installer

    installed = run(
        agent,
        agent.spec(
            comfy.root, plan["apply"]["nodes"], pip_args=pip_args, expect=expectation(planned)
        ),
    )
    assert installed.state == "completed" and installed.failed == 0
    # The plan's predicted changes are the install's recorded ones, package for package.
    assert installed.packages == plan["packages"]
    assert [n.commit for n in installed.nodes] == [n["to"] for n in plan["nodes"]]
    # The plan's clones were taken, not made again.
    assert installed.log_file
    assert Path(installed.log_file).read_text().count("took the plan's staged clone") == 3
    assert list((agent.state_dir / "tasks" / planned.task_id / "staged").iterdir()) == []


def test_an_apply_after_drift_is_refused_naming_what_changed(
    agent: Agent, comfy: ComfyHome, repos: Repos, shared_wheels: Path
) -> None:
    pip_args = [*agent.pip_args, "--find-links", str(shared_wheels)]
    planned = run(
        agent, agent.spec(comfy.root, [repos.with_reqs.url], pip_args=pip_args, mode="plan")
    )
    assert planned.plan is not None
    with_sharedlib_2(agent, comfy, shared_wheels)  # the environment moves on
    tree = tree_hash(comfy.root)
    refused = run(
        agent,
        agent.spec(
            comfy.root,
            planned.plan["apply"]["nodes"],
            pip_args=pip_args,
            expect=expectation(planned),
        ),
        expect=1,
    )
    assert refused.state == "failed" and refused.error_code == "plan_drift"
    assert refused.error and "sharedlib added since the plan (absent -> 2.0)" in refused.error
    assert tree_hash(comfy.root) == tree
    assert not (comfy.custom_nodes / repos.with_reqs.name).exists()


@pytest.mark.parametrize("mode", ["plan", "install"])
def test_forbid_downgrade_refuses_naming_package_change_and_pack(
    mode: str, agent: Agent, comfy: ComfyHome, shared_wheels: Path, old_sharedlib: Repo
) -> None:
    with_sharedlib_2(agent, comfy, shared_wheels)
    pip_args = [*agent.pip_args, "--find-links", str(shared_wheels)]
    tree, frozen = tree_hash(comfy.root), freeze(comfy)
    refused = run(
        agent,
        agent.spec(
            comfy.root,
            [old_sharedlib.url],
            pip_args=pip_args,
            mode=mode,
            forbid_downgrade=["SharedLib"],
        ),
        expect=1,
    )
    assert refused.state == "failed" and refused.error_code == "policy_violation"
    assert refused.error and (
        "sharedlib would be downgraded 2.0 -> 1.0 (forced by wants-old-sharedlib: sharedlib<2"
        in refused.error
    )
    assert (tree_hash(comfy.root), freeze(comfy)) == (tree, frozen)


def test_a_comfyui_of_the_home_on_another_python_is_found_in_proc(
    tmp_path: Path, comfy: ComfyHome
) -> None:
    import sys

    from agent import running_comfyui

    (comfy.root / "main.py").write_text("")
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "main.py"], cwd=comfy.root
    )
    try:
        deadline = time.monotonic() + 10
        found: list[running_comfyui.Running] = []
        while not found and time.monotonic() < deadline:
            found = running_comfyui.find(comfy.root)
        assert [r.pid for r in found] == [proc.pid]
        assert found[0].identity != running_comfyui.identity(str(comfy.python))
        assert running_comfyui.identity(str(comfy.python)) == str(comfy.venv.resolve())
        assert running_comfyui.find(tmp_path) == []  # another home: not this process
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_a_culprit_is_named_with_its_conflict_and_the_rest_still_planned(
    agent: Agent, comfy: ComfyHome, repos: Repos
) -> None:
    tree, frozen = tree_hash(comfy.root), freeze(comfy)
    spec = agent.spec(comfy.root, [repos.with_reqs.url, repos.bad_req.url], mode="plan")
    planned = run(agent, spec, expect=1)
    assert planned.state == "completed" and planned.plan is not None
    by_name = {n.name: n for n in planned.nodes}
    assert by_name["with-reqs"].status == "planned"
    assert by_name["bad-req"].status == "failed"
    assert by_name["bad-req"].error_code == "resolver_conflict"
    (culprit,) = planned.plan["culprits"]
    assert culprit["node"] == "bad-req" and "no-such-package-anywhere" in culprit["conflict"]
    assert planned.plan["packages"] == {"added": {"tinydep": [None, "1.0"]}}
    assert [n["name"] for n in planned.plan["apply"]["nodes"]] == ["with-reqs"]
    assert (tree_hash(comfy.root), freeze(comfy)) == (tree, frozen)
