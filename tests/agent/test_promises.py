"""README promises the agent keeps, against real parts: the whole torch family stays
pinned (also against a dependency that wants a newer torch indirectly), and clones
survive a git server that drops a connection and one that refuses unadvertised
commits to a shallow submodule."""

import json
import shutil
import uuid
from pathlib import Path

import pytest

from controller.sandbox.comfy import NODE_INIT, ComfyHome, pip_install
from controller.sandbox.gitserver import GitServer, git
from controller.sandbox.wheels import build_wheel
from protocol import Progress
from tests.agent.conftest import Agent, temp_clone_dirs
from tests.support.flaky import FlakyProxy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

INSTALLED = {"torchvision": "0.1.0", "torchaudio": "0.1.0", "xformers": "0.0.1"}


def run_spec(agent: Agent, spec: dict[str, object], expect: int) -> Progress:
    return Progress.from_dict(
        agent.json("run", "--spec", "-", input=json.dumps(spec), expect=expect)
    )


@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_the_whole_torch_family_stays_pinned(
    installer: str, agent: Agent, comfy: ComfyHome, git_server: GitServer, tmp_path: Path
) -> None:
    agent.env["NODEFERRY_AGENT_INSTALLER"] = installer
    # A wheelhouse with newer versions of every family member, and a package that
    # pulls a newer torch only through its own dependency.
    wheelhouse = tmp_path / "wheels"
    shutil.copytree(agent.wheelhouse, wheelhouse)
    for name, version in INSTALLED.items():
        build_wheel(wheelhouse, name, version, requires=["torch==1.0.0"])
        build_wheel(wheelhouse, name, "9.0.0", requires=["torch>=2.0"])
    build_wheel(wheelhouse, "fancyops", "1.0", requires=["torch>=2.0"])
    build_wheel(wheelhouse, "uses-fancyops", "1.0", requires=["fancyops"])
    pip_install(comfy.python, wheelhouse, *(f"{n}=={v}" for n, v in INSTALLED.items()))

    unique = uuid.uuid4().hex[:8]
    wants = {
        "torchvision": "torchvision>=9.0",
        "torchaudio": "torchaudio>=9.0",
        "xformers": "xformers>=9.0",
        "indirect": "uses-fancyops",  # -> fancyops -> torch>=2.0
    }
    repos = {
        key: git_server.add_node_repo(f"wants-{key}-{unique}", requirements=[req])
        for key, req in wants.items()
    }
    fine = git_server.add_node_repo(f"fine-{unique}", requirements=["tinydep==1.0"])
    spec = agent.spec(
        comfy.root,
        [*(repo.url for repo in repos.values()), fine.url],
        pip_args=["--no-index", "--find-links", str(wheelhouse)],
    )
    final = run_spec(agent, spec, expect=1)

    by_name = {n.name: n for n in final.nodes}
    for repo in repos.values():
        node = by_name[repo.name]
        assert node.status == "failed", node
        assert node.requirements_status == "failed"
    assert by_name[fine.name].status == "installed"
    versions = comfy.installed_versions()
    assert versions["torch"] == "1.0.0"
    for name, version in INSTALLED.items():
        assert versions[name] == version, name
    assert "fancyops" not in versions and "uses-fancyops" not in versions
    assert versions["tinydep"] == "1.0"
    constraints = Path(final.log_file or "").parent / "constraints.txt"
    assert sorted(constraints.read_text().splitlines()) == [
        "torch==1.0.0",
        "torchaudio==0.1.0",
        "torchvision==0.1.0",
        "xformers==0.0.1",
    ]


def test_a_dropped_connection_is_retried(
    agent: Agent, comfy: ComfyHome, git_server: GitServer
) -> None:
    repo = git_server.add_node_repo(f"flaky-{uuid.uuid4().hex[:8]}")
    with FlakyProxy(("127.0.0.1", git_server.port), fail_first=1) as proxy:
        url = f"git://127.0.0.1:{proxy.port}/{repo.name}"
        final = run_spec(agent, agent.spec(comfy.root, [url]), expect=0)
        assert proxy.connections >= 2  # the dropped one, then the clone that worked
    (node,) = final.nodes
    assert node.status == "installed" and node.commit == repo.head
    log = Path(final.log_file or "").read_text()
    assert "clone attempt 1 failed; retrying" in log
    assert temp_clone_dirs(comfy) == []


def test_a_server_that_drops_every_connection_fails_the_node_after_retries(
    agent: Agent, comfy: ComfyHome, git_server: GitServer
) -> None:
    repo = git_server.add_node_repo(f"down-{uuid.uuid4().hex[:8]}")
    with FlakyProxy(("127.0.0.1", git_server.port), fail_first=1000) as proxy:
        url = f"git://127.0.0.1:{proxy.port}/{repo.name}"
        final = run_spec(agent, agent.spec(comfy.root, [url]), expect=1)
        tries = proxy.connections
    (node,) = final.nodes
    assert node.status == "failed"
    assert "hung up" in (node.error or "") or "clone" in (node.error or "")
    assert tries >= 3  # CLONE_TRIES attempts, each reached the server
    assert comfy.node_dirs() == []


def test_shallow_submodule_refused_by_the_server_falls_back_to_a_full_fetch(
    agent: Agent, comfy: ComfyHome, git_server: GitServer
) -> None:
    unique = uuid.uuid4().hex[:8]
    sub = git_server.add_repo(f"sub-{unique}", {"lib.py": "VALUE = 1\n"})
    pinned = sub.head
    # The submodule moves on: its pinned commit is no longer a branch tip. It is
    # served by an old (protocol v0) server that refuses to send an unadvertised
    # commit, so a shallow submodule cannot fetch the pinned commit.
    sub.commit({"lib.py": "VALUE = 2\n"}, "newer")
    git("config", "uploadpack.allowReachableSHA1InWant", "false", cwd=sub.bare)
    with FlakyProxy(("127.0.0.1", git_server.port), fail_first=0, v0_only=True) as old_server:
        parent = git_server.add_repo(f"parent-{unique}", {"__init__.py": NODE_INIT})
        sub_url = f"git://127.0.0.1:{old_server.port}/{sub.name}"
        git(
            "-c",
            "protocol.file.allow=always",
            "submodule",
            "add",
            "-q",
            sub_url,
            "vendor/sub",
            cwd=parent.work,
        )
        git("checkout", "-q", pinned, cwd=parent.work / "vendor" / "sub")
        parent.commit({}, "add the submodule at its older commit")
        assert git("rev-parse", "HEAD:vendor/sub", cwd=parent.work) == pinned

        final = run_spec(agent, agent.spec(comfy.root, [parent.url]), expect=0)
    (node,) = final.nodes
    assert node.status == "installed", node
    lib = comfy.custom_nodes / parent.name / "vendor" / "sub" / "lib.py"
    assert lib.read_text() == "VALUE = 1\n"
    assert git("rev-parse", "HEAD", cwd=lib.parent) == pinned
    # The shallow attempt failed on the submodule; the second one fetched it whole.
    log = Path(final.log_file or "").read_text()
    assert "clone attempt 1 failed; retrying" in log
    assert "--shallow-submodules" in log
