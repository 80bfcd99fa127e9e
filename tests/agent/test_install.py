"""Node installs end to end against the git daemon, the wheelhouse and a real venv."""

import json
import re
import shlex
from pathlib import Path

import pytest

from controller.sandbox.comfy import NODE_INIT, ComfyHome
from controller.sandbox.gitserver import GitServer, git
from protocol import Progress
from tests.agent.conftest import Agent, Repos, temp_clone_dirs

pytestmark = pytest.mark.timeout(150)


def run_spec(agent: Agent, spec: dict[str, object], expect: int = 0) -> Progress:
    return Progress.from_dict(
        agent.json("run", "--spec", "-", input=json.dumps(spec), expect=expect)
    )


def log_of(progress: Progress) -> str:
    assert progress.log_file
    return Path(progress.log_file).read_text()


@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_full_install(installer: str, agent: Agent, comfy: ComfyHome, repos: Repos) -> None:
    agent.env["NODEFERRY_AGENT_INSTALLER"] = installer
    spec = agent.spec(
        comfy.root,
        [
            repos.plain.url,
            repos.with_reqs.url,
            repos.with_reqs2.url,
            repos.with_install.url,
            repos.with_submodule.url,
        ],
    )
    final = run_spec(agent, spec)
    assert final.state == "completed"
    assert (final.total_nodes, final.processed, final.successful, final.failed, final.skipped) == (
        5,
        5,
        5,
        0,
        0,
    )
    assert final.requirements_status == "done" and final.has_requirements
    by_name = {n.name: n for n in final.nodes}
    for repo in (
        repos.plain,
        repos.with_reqs,
        repos.with_reqs2,
        repos.with_install,
        repos.with_submodule,
    ):
        node = by_name[repo.name]
        assert node.status == "installed"
        assert node.commit == repo.head
        assert git("rev-parse", "HEAD", cwd=comfy.custom_nodes / repo.name) == repo.head
        assert node.started_at and node.finished_at
    assert by_name["with-reqs"].requirements_status == "done"
    assert by_name["plain"].requirements_status == "none"
    installed = comfy.installed_versions()
    assert installed["tinydep"] == "1.0" and installed["otherdep"] == "2.0"
    # install.py ran with ComfyUI's interpreter, in the node's directory.
    marker = comfy.custom_nodes / "with-install" / "installed.marker"
    assert marker.read_text() == str(comfy.python)
    # The submodule was checked out.
    assert (comfy.custom_nodes / "with-submodule" / "vendor" / "sub-lib" / "lib.py").exists()
    assert temp_clone_dirs(comfy) == []
    log = log_of(final)
    # One batched resolve for both nodes with requirements.
    installs = [line for line in log.splitlines() if "[requirements] $ " in line]
    assert len(installs) == 1
    # Each node's requirements, normalised into the task's requirements/ dir.
    assert "-with-reqs.txt" in installs[0]
    assert "-with-reqs2.txt" in installs[0]
    assert ("uv pip install --python" in installs[0]) == (installer == "uv")
    assert (" -m pip install " in installs[0]) == (installer == "pip")
    assert f"ComfyUI's interpreter: {comfy.python}" in log


def test_log_has_commands_node_output_and_timings(
    agent: Agent, comfy: ComfyHome, repos: Repos
) -> None:
    final = run_spec(agent, agent.spec(comfy.root, [repos.with_install.url]))
    log = log_of(final)
    dest_prefix = str(comfy.custom_nodes / ".nodeferry-")
    clone = next(line for line in log.splitlines() if " clone " in line and "$ " in line)
    argv = shlex.split(clone.split("$ ", 1)[1])
    assert argv[:1] == ["git"] and "--depth" in argv and "--recurse-submodules" in argv
    assert argv[argv.index("--") + 1] == repos.with_install.url
    assert argv[-1].startswith(dest_prefix)
    assert "[with-install] install.py running with" in log
    assert re.search(r"\[with-install\] exit 0 after \d+\.\d\ds", log)
    assert re.search(r"done in \d+\.\ds: 1 installed, 0 skipped, 0 failed", log)
    # git, pip and install.py ran at a lower priority (the default).
    assert re.search(r"lower priority: nice \d+", log)


def test_low_priority_can_be_turned_off(agent: Agent, comfy: ComfyHome, repos: Repos) -> None:
    final = run_spec(agent, agent.spec(comfy.root, [repos.plain.url], low_priority=False))
    assert final.nodes[0].status == "installed"
    assert "lower priority" not in log_of(final)


