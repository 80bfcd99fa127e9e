"""The agent bundle: deterministic, small, self-contained, runnable on Python 3.8."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from agent.bundle import build_pyz, bundle, source_root
from controller.sandbox.comfy import ComfyHome, isolated_pip_env
from tests.agent.conftest import Agent, Repos


@pytest.fixture(scope="module")
def pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = bundle().data
    path = tmp_path_factory.mktemp("agent") / f"{bundle().sha256}.pyz"
    path.write_bytes(data)
    return path


def test_build_is_byte_identical_for_the_same_source(tmp_path: Path) -> None:
    first = build_pyz()
    assert build_pyz() == first
    # A copy of the source with other timestamps and stray caches builds the same bytes.
    copy = tmp_path / "src"
    for package in ("agent", "protocol"):
        shutil.copytree(
            source_root() / package,
            copy / package,
            ignore=shutil.ignore_patterns("__pycache__", ".ruff_cache"),
        )
    for path in copy.rglob("*"):
        os.utime(path, (1_000_000_000, 1_000_000_000))
    (copy / "agent" / "__pycache__").mkdir(exist_ok=True)
    (copy / "agent" / "__pycache__" / "cli.cpython-311.pyc").write_bytes(b"junk")
    assert build_pyz(copy) == first
    # And a change in the source changes the hash.
    (copy / "agent" / "cli.py").write_text((copy / "agent" / "cli.py").read_text() + "\n# x\n")
    assert hashlib.sha256(build_pyz(copy)).hexdigest() != bundle().sha256


def test_bundle_is_small_sorted_and_self_contained() -> None:
    data = bundle().data
    # Uploaded once per version, so the budget is not about transfer time: it catches
    # what must never ride along (tests, caches, data files). 103 KiB with the planner,
    # the restart and ComfyUI's own verification (round 3; 41 KiB in round 1).
    assert len(data) <= 160 * 1024, len(data)
    assert bundle().sha256 == hashlib.sha256(data).hexdigest()
    assert data.startswith(b"#!/usr/bin/env python3\n")
    with zipfile.ZipFile(__import__("io").BytesIO(data)) as archive:
        names = archive.namelist()
        assert names == sorted(names)
        assert "__main__.py" in names
        assert "agent/cli.py" in names and "protocol/progress.py" in names
        assert not [n for n in names if "__pycache__" in n or n.startswith("tests")]
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_pyz_version_prints_its_own_hash(pyz: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(pyz), "--version"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"nodeferry-agent 0.1.0 sha256:{bundle().sha256}"


def test_pyz_runs_on_python_3_8(pyz: Path, tmp_path: Path, python38: Path) -> None:
    result = subprocess.run(
        [str(python38), str(pyz), "--version"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(bundle().sha256)


def test_checkout_imports_and_runs_on_python_3_8(tmp_path: Path, python38: Path) -> None:
    code = (
        "import agent.cli, agent.worker, agent.tasks, agent.bundle, protocol.api;"
        "import sys; sys.exit(agent.cli.main(['--version']))"
    )
    result = subprocess.run(
        [str(python38), "-c", code], capture_output=True, text=True, cwd=source_root(), check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("nodeferry-agent 0.1.0 sha256:")


@pytest.mark.timeout(120)
def test_pyz_on_python_3_8_starts_a_detached_install(
    pyz: Path,
    tmp_path: Path,
    comfy: ComfyHome,
    repos: Repos,
    agent: Agent,
    python38: Path,
) -> None:
    """The whole start/status path as the controller drives it: a .pyz in the state dir."""
    state = tmp_path / "state"
    spec = agent.spec(comfy.root, [repos.plain.url, repos.with_reqs.url])
    env = isolated_pip_env()
    env.pop("PYTHONPATH", None)
    run = [str(python38), str(pyz), "--state-dir", str(state)]
    started = subprocess.run(
        [*run, "start", "--spec", "-"],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        check=False,
        timeout=60,
    )
    assert started.returncode == 0, (started.stdout, started.stderr)
    out = json.loads(started.stdout)
    cmdline = Path(f"/proc/{out['pid']}/cmdline").read_bytes().split(b"\0")
    assert str(pyz).encode() in cmdline and str(python38).encode() in cmdline
    import time

    deadline = time.monotonic() + 90
    doc = {}
    while time.monotonic() < deadline:
        status = subprocess.run(
            [*run, "status", "--task-id", spec["task_id"]],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            check=False,
        )
        doc = json.loads(status.stdout)
        if doc["state"] in ("completed", "failed", "cancelled", "lost"):
            break
        time.sleep(0.2)
    assert doc["state"] == "completed", doc
    assert doc["successful"] == 2
    assert comfy.installed("tinydep") == "1.0"


@pytest.mark.skipif(
    shutil.which("nodeferry-agent") is None,
    reason="nodeferry-agent is not installed (pip install -e . puts it on PATH)",
)
def test_console_script(tmp_path: Path) -> None:
    result = subprocess.run(
        ["nodeferry-agent", "--version"], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("nodeferry-agent 0.1.0 sha256:")
