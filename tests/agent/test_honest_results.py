"""Honest results end to end (real agent, git daemon, venv, wheelhouse): re-runs that
re-attempt what never finished, install.py warnings, culprit-only conflicts, package
changes, pyproject requirements, the pip fallback when uv cannot be had."""

import os
import stat
import subprocess
from pathlib import Path

import pytest

from controller.sandbox.comfy import NODE_INIT, ComfyHome, isolated_pip_env
from controller.sandbox.gitserver import GitServer, git
from controller.sandbox.wheels import build_wheel
from tests.agent.conftest import Agent, Repos
from tests.agent.test_install import log_of, run_spec

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

LOUD_INSTALL_PY = """\
import os, sys
from pathlib import Path
Path("env.txt").write_text(os.environ["COMFYUI_PATH"] + "\\n" + os.environ["COMFYUI_MODEL_PATH"])
print("[ERROR] my-pack: Dependency installation has failed. Please install manually.")
try:
    import folder_paths
except ImportError:
    import traceback
    traceback.print_exc()
sys.exit(0)
"""


def test_a_failed_requirement_is_reattempted_not_skipped(
    agent: Agent, comfy: ComfyHome, repos: Repos, tmp_path: Path
) -> None:
    empty = tmp_path / "empty-wheelhouse"
    empty.mkdir()
    nodes = [repos.with_reqs.url, repos.plain.url]
    first = run_spec(
        agent,
        agent.spec(comfy.root, nodes, pip_args=["--no-index", "--find-links", str(empty)]),
        expect=1,
    )
    assert [n.status for n in first.nodes] == ["failed", "installed"]
    assert comfy.installed("tinydep") is None
    second = run_spec(agent, agent.spec(comfy.root, nodes))
    assert [n.status for n in second.nodes] == ["installed", "skipped"]
    assert (second.successful, second.skipped, second.failed) == (1, 1, 0)
    assert comfy.installed("tinydep") == "1.0"  # really installed this time
    # Its requirements never ran, so neither did the import check that follows them.
    assert "not known complete (requirements, import)" in log_of(second)
    third = run_spec(agent, agent.spec(comfy.root, nodes))
    assert [n.status for n in third.nodes] == ["skipped", "skipped"]


def test_a_node_whose_import_failed_is_reattempted_not_skipped(
    agent: Agent, comfy: ComfyHome, git_server: GitServer, tmp_path: Path
) -> None:
    """Everything ran, but ComfyUI could not import it: not complete, so the next run
    checks it again (and says it loads once its missing module is there)."""
    broken = git_server.add_repo(
        "imports-later", {"__init__.py": "import later_module\nNODE_CLASS_MAPPINGS = {}\n"}
    )
    first = run_spec(agent, agent.spec(comfy.root, [broken.url]), expect=1)
    assert first.nodes[0].status == "failed"
    assert "later_module" in (first.nodes[0].error or "")
    again = run_spec(agent, agent.spec(comfy.root, [broken.url]), expect=1)
    assert again.nodes[0].status == "failed", "a node that does not import is never skipped"
    assert "not known complete (import)" in log_of(again)
    (comfy.root / "later_module.py").write_text("")  # ComfyUI's home is on sys.path
    fixed = run_spec(agent, agent.spec(comfy.root, [broken.url]))
    assert fixed.nodes[0].status == "installed"
    assert run_spec(agent, agent.spec(comfy.root, [broken.url])).nodes[0].status == "skipped"


def test_a_node_present_but_never_installed_by_nodeferry_gets_its_requirements(
    agent: Agent, comfy: ComfyHome, repos: Repos
) -> None:
    git("clone", "-q", repos.with_reqs.url, str(comfy.custom_nodes / "with-reqs"))
    final = run_spec(agent, agent.spec(comfy.root, [repos.with_reqs.url]))
    assert final.nodes[0].status == "installed"
    assert final.nodes[0].requirements_status == "done"
    assert comfy.installed("tinydep") == "1.0"


def test_install_py_that_fails_quietly_is_installed_with_warnings(
    agent: Agent, comfy: ComfyHome, git_server: GitServer, tmp_path: Path
) -> None:
    repo = git_server.add_repo(
        f"loud-{tmp_path.name}", {"__init__.py": NODE_INIT, "install.py": LOUD_INSTALL_PY}
    )
    final = run_spec(agent, agent.spec(comfy.root, [repo.url]))
    node = final.nodes[0]
    assert node.status == "installed" and node.install_script_status == "done"
    assert node.warnings == [
        "[ERROR] my-pack: Dependency installation has failed. Please install manually.",
        "install.py printed a traceback: ModuleNotFoundError: No module named 'folder_paths'",
    ]
    env = (comfy.custom_nodes / node.name / "env.txt").read_text().splitlines()
    assert env == [str(comfy.root), str(comfy.root / "models")]


def test_a_conflict_fails_only_the_culprit_and_the_rest_share_one_resolve(
    agent: Agent, comfy: ComfyHome, git_server: GitServer, repos: Repos, tmp_path: Path
) -> None:
    wheels = tmp_path / "wh"
    for name, version in (("tinydep", "1.0"), ("tinydep", "2.0"), ("otherdep", "2.0")):
        build_wheel(wheels, name, version)
    wants_two = git_server.add_repo(
        f"wants-two-{tmp_path.name}",
        {"__init__.py": NODE_INIT, "requirements.txt": "tinydep==2.0\n"},
    )
    nodes = [repos.with_reqs.url, repos.with_reqs2.url, wants_two.url]
    spec = agent.spec(comfy.root, nodes, pip_args=["--no-index", "--find-links", str(wheels)])
    final = run_spec(agent, spec, expect=1)
    assert [n.status for n in final.nodes] == ["installed", "installed", "failed"]
    assert "could not be resolved together" in (final.nodes[2].error or "")
    assert "tinydep" in (final.nodes[2].error or "")
    assert comfy.installed("tinydep") == "1.0" and comfy.installed("otherdep") == "2.0"
    log = log_of(final)
    assert "node by node" not in log
    # The batch, then the rest without the culprit: two real installs, no more.
    assert log.count("[requirements] $ ") == 2