def test_failed_requirement_is_pinned_on_its_node(
    agent: Agent, comfy: ComfyHome, repos: Repos
) -> None:
    spec = agent.spec(comfy.root, [repos.with_reqs.url, repos.bad_req.url, repos.with_install.url])
    final = run_spec(agent, spec, expect=1)
    assert final.state == "completed" and final.exit_code == 1
    by_name = {n.name: n for n in final.nodes}
    assert by_name["with-reqs"].status == "installed"
    assert by_name["with-reqs"].requirements_status == "done"
    assert by_name["with-install"].status == "installed"
    bad = by_name["bad-req"]
    assert bad.status == "failed" and bad.requirements_status == "failed"
    assert "could not be resolved together" in (bad.error or "")
    assert "no-such-package-anywhere" in (bad.error or "")  # the resolver's own words
    assert bad.error_code == "resolver_conflict"
    assert final.requirements_status == "failed"
    assert (final.successful, final.failed) == (2, 1)
    assert comfy.installed("tinydep") == "1.0"
    log = log_of(final)
    # Only the culprit was dropped; the rest went in one resolve, not node by node.
    assert "dropped bad-req; installing the rest in one resolve" in log
    assert "node by node" not in log


@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_torch_pin_holds(installer: str, agent: Agent, comfy: ComfyHome, repos: Repos) -> None:
    agent.env["NODEFERRY_AGENT_INSTALLER"] = installer
    assert comfy.installed("torch") == "1.0.0"
    spec = agent.spec(comfy.root, [repos.wants_torch2.url, repos.with_reqs.url])
    final = run_spec(agent, spec, expect=1)
    by_name = {n.name: n for n in final.nodes}
    assert by_name["wants-torch2"].status == "failed"
    assert by_name["wants-torch2"].requirements_status == "failed"
    assert by_name["with-reqs"].status == "installed"
    # torch 2.0.0 is in the wheelhouse, yet torch was not swapped out.
    assert comfy.installed("torch") == "1.0.0"
    constraints = Path(final.log_file or "").parent / "constraints.txt"
    assert constraints.read_text() == "torch==1.0.0\n"
    assert "torch family pinned: torch==1.0.0" in log_of(final)


def test_existing_nodes_are_skipped_then_updated(
    agent: Agent, comfy: ComfyHome, git_server: GitServer, tmp_path: Path
) -> None:
    repo = git_server.add_repo(
        f"evolving-{tmp_path.name}", {"__init__.py": NODE_INIT, "v.txt": "1\n"}
    )
    first = run_spec(agent, agent.spec(comfy.root, [repo.url]))
    assert first.nodes[0].commit == repo.head
    new_head = repo.commit({"v.txt": "2\n", "install.py": "open('ran', 'w').write('x')\n"})
    skipped = run_spec(agent, agent.spec(comfy.root, [repo.url]))
    assert skipped.nodes[0].status == "skipped"
    assert (skipped.skipped, skipped.successful, skipped.processed) == (1, 0, 1)
    assert skipped.nodes[0].commit == first.nodes[0].commit
    node_dir = comfy.custom_nodes / repo.name
    assert (node_dir / "v.txt").read_text() == "1\n"
    updated = run_spec(agent, agent.spec(comfy.root, [repo.url], update=True))
    assert updated.nodes[0].status == "installed"
    assert updated.nodes[0].commit == new_head
    assert (node_dir / "v.txt").read_text() == "2\n"
    assert (node_dir / "ran").exists()  # install.py of the updated node ran


def test_pinned_commit_branch_and_tag(
    agent: Agent, comfy: ComfyHome, repos: Repos, git_server: GitServer, tmp_path: Path
) -> None:
    branchy = git_server.add_repo(f"branchy-{tmp_path.name}", {"__init__.py": NODE_INIT})
    branch_sha = branchy.create_branch("dev", {"dev.txt": "dev\n"})
    branchy.tag("v1.0")
    tag_sha = branchy.head
    spec = agent.spec(
        comfy.root,
        [
            f"{repos.pinned.url}@{repos.pinned_first}",
            {"url": branchy.url, "ref": "dev", "name": "on-branch"},
            {"url": branchy.url, "ref": "v1.0", "name": "on-tag"},
            {"url": repos.pinned.url, "ref": repos.pinned_first[:10], "name": "short-pin"},
        ],
    )
    final = run_spec(agent, spec)
    commits = {n.name: n.commit for n in final.nodes}
    assert commits == {
        "pinned": repos.pinned_first,
        "on-branch": branch_sha,
        "on-tag": tag_sha,
        "short-pin": repos.pinned_first,
    }
    assert repos.pinned.head != repos.pinned_first
    assert (comfy.custom_nodes / "pinned" / "version.txt").read_text() == "1\n"
    assert git("rev-parse", "HEAD", cwd=comfy.custom_nodes / "short-pin") == repos.pinned_first


def test_unknown_ref_fails_that_node_only(agent: Agent, comfy: ComfyHome, repos: Repos) -> None:
    spec = agent.spec(comfy.root, [f"{repos.plain.url}@no-such-branch", repos.with_reqs.url])
    final = run_spec(agent, spec, expect=1)
    assert [n.status for n in final.nodes] == ["failed", "installed"]
    assert "no-such-branch" in (final.nodes[0].error or "")
    assert final.nodes[0].error_code == "unknown_ref"
    assert not (comfy.custom_nodes / "plain").exists()
    assert temp_clone_dirs(comfy) == []


