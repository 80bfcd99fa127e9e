"""The import check against the real ComfyUI (0.3.64): synthetic nodes that load, fail,
kill the interpreter or hang, in a fresh checkout with a copy of its real venv.

Proves isolation (a node that kills ComfyUI's start, or hangs it, fails alone; the
others are judged by ComfyUI's start with only them), timeouts, ComfyUI's own
traceback as the error, the arguments learned from a running ComfyUI, and that
the check leaves the home as it was: no file written, the running ComfyUI's temp
directory untouched, the running server still answering.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.sandbox.comfy import ComfyHome
from controller.sandbox.gitserver import GitServer
from protocol import Progress
from protocol.fields import new_task_id
from tests.realworld.conftest import real_comfyui
from tests.realworld.packs import REPO_ROOT
from tests.support.realcomfy import loader_verdicts

pytestmark = [pytest.mark.realworld, pytest.mark.slow]

GOOD = """\
from server import PromptServer  # what real packs decorate routes on at import
assert PromptServer.instance is not None, "imported outside ComfyUI's start"
import comfy.model_management
assert comfy.model_management.get_torch_device().type == "cpu"
class Good:
    pass
NODE_CLASS_MAPPINGS = {"NodeferryGood": Good}
"""
BROKEN = "import nodeferry_missing_module\nNODE_CLASS_MAPPINGS = {}\n"
KILLER = "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n"
HANG = "import time\ntime.sleep(3600)\nNODE_CLASS_MAPPINGS = {}\n"


@pytest.fixture
def git_server(tmp_path: Path) -> Iterator[GitServer]:
    with GitServer(tmp_path / "git") as server:
        yield server


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and directory of the home outside custom_nodes, venv and caches."""
    found: dict[str, tuple[int, int]] = {}
    for dirpath, dirs, files in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        if rel.parts[:1] in (("custom_nodes",), ("venv",), (".git",)):
            dirs[:] = []
            continue
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in [*dirs, *files]:
            path = Path(dirpath) / name
            st = path.lstat()
            found[str(rel / name)] = (st.st_size, st.st_mtime_ns if path.is_file() else 0)
    return found


def _run_agent(
    home: ComfyHome, state: Path, urls: list[str], env_extra: dict[str, str], **spec: Any
) -> Progress:
    data: dict[str, Any] = {
        "task_id": new_task_id(),
        "ui_home": str(home.root),
        "nodes": urls,
        "pip_args": ["--no-index"],
        **spec,
    }
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(env_extra)
    result = subprocess.run(
        [sys.executable, "-m", "agent", "--state-dir", str(state), "run", "--spec", "-"],
        input=json.dumps(data),
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=600,
        check=False,
    )
    assert result.stdout, result.stderr
    return Progress.from_json(result.stdout)


