"""Plan before apply (#30) on the real ComfyUI (its torch 2.14.1 venv) with real
packs, over a real sshd and the controller: a plan changes neither the tree nor
``pip freeze``; its predicted package changes are the ones the following apply
records, package for package; applying it again (the instance drifted) is refused
naming what changed; ``forbid_downgrade: ["numpy"]`` with Impact-Pack (``numpy<2``)
is refused naming it; a ComfyUI of this home running another Python is flagged.

Packs: ComfyUI-GGUF and ComfyUI-VideoHelperSuite resolve from the prefetched
wheelhouse against torch 2.14.1 and have no install.py; Impact-Pack's install.py
clones from github.com, so it is only ever planned here (a plan runs no install.py).
"""

# The controller tier's fixtures are imported by name, so pytest finds them here;
# their parameters "redefine" the imports.
# ruff: noqa: F811

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.sandbox.comfy import isolated_pip_env
from tests.controller.conftest import (  # noqa: F401  (fixtures)
    AppFactory,
    client_key,
    make_client,
    make_settings,
    wait_final,
)
from tests.realworld.packs import PackServer
from tests.support import realcomfy
from tests.support.sshd import SshServer

pytestmark = [pytest.mark.realworld, pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture
def sshd(tmp_path: Path, client_key: Path, pack_server: PackServer) -> Iterator[SshServer]:
    """The instance: its sessions' git sees github.com at the loopback pack server."""
    setenv = " ".join(f"{k}={v}" for k, v in sorted(pack_server.env.items()))
    server = SshServer(tmp_path / "sshd", client_key=client_key, extra_config=f"SetEnv {setenv}")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def comfyui(tmp_path: Path) -> Path:
    template = realcomfy.base_venv()
    if template is None or realcomfy.bundle() is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(
                "the real ComfyUI or its venv is missing (python -m tests.support.realcomfy)"
            )
        pytest.skip("the real ComfyUI or its venv is missing (python -m tests.support.realcomfy)")
    home = realcomfy.checkout(tmp_path / "ComfyUI")
    realcomfy.copy_venv(template, home / "venv")
    return home


def tree_state(home: Path) -> str:
    """custom_nodes byte for byte, and every other file of the home by path, size, mode
    and mtime (the venv is gigabytes: pip and uv replace files, which changes those)."""
    digest = hashlib.sha256()
    for folder, dirs, files in os.walk(home):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            info = path.lstat()
            digest.update(
                f"{path.relative_to(home)} {info.st_size} {info.st_mode} "
                f"{info.st_mtime_ns}\n".encode()
            )
            if "custom_nodes" in path.parts and path.is_file() and not path.is_symlink():
                digest.update(path.read_bytes())
    return digest.hexdigest()


def freeze(home: Path) -> str:
    return subprocess.run(
        [str(home / "venv" / "bin" / "python"), "-m", "pip", "freeze", "--all"],
        capture_output=True,
        text=True,
        check=True,
        env=isolated_pip_env(),
        timeout=120,
    ).stdout


def body(sshd: SshServer, home: Path, wheels: Path, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ssh_connection": sshd.connection_string(),
        "ui_home": str(home),
        "pip_args": ["--no-index", "--find-links", str(wheels)],
        "installer": "uv",
        "verify": False,  # the load check is #21's; this tier is about what changes
    }
    out.update(extra)
    return out


async def run_task(client: Any, path: str, payload: dict[str, Any], timeout: float) -> Any:
    response = await client.post(path, json=payload)
    answer = await response.json()
    assert response.status == 202, answer
    return await wait_final(client, answer["task_id"], timeout=timeout)


@pytest.fixture
def pack_urls(pack_server: PackServer, node_packs: list[Any]) -> dict[str, str]:
    return {p.name: pack_server.url(p) for p in node_packs}


async def test_a_plan_changes_nothing_and_the_apply_does_what_it_said(
    tmp_path: Path,
    client_key: Path,
    make_client: AppFactory,
    sshd: SshServer,
    comfyui: Path,
    wheels: Path,
    pack_urls: dict[str, str],
) -> None:
    client = await make_client(make_settings(tmp_path, client_key, command_timeout=120.0))
    nodes = [pack_urls["ComfyUI-GGUF"], pack_urls["ComfyUI-VideoHelperSuite"]]
    before = (tree_state(comfyui), freeze(comfyui))

    started = time.monotonic()
    planned = await run_task(
        client, "/api/plan", body(sshd, comfyui, wheels, nodes=nodes), timeout=200
    )
    plan_seconds = time.monotonic() - started
    assert planned["state"] == "completed", planned.get("error")
    assert (tree_state(comfyui), freeze(comfyui)) == before
    plan = planned["plan"]
    assert [n["action"] for n in plan["nodes"]] == ["new", "new"], plan["nodes"]
    assert plan["interpreter"]["path"] == str(comfyui / "venv" / "bin" / "python")
    assert plan["held"]["torch"] == "2.14.1"
    assert plan["packages"]["added"]["gguf"] == [None, "0.19.0"]
    assert "ComfyUI-VideoHelperSuite: opencv-python" in plan["reasons"]["opencv-python"]

    started = time.monotonic()
    # Only the plan's id: its interpreter, package sources and installer come with it.
    apply = {"ssh_connection": sshd.connection_string(), "ui_home": str(comfyui)}
    applied = await run_task(
        client,
        "/ssh/install-custom-nodes",
        {**apply, "plan": planned["task_id"], "verify": False},
        timeout=240,
    )
    install_seconds = time.monotonic() - started
    assert applied["state"] == "completed" and applied["success"], applied.get("error")
    # What the plan said, package for package, is what the install recorded.
    assert applied["packages"] == plan["packages"]
    assert [n["commit"] for n in applied["nodes"]] == [n["to"] for n in plan["nodes"]]
    print(f"plan {plan_seconds:.1f}s, install {install_seconds:.1f}s")  # the bench reads this

    # The instance moved on (the apply itself): the same plan again is refused.
    drifted = (tree_state(comfyui), freeze(comfyui))
    refused = await run_task(
        client,
        "/ssh/install-custom-nodes",
        body(sshd, comfyui, wheels, plan=planned["task_id"]),
        timeout=120,
    )
    assert refused["state"] == "failed" and refused["error_code"] == "plan_drift"
    assert "ComfyUI-GGUF was absent and is now" in refused["error"]
    assert "gguf added since the plan (absent -> 0.19.0)" in refused["error"]
    assert (tree_state(comfyui), freeze(comfyui)) == drifted


@pytest.fixture
def other_python_comfyui(comfyui: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process /proc shows running this home's main.py with the system Python, not
    the venv's (it only sleeps: ComfyUI's start-up is not what is tested here)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)", str(comfyui / "main.py")]
    )
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