def test_directories_that_are_not_our_clone_are_never_clobbered(
    agent: Agent, comfy: ComfyHome, repos: Repos
) -> None:
    not_git = comfy.custom_nodes / "plain"
    not_git.mkdir()
    (not_git / "precious.txt").write_text("keep me")
    other = comfy.custom_nodes / "with-reqs"
    git("clone", "-q", repos.with_install.url, str(other))
    final = run_spec(
        agent, agent.spec(comfy.root, [repos.plain.url, repos.with_reqs.url], update=True), expect=1
    )
    assert [n.status for n in final.nodes] == ["failed", "failed"]
    assert "is not a git clone" in (final.nodes[0].error or "")
    assert f"is a clone of {repos.with_install.url}" in (final.nodes[1].error or "")
    assert [n.error_code for n in final.nodes] == ["node_dir_conflict"] * 2
    assert (not_git / "precious.txt").read_text() == "keep me"
    assert git("remote", "get-url", "origin", cwd=other) == repos.with_install.url
    assert comfy.installed("tinydep") is None


def test_missing_repo_fails_without_retrying(agent: Agent, comfy: ComfyHome, repos: Repos) -> None:
    final = run_spec(agent, agent.spec(comfy.root, [repos.missing_url]), expect=1)
    assert final.nodes[0].status == "failed"
    assert "git clone failed" in (final.nodes[0].error or "")
    assert "no-such-repo" in (final.nodes[0].error or "")
    assert final.nodes[0].error_code == "repo_not_found"  # never retried automatically
    assert "retrying" not in log_of(final)


def test_install_script_timeout(agent: Agent, comfy: ComfyHome, repos: Repos) -> None:
    agent.env["NODEFERRY_AGENT_INSTALL_SCRIPT_TIMEOUT"] = "2"
    agent.env["SLOW_INSTALL_SECONDS"] = "60"
    final = run_spec(agent, agent.spec(comfy.root, [repos.slow_install.url]), expect=1)
    assert final.nodes[0].status == "failed"
    assert "install.py timed out after" in (final.nodes[0].error or "")
    assert final.nodes[0].error_code == "timeout"


def test_no_interpreter_venv_falls_back_to_python3(
    agent: Agent, tmp_path: Path, repos: Repos
) -> None:
    from controller.sandbox.comfy import make_comfy_home

    home = make_comfy_home(tmp_path / "Bare", with_venv=False)
    final = run_spec(agent, agent.spec(home.root, [repos.with_install.url]))
    assert final.nodes[0].status == "installed"
    assert "python3 on PATH (no ComfyUI venv found)" in log_of(final)


def test_standalone_install_shows_live_progress(
    agent: Agent, comfy: ComfyHome, repos: Repos
) -> None:
    result = agent.run(
        "install",
        "--ui-home",
        str(comfy.root),
        "--pip-arg=--no-index",
        f"--pip-arg=--find-links={agent.wheelhouse}",
        repos.plain.url,
        repos.with_reqs.url,
        repos.missing_url,
    )
    assert result.returncode == 1, result.stderr
    out = result.stdout
    assert "installing 3 node(s) into" in out
    assert re.search(r"\[1/3\] plain +installed +" + repos.plain.head[:10], out)
    assert re.search(r"\[2/3\] with-reqs +installed", out)
    assert re.search(r"\[3/3\] no-such-repo +failed", out)
    assert "| fatal: remote error" in out  # the failing tail, quoted
    assert "== cloning" in out and "== installing requirements" in out
    assert "completed with failures: 3 node(s), 2 installed, 0 skipped, 1 failed" in out
    assert "log: " in out
    assert "\x1b[" not in out  # no colour codes when stdout is not a terminal
    ok = agent.run("install", "--ui-home", str(comfy.root), repos.plain.url)
    assert ok.returncode == 0
    assert re.search(r"\[1/1\] plain +skipped", ok.stdout)
    assert "completed: 1 node(s), 0 installed, 1 skipped, 0 failed" in ok.stdout


def test_uv_follows_pips_configured_sources(
    agent: Agent, comfy: ComfyHome, repos: Repos, tmp_path: Path
) -> None:
    """A machine whose pip.conf points at a mirror must not send uv to PyPI instead."""
    pip_conf = tmp_path / "pip.conf"
    pip_conf.write_text(f"[global]\nno-index = true\nfind-links = {agent.wheelhouse}\n")
    agent.env["PIP_CONFIG_FILE"] = str(pip_conf)
    agent.env["NODEFERRY_AGENT_INSTALLER"] = "uv"
    final = run_spec(agent, agent.spec(comfy.root, [repos.with_reqs.url], pip_args=[]))
    assert final.nodes[0].status == "installed", final.nodes[0].error
    assert comfy.installed("tinydep") == "1.0"
    log = log_of(final)
    assert f"uv gets pip's configured sources: --find-links {agent.wheelhouse} --no-index" in log