def _task_processes(home: Path) -> list[int]:
    """Processes whose working directory is the home (a ComfyUI the check left running)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.path.realpath(os.readlink(entry / "cwd")) == str(home.resolve()):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.timeout(420)
def test_a_node_that_kills_or_hangs_comfyui_fails_alone(
    tmp_path: Path, comfyui_venv: Path, git_server: GitServer
) -> None:
    home = real_comfyui(tmp_path / "ComfyUI", comfyui_venv)
    urls = [
        git_server.add_repo(name, {"__init__.py": code}).url
        for name, code in (("good", GOOD), ("broken", BROKEN), ("killer", KILLER), ("hang", HANG))
    ]
    before = _snapshot(home.root)
    started = time.monotonic()
    final = _run_agent(
        home,
        tmp_path / "state",
        urls,
        # ComfyUI's own start gets 50 s here, each node 10 s on top: the whole start
        # (five entries with websocket_image_save.py) 100 s at most, one node's 60 s.
        {"NODEFERRY_AGENT_COMFYUI_TIMEOUT": "50"},
        verify_timeout=10,
        jobs=5,  # every start alone at once: the hanging one bounds the wait
    )
    seconds = time.monotonic() - started
    by_name = {n.name: n for n in final.nodes}
    print(f"killer + hang + good + broken judged in {seconds:.1f}s")
    agent_log = Path(final.log_file or "").read_text()
    for line in agent_log.splitlines():
        if "[comfyui" in line and (" after " in line or "timed out" in line):
            print(line)

    good = by_name["good"]
    assert good.status == "installed", good
    assert good.import_result is not None and good.import_result.check == "comfyui_alone"

    broken = by_name["broken"].import_result
    assert by_name["broken"].status == "failed" and broken is not None
    assert broken.error == "ModuleNotFoundError: No module named 'nodeferry_missing_module'"
    assert broken.traceback is not None
    assert broken.traceback.startswith("Traceback (most recent call last):")
    assert "custom_nodes/broken/__init__.py" in broken.traceback  # ComfyUI's lines for it
    assert "load_custom_node" in broken.traceback

    killer = by_name["killer"].import_result
    assert by_name["killer"].status == "failed" and killer is not None
    assert killer.status == "failed" and "exit code -9" in (killer.error or ""), killer

    hang = by_name["hang"].import_result
    assert by_name["hang"].status == "failed" and hang is not None
    assert hang.status == "timeout" and "timed out after" in (hang.error or ""), hang

    assert any("starting it with one node at a time" in w for w in final.warnings)
    # Nothing left behind: the hanging start is gone, the home is as it was.
    assert _task_processes(home.root) == []
    assert _snapshot(home.root) == before
    log = Path(final.log_file or "").parent / "comfyui-check.log"
    starts = [line for line in log.read_text().splitlines() if line.startswith("$ ")]
    assert len(starts) == 6, starts  # all at once, none, then each node alone
    assert "--whitelist-custom-nodes=killer" in log.read_text()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.timeout(300)
def test_the_check_starts_comfyui_as_the_running_one_runs_and_leaves_it_alone(
    tmp_path: Path, comfyui_venv: Path, git_server: GitServer
) -> None:
    home = real_comfyui(tmp_path / "ComfyUI", comfyui_venv)
    output = tmp_path / "elsewhere" / "output"
    output.mkdir(parents=True)
    port = _free_port()
    # The instance's ComfyUI, really serving, with its own output directory.
    server_log = (tmp_path / "server.log").open("w")
    argv = [str(home.python), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(
        [*argv, "--output-directory", str(output)],
        cwd=home.root,
        stdout=server_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/system_stats", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()
                time.sleep(0.5)
        (home.root / "temp").mkdir(exist_ok=True)
        marker = home.root / "temp" / "preview-of-the-running-comfyui.png"
        marker.write_bytes(b"png")
        # A node that loads only where ComfyUI writes to that output directory.
        needs_output = (
            "import folder_paths\n"
            f"assert folder_paths.get_output_directory() == {str(output)!r}, "
            "folder_paths.get_output_directory()\n"
            "NODE_CLASS_MAPPINGS = {}\n"
        )
        url = git_server.add_repo("needs-output", {"__init__.py": needs_output}).url
        before = _snapshot(home.root)
        final = _run_agent(home, tmp_path / "state", [url], {})
        node = final.nodes[0]
        assert node.status == "installed", (node.error, final.warnings)
        assert node.import_result is not None and node.import_result.check == "comfyui"
        check_log = (Path(final.log_file or "").parent / "comfyui-check.log").read_text()
        check_argv = check_log.splitlines()[0]
        assert f"--output-directory {output}" in check_argv and "--cpu" in check_argv
        assert "--port" not in check_argv and "--listen" not in check_argv
        # What ComfyUI logs once it listens: the server did, the check did not.
        assert "To see the GUI go to" in (tmp_path / "server.log").read_text()
        assert "To see the GUI go to" not in check_log
        # The running ComfyUI is untouched: serving, its temp directory kept.
        assert marker.read_bytes() == b"png"
        assert server.poll() is None
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/system_stats", timeout=10) as r:
            assert json.load(r)["system"]["comfyui_version"] == "0.3.64"
        assert _snapshot(home.root) == before
        # ComfyUI's loader agrees, started as the instance starts it.
        oracle = loader_verdicts(home.root, "--output-directory", str(output))
        assert oracle.loaded.get("needs-output") is True, oracle.output[-3000:]
        assert loader_verdicts(home.root).loaded.get("needs-output") is False
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
        server_log.close()