async def test_impact_packs_numpy_downgrade_is_refused_and_another_python_is_flagged(
    tmp_path: Path,
    client_key: Path,
    make_client: AppFactory,
    sshd: SshServer,
    comfyui: Path,
    wheels: Path,
    pack_urls: dict[str, str],
    other_python_comfyui: subprocess.Popen[bytes],
) -> None:
    client = await make_client(make_settings(tmp_path, client_key, command_timeout=120.0))
    before = (tree_state(comfyui), freeze(comfyui))
    refused = await run_task(
        client,
        "/api/plan",
        body(
            sshd,
            comfyui,
            wheels,
            nodes=[pack_urls["ComfyUI-Impact-Pack"]],
            forbid_downgrade=["numpy"],
        ),
        timeout=240,
    )
    assert refused["state"] == "failed" and refused["error_code"] == "policy_violation"
    assert (
        "numpy would be downgraded 2.4.6 -> 1.26.4 (forced by ComfyUI-Impact-Pack: numpy<2"
        in (refused["error"])
    )
    who = refused["plan"]["interpreter"]
    assert [r["pid"] for r in who["running"]] == [other_python_comfyui.pid]
    assert who["mismatch"] and not who["running"][0]["matches"]
    assert (tree_state(comfyui), freeze(comfyui)) == before

    # An install into the venv while ComfyUI runs another Python is refused...
    wrong = await run_task(
        client,
        "/ssh/install-custom-nodes",
        body(sshd, comfyui, wheels, nodes=[pack_urls["ComfyUI-GGUF"]]),
        timeout=120,
    )
    assert wrong["state"] == "failed" and wrong["error_code"] == "wrong_interpreter"
    assert f"runs {sys.executable}" in wrong["error"] and "--python" in wrong["error"]
    assert (tree_state(comfyui), freeze(comfyui)) == before
