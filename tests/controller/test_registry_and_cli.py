"""The SQLite task registry, and ``nodeferry serve`` as a real process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from controller.common.target import Target
from controller.core.registry import Registry, TaskRecord
from protocol import Progress
from tests.support.procs import end_process

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]


def _record(target: Target, ui_home: str, created: float) -> TaskRecord:
    return TaskRecord(str(uuid.uuid4()), target, ui_home, {"x": 1}, created)


def test_registry_conflicts_persistence_and_order(tmp_path: Path) -> None:
    path = tmp_path / "tasks.sqlite3"
    registry = Registry(path)
    a = Target("ssh", "root", "10.0.0.1", 22)
    b = Target("ssh", "root", "10.0.0.2", 22)
    first = _record(a, "/w/ComfyUI", 100.0)
    assert registry.add_if_free(first) is None
    assert registry.add_if_free(_record(a, "/w/ComfyUI/", 101.0)) == first.task_id
    other = _record(b, "/w/ComfyUI", 102.0)
    assert registry.add_if_free(other) is None
    assert registry.is_running(a, "/w/ComfyUI") == first.task_id

    done = Progress(task_id=first.task_id, ui_home="/w/ComfyUI", state="completed")
    registry.save_progress(first.task_id, done, 200.0, launched=True)
    assert registry.is_running(a, "/w/ComfyUI") is None
    registry.close()

    reopened = Registry(path)
    got = reopened.get(first.task_id)
    assert got is not None and got.state == "completed" and got.launched
    assert got.progress is not None and got.progress.to_dict() == done.to_dict()
    assert [r.task_id for r in reopened.all()] == [other.task_id, first.task_id]
    assert [r.task_id for r in reopened.unfinished()] == [other.task_id]
    assert [r.task_id for r in reopened.finished_before(300.0)] == [first.task_id]
    assert reopened.finished_before(150.0) == []
    reopened.delete([first.task_id])
    assert reopened.get(first.task_id) is None
    reopened.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NODEFERRY_")}
    env["NODEFERRY_DATA_DIR"] = str(tmp_path / "data")
    env["NODEFERRY_LOCAL_STATE_DIR"] = str(tmp_path / "local")
    env["PYTHONPATH"] = str(REPO)
    return env


def test_serve_refuses_public_bind_without_token(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "controller",
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            "1",
            "--no-auth",
        ],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "without an API token" in result.stderr
    assert not (tmp_path / "data").exists()


def test_serve_answers_http(tmp_path: Path) -> None:
    port = _free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "controller", "serve", "--port", str(port)],
            env=_env(tmp_path),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    body = json.loads(r.read())
                break
            except OSError:
                assert process.poll() is None, log.read_text(errors="replace")
                assert time.monotonic() < deadline, "serve never answered"
                time.sleep(0.1)
        assert body["success"] is True and body["status"] == "ok"
        assert (tmp_path / "data" / "tasks.sqlite3").exists()
        # A token was made on first start, readable by its owner only ...
        token_file = tmp_path / "data" / "token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        token = token_file.read_text().strip()
        printed = subprocess.run(
            [sys.executable, "-m", "controller", "token"],
            env=_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert printed.stdout.strip() == token
        # ... without which the API answers 401, with it 200.
        url = f"http://127.0.0.1:{port}/api/tasks"
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(url, timeout=10)
        assert denied.value.code == 401
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert json.loads(answer.read())["success"] is True
    finally:
        end_process(process)
    output = log.read_text(errors="replace")
    # Not a terminal (a log file, journald, docker logs): the address without the
    # token, and how to get it; the token itself is nowhere in the log.
    assert f"dashboard: http://127.0.0.1:{port}/ (it asks for the API token" in output
    assert f"`nodeferry token --data-dir {tmp_path / 'data'}`" in output
    assert token not in output