def test_package_changes_and_what_forced_a_downgrade(
    agent: Agent, comfy: ComfyHome, repos: Repos, tmp_path: Path
) -> None:
    wheels = tmp_path / "wh"
    for name, version in (("tinydep", "1.0"), ("tinydep", "2.0"), ("otherdep", "2.0")):
        build_wheel(wheels, name, version)
    subprocess.run(
        [
            str(comfy.python),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "-f",
            str(wheels),
            "tinydep==2.0",
        ],
        check=True,
        env=isolated_pip_env(),
    )
    spec = agent.spec(
        comfy.root,
        [repos.with_reqs.url, repos.with_reqs2.url],
        pip_args=["--no-index", "--find-links", str(wheels)],
    )
    final = run_spec(agent, spec)
    assert final.packages == {
        "added": {"otherdep": [None, "2.0"]},
        "downgraded": {"tinydep": ["2.0", "1.0"]},
    }
    assert final.warnings == ["tinydep downgraded 2.0 -> 1.0 (forced by with-reqs: tinydep==1.0)"]


def test_pyproject_dependencies_are_installed(
    agent: Agent, comfy: ComfyHome, git_server: GitServer, tmp_path: Path
) -> None:
    repo = git_server.add_repo(
        f"pyproject-{tmp_path.name}",
        {
            "__init__.py": NODE_INIT,
            "pyproject.toml": '[project]\nname = "x"\ndependencies = ["tinydep==1.0"]\n',
        },
    )
    final = run_spec(agent, agent.spec(comfy.root, [repo.url]))
    assert final.nodes[0].requirements_status == "done"
    assert comfy.installed("tinydep") == "1.0"


def test_crlf_bom_requirements_with_a_relative_wheel(
    agent: Agent, comfy: ComfyHome, git_server: GitServer, tmp_path: Path
) -> None:
    wheel = build_wheel(tmp_path / "wh", "vendored", "3.0")
    repo = git_server.add_repo(
        f"vendored-{tmp_path.name}",
        {
            "__init__.py": NODE_INIT,
            "requirements.txt": "\ufeff# deps\r\n./wheels/" + wheel.name + "  # ours\r\n",
            "wheels/" + wheel.name: wheel.read_bytes(),
        },
    )
    final = run_spec(agent, agent.spec(comfy.root, [repo.url]))
    assert final.nodes[0].status == "installed"
    assert comfy.installed("vendored") == "3.0"


def test_editable_line_is_installed_alone_and_says_so(
    agent: Agent, comfy: ComfyHome, git_server: GitServer, tmp_path: Path
) -> None:
    repo = git_server.add_repo(
        f"editable-{tmp_path.name}",
        {"__init__.py": NODE_INIT, "requirements.txt": "tinydep==1.0\n-e .\n"},
    )
    final = run_spec(agent, agent.spec(comfy.root, [repo.url]), expect=1)
    node = final.nodes[0]
    # No build backend is reachable offline, so the editable install fails: on its own,
    # saying what it was, after the batch installed the rest.
    assert node.status == "failed"
    assert "(alone) failed" in (node.error or "") and "-e " in (node.error or "")
    assert any("installed alone (editable)" in w for w in node.warnings)
    assert comfy.installed("tinydep") == "1.0"


def test_without_uv_and_no_way_to_get_it_pip_installs_and_says_so(
    agent: Agent, comfy: ComfyHome, repos: Repos
) -> None:
    agent.env["NODEFERRY_AGENT_INSTALLER"] = "auto"
    dirs = agent.env.get("PATH", "").split(os.pathsep)
    agent.env["PATH"] = os.pathsep.join(d for d in dirs if d and not (Path(d) / "uv").exists())
    final = run_spec(agent, agent.spec(comfy.root, [repos.with_reqs.url]))
    assert final.installer == "pip"
    assert final.nodes[0].status == "installed"
    assert len(final.warnings) == 1 and "with pip instead" in final.warnings[0]
    assert comfy.installed("tinydep") == "1.0"


def test_node_folders_are_readable_by_others(agent: Agent, comfy: ComfyHome, repos: Repos) -> None:
    final = run_spec(agent, agent.spec(comfy.root, [repos.plain.url]))
    assert final.nodes[0].status == "installed"
    umask = os.umask(0o022)
    os.umask(umask)
    mode = stat.S_IMODE((comfy.custom_nodes / "plain").stat().st_mode)
    assert mode == 0o777 & ~umask


def test_install_subcommand_takes_installer_and_shows_warnings(
    agent: Agent, comfy: ComfyHome, git_server: GitServer, tmp_path: Path
) -> None:
    repo = git_server.add_repo(
        f"loud-cli-{tmp_path.name}", {"__init__.py": NODE_INIT, "install.py": LOUD_INSTALL_PY}
    )
    result = agent.run(
        "install", "--ui-home", str(comfy.root), "--installer", "pip",
        "--pip-arg=--no-index", f"--pip-arg=--find-links={agent.wheelhouse}", repo.url,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning: " + repo.name + ": [ERROR] my-pack" in result.stdout
    bad = agent.run("install", "--ui-home", str(comfy.root), "--installer", "conda", repo.url)
    assert bad.returncode == 2 and "installer" in (bad.stdout + bad.stderr)
