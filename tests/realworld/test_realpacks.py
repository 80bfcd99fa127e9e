"""Real node packs, installed all at once into a ComfyUI venv with the real torch 2.13.0.

Two indexes are configured, as on GPU images: the main one (every prefetched
wheel) and an extra one that serves only numpy 2.x, the case where uv's default
first-index strategy calls Impact-Pack's ``numpy<2`` unsatisfiable. The packs come
from ``serve.sh`` (github.com pointed at loopback), the wheels from a local index.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controller.sandbox.comfy import ComfyHome, isolated_pip_env
from protocol import Progress
from protocol.fields import new_task_id
from tests.realworld.conftest import Index, path_without_uv
from tests.realworld.packs import REPO_ROOT, Pack, PackServer

pytestmark = [pytest.mark.realworld, pytest.mark.slow, pytest.mark.timeout(1200)]

TORCH = "2.13.0+cpu"


@dataclass
class Run:
    final: Progress
    seconds: float
    log: str
    home: ComfyHome


def _agent_env(pack_server: PackServer, *, without_uv: bool = False) -> dict[str, str]:
    env = isolated_pip_env()
    env.pop("PYTHONPATH", None)
    env.update(pack_server.env)  # github.com -> the loopback git daemon
    if without_uv:
        env["PATH"] = path_without_uv()
    return env


def install(
    home: ComfyHome,
    state: Path,
    urls: list[str],
    pip_args: list[str],
    env: dict[str, str],
    installer: str,
) -> Run:
    spec: dict[str, Any] = {
        "task_id": new_task_id(),
        "ui_home": str(home.root),
        "nodes": urls,
        "pip_args": pip_args,
        "installer": installer,
        # Real packs import ComfyUI's own modules (folder_paths, server, execution,
        # comfy.*) at load, which only a ComfyUI checkout has, and none is here
        # offline: the import check (tested on synthetic nodes against a stand-in
        # ComfyUI) would rightly fail them all.
        "verify": False,
    }
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "agent", "--state-dir", str(state), "run", "--spec", "-"],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=1100,
        check=False,
    )
    seconds = time.monotonic() - started
    assert result.stdout, result.stderr
    final = Progress.from_json(result.stdout)
    log = Path(final.log_file or "").read_text(encoding="utf-8", errors="replace")
    print(f"installed {len(urls)} real packs with {installer} in {seconds:.1f}s")
    return Run(final, seconds, log, home)


def _pip_check(home: ComfyHome) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(home.python), "-m", "pip", "check"],
        capture_output=True,
        text=True,
        env=isolated_pip_env(),
        timeout=300,
        check=False,
    )


def _check_full_install(run: Run, packs: list[Pack]) -> None:
    final, home = run.final, run.home
    by_name = {n.name: n for n in final.nodes}
    assert final.state == "completed", (final.error, run.log[-3000:])
    statuses = {name: node.status for name, node in by_name.items()}
    assert statuses == {p.name: "installed" for p in packs}, {
        n.name: n.error for n in final.nodes if n.error
    }
    assert final.exit_code == 0 and final.failed == 0
    # torch stayed put.
    assert home.installed("torch") == TORCH
    # The submodule is there.
    sub = home.custom_nodes / "ComfyUI_UltimateSDUpscale" / "repositories" / "ultimate_sd_upscale"
    assert (sub / ".git").exists() and any(sub.rglob("*.py")), list(sub.iterdir())
    # Folders ComfyUI can read: the mode git clone gives under the umask.
    umask = os.umask(0o022)
    os.umask(umask)
    for pack in packs:
        mode = stat.S_IMODE((home.custom_nodes / pack.name).stat().st_mode)
        assert mode == 0o777 & ~umask, (pack.name, oct(mode))
    # Impact-Pack's install.py fails quietly (exit 0): installed, with its words quoted.
    impact = by_name["ComfyUI-Impact-Pack"]
    assert impact.install_script_status == "done"
    assert any("Dependency installation has failed" in w for w in impact.warnings), impact
    assert any("install.py printed a traceback" in w for w in impact.warnings), impact
    # ComfyUI-Manager's environment reached it: no complaint about unset paths.
    assert "environment variable is not set" not in run.log
    # One consistent environment.
    check = _pip_check(home)
    assert check.returncode == 0, check.stdout + check.stderr
    # What changed: numpy down to 1.x, forced by the packs that pin it, and said so.
    down = final.packages.get("downgraded", {})
    assert str(down.get("numpy", [None])[0]).startswith("2."), final.packages
    assert str(down["numpy"][1]).startswith("1."), final.packages
    assert "gguf" in final.packages.get("added", {})
    numpy_warning = [w for w in final.warnings if w.startswith("numpy downgraded")]
    assert numpy_warning and "numpy<2" in numpy_warning[0], final.warnings
    # Every clone is recorded on the instance with the commit it ran against.
    record = next((Path(final.log_file or "").parents[2] / "nodes").glob("*.json"))
    recorded = json.loads(record.read_text())["nodes"]
    for pack in packs:
        assert recorded[pack.name]["clone"] == by_name[pack.name].commit


@pytest.fixture(scope="module")
def uv_run(
    tmp_path_factory: pytest.TempPathFactory,
    comfy_venv: Path,
    index: Index,
    pack_server: PackServer,
    node_packs: list[Pack],
) -> Run:
    from controller.sandbox.comfy import make_comfy_home
    from tests.realworld.conftest import _copy_venv

    root = tmp_path_factory.mktemp("uv-run")
    home = make_comfy_home(root / "ComfyUI", with_venv=False)
    _copy_venv(comfy_venv, home.venv)
    urls = [pack_server.url(p) for p in node_packs]
    return install(home, root / "state", urls, index.pip_args, _agent_env(pack_server), "uv")


def test_all_packs_at_once_with_uv(uv_run: Run, node_packs: list[Pack]) -> None:
    _check_full_install(uv_run, node_packs)
    assert uv_run.final.installer == "uv"
    # Two indexes: uv was told to pick the best match across them, as pip does.
    assert "--index-strategy unsafe-best-match" in uv_run.log
    # One resolve for everything.
    assert uv_run.log.count("[requirements] $ ") == 1


def test_all_packs_at_once_with_pip_match_uv(
    uv_run: Run,
    node_packs: list[Pack],
    real_comfy: ComfyHome,
    index: Index,
    pack_server: PackServer,
    tmp_path: Path,
) -> None:
    urls = [pack_server.url(p) for p in node_packs]
    run = install(
        real_comfy, tmp_path / "state", urls, index.pip_args, _agent_env(pack_server), "pip"
    )
    _check_full_install(run, node_packs)
    assert run.final.installer == "pip"
    # uv resolved what pip resolved.
    assert run.home.installed_versions() == uv_run.home.installed_versions()
    print(f"pip {run.seconds:.1f}s vs uv {uv_run.seconds:.1f}s for {len(urls)} packs")


def test_rerun_after_a_failed_index_really_installs(
    real_comfy: ComfyHome, index: Index, pack_server: PackServer, tmp_path: Path, shared: Path
) -> None:
    from tests.realworld.packs import packs

    chosen = {p.name: p for p in packs(shared)}
    urls = [pack_server.url(chosen[n]) for n in ("ComfyUI-GGUF", "ComfyUI-VideoHelperSuite")]
    urls.append(pack_server.url(chosen["ComfyUI-Custom-Scripts"]))
    state = tmp_path / "state"
    env = _agent_env(pack_server, without_uv=True)  # and uv must come from the index
    dead = ["--index-url", "http://127.0.0.1:9/simple/"]  # nothing listens on port 9
    # The network is down: fail at once rather than after pip's five retries.
    first = install(real_comfy, state, urls, dead, {**env, "PIP_RETRIES": "0"}, "auto")
    by_name = {n.name: n for n in first.final.nodes}
    assert by_name["ComfyUI-GGUF"].status == "failed"
    assert by_name["ComfyUI-VideoHelperSuite"].status == "failed"
    assert by_name["ComfyUI-Custom-Scripts"].status == "installed"  # no requirements
    assert first.final.installer == "pip"  # uv could not be fetched either; it said so
    assert any("installing requirements with pip instead" in w for w in first.final.warnings)
    assert real_comfy.installed("gguf") is None

    second = install(real_comfy, state, urls, index.pip_args, env, "auto")
    by_name = {n.name: n for n in second.final.nodes}
    # Not "skipped": the clones were there, the requirements never were.
    assert by_name["ComfyUI-GGUF"].status == "installed"
    assert by_name["ComfyUI-VideoHelperSuite"].status == "installed"
    assert by_name["ComfyUI-Custom-Scripts"].status == "skipped"
    assert (second.final.successful, second.final.skipped, second.final.failed) == (2, 1, 0)
    assert real_comfy.installed("gguf") is not None
    assert real_comfy.installed("imageio-ffmpeg") is not None
    # uv was installed into the agent's state dir from the index, and used.
    assert second.final.installer == "uv"
    assert (state / "tools" / "uv" / "bin" / "uv").is_file()
    assert "not known complete" in second.log
    third = install(real_comfy, state, urls, index.pip_args, env, "auto")
    assert [n.status for n in third.final.nodes] == ["skipped"] * 3
