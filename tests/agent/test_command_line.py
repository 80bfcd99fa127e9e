"""Issue 15, the agent's side: its --help, its refusals, a node already present at
another ref, and the zipapp `nodeferry agent-bundle` writes, run from outside the
repository as a person on an instance would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from controller.sandbox.comfy import ComfyHome, isolated_pip_env
from tests.agent.conftest import Repos
from tests.frontends.test_cli import Terminal, cli_env

ROOT = Path(__file__).resolve().parents[2]
PY38 = Path("/root/.pyenv/versions/3.8.18/bin/python3.8")


def outside_python() -> str:
    """An interpreter that cannot import the checkout (no nodeferry installed in it)."""
    if PY38.exists():
        return str(PY38)
    found = shutil.which("python3", path="/usr/bin")
    if found is None:
        pytest.skip("no Python outside the venv to run the zipapp with")
    return found


def bare_env() -> dict[str, str]:
    env = isolated_pip_env()
    env.pop("PYTHONPATH", None)
    return env


def agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=bare_env(),
        timeout=60,
        check=False,
    )


def test_help_hides_the_internal_command_and_lists_the_exit_codes(tmp_path: Path) -> None:
    result = agent("--help")
    assert result.returncode == 0, result.stderr
    assert "SUPPRESS" not in result.stdout and "worker" not in result.stdout
    assert "install" in result.stdout and "exit status:" in result.stdout
    for code in range(7):
        assert f"\n  {code}  " in result.stdout, code
    install = agent("install", "--help")
    assert "URL[@REF][#NAME]" in install.stdout and "exit status:" in install.stdout


def test_refusals_count_nodes_from_one_and_say_the_way_out(
    tmp_path: Path, bare_comfy: ComfyHome
) -> None:
    state = ["--state-dir", str(tmp_path / "state")]
    home = ["--ui-home", str(bare_comfy.root)]
    local = agent(*state, "install", *home, "https://h.example/a/b", "file:///srv/x")
    assert local.returncode == 2
    assert local.stderr.startswith("error: NODE 2: scheme 'file' is not allowed")
    assert "--allow-file-urls" in local.stderr and "nodes." not in local.stderr
    twins = agent(*state, "install", *home, "https://h.example/a/b", "https://g.example/c/b")
    assert twins.returncode == 2
    assert "NODE 2: installs into 'b' like NODE 1" in twins.stderr
    assert "URL#NAME" in twins.stderr
    assert not (tmp_path / "state").exists() or not list((tmp_path / "state").rglob("spec.json"))
    assert bare_comfy.node_dirs() == []


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_bundle_runs_outside_the_repo_and_a_new_ref_updates_the_node(
    tmp_path: Path, bare_comfy: ComfyHome, repos: Repos
) -> None:
    # In a terminal the command refuses to print a zip archive.
    term = Terminal(["agent-bundle"], cli_env())
    assert term.wait(60) == 2
    assert "nodeferry agent-bundle > nodeferry-agent.pyz" in term.text
    assert "PK" not in term.text

    work = tmp_path / "elsewhere"
    work.mkdir()
    pyz = work / "nodeferry-agent.pyz"
    with pyz.open("wb") as out:
        written = subprocess.run(
            [sys.executable, "-m", "controller", "agent-bundle"],
            stdout=out,
            stderr=subprocess.PIPE,
            text=False,
            env=cli_env(),
            timeout=60,
            check=False,
        )
    assert written.returncode == 0, written.stderr
    assert pyz.read_bytes().startswith(b"#!/usr/bin/env python3\n")

    python = outside_python()
    env = bare_env()
    cannot = subprocess.run([python, "-c", "import agent"], cwd=work, env=env, check=False)
    assert cannot.returncode != 0  # so only the zipapp can be what runs below

    def install(*nodes: str) -> subprocess.CompletedProcess[str]:
        state = str(tmp_path / "state")
        argv = [python, str(pyz), "--state-dir", state, "install"]
        return subprocess.run(
            [*argv, "--ui-home", str(bare_comfy.root), *nodes],
            capture_output=True,
            text=True,
            cwd=work,
            env=env,
            timeout=120,
            check=False,
        )

    first, second = repos.pinned_first, repos.pinned.head
    url = repos.pinned.url
    pinned = bare_comfy.custom_nodes / "Pinned"
    done = install(f"{url}@{first}#Pinned")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (pinned / "version.txt").read_text() == "1\n"
    assert "completed: 1 node(s), 1 installed" in done.stdout

    # The same ref again: present, skipped, and the way to update is said.
    again = install(f"{url}@{first}#Pinned")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 installed, 1 skipped" in again.stdout
    assert "--update updates them" in again.stdout

    # Another ref than the one checked out: that node is brought to it.
    # (and at normal priority, asking a ComfyUI for its classes afterwards: every
    # spec field has its flag here too)
    classes = tmp_path / "classes.json"
    classes.write_text('["KSampler", "Seed (rgthree)"]')
    ready = ("--ready-check", "--ready-timeout", "12", "--ready-classes", str(classes))
    moved = install("--no-low-priority", *ready, f"{url}@{second}#Pinned")
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert "1 installed, 0 skipped" in moved.stdout
    # No ComfyUI runs for that home: said, and not a failure.
    assert "ComfyUI: no running ComfyUI found for this home" in moved.stdout
    assert (pinned / "version.txt").read_text() == "2\n"
    logs = sorted((tmp_path / "state" / "tasks").glob("*/agent.log"), key=os.path.getmtime)
    assert f"updated {first} -> {second} ({second} requested)" in logs[-1].read_text()
    assert "lower priority" not in logs[-1].read_text()
    assert "lower priority" in logs[0].read_text()
    spec = json.loads((logs[-1].parent / "spec.json").read_text())
    assert spec["low_priority"] is False
    assert (spec["restart"], spec["ready_check"], spec["ready_timeout"]) == ("never", True, 12.0)
    assert spec["ready_classes"] == ["KSampler", "Seed (rgthree)"]
