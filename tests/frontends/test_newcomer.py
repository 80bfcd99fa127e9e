"""Issue 15: the command line as a newcomer meets it. Each test runs the real
``nodeferry`` command (in a pseudo-terminal where the terminal matters) and checks
what the person sees: no library tracebacks, each failure said once, short task
ids, the controller's reason in ``logs``, readable headers and tables."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.common.config import load_settings
from controller.common.target import Target
from controller.core.live import failed_document, starting_document
from controller.core.registry import Registry, TaskRecord
from tests.frontends.test_cli import Terminal, cli_env, run_cli

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def banner_less_server() -> Iterator[int]:
    """A TCP port on loopback that accepts and closes at once: an SSH handshake there
    fails reading the banner, which paramiko logs with a whole traceback."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def flat(text: str) -> str:
    """``text`` with rich's line wrapping undone."""
    return re.sub(r"\s+", " ", text)


def data_env(tmp_path: Path) -> dict[str, str]:
    return cli_env(
        NODEFERRY_DATA_DIR=str(tmp_path / "data"),
        NODEFERRY_LOCAL_STATE_DIR=str(tmp_path / "agent-state"),
    )


@pytest.mark.timeout(150)
def test_a_failed_ssh_start_is_said_once_without_a_traceback(tmp_path: Path) -> None:
    env = data_env(tmp_path)
    node = "git://127.0.0.1:9/ComfyUI-Nothing.git"
    with banner_less_server() as port:
        term = Terminal(
            ["install", "--ssh", f"ssh -p {port} root@127.0.0.1", "--ui-home", "/w/ComfyUI", node],
            env,
        )
        assert term.wait(90) == 1, term.text
        text = term.text
        # Point 1: paramiko's logger stays off the terminal; the reason comes once.
        assert "Traceback" not in text and "Exception (client)" not in text, text
        assert "SSHException" not in text
        reason = "closed the connection before sending an SSH banner"
        assert flat(text).count(reason) == 1, text
        assert "✗ failed: could not start the install" in text
        # Point 6: the header names the machine as parsed, then the folder.
        assert f"root@127.0.0.1:{port} /w/ComfyUI" in text, text
        assert "ssh -p" not in text

        # --verbose brings the library's log back, on stderr.
        verbose = run_cli(
            "install", "-v", "--ssh", f"root@127.0.0.1:{port}", "--ui-home", "/w/Other", node,
            env=env,
        )  # fmt: skip
        assert verbose.returncode == 1
        assert "Error reading SSH protocol banner" in verbose.stderr

    task_id = re.search(r"task ([0-9a-f-]{36})", text)
    assert task_id, text
    short = task_id.group(1)[:8]
    # Point 2: the short id the header shows works in every command.
    status = run_cli("status", short, env=env)
    assert status.returncode == 1, status.stderr
    assert f"nodeferry {short}  root@127.0.0.1:" in status.stdout
    assert reason in flat(status.stdout)
    # Point 3: logs of a task whose agent never ran says why, from the controller.
    logs = run_cli("logs", short[:6], env=env)
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout.startswith("nodeferry: the agent never started: could not start")
    assert reason in flat(logs.stdout)
    cancel = run_cli("cancel", task_id.group(1).upper()[:10], env=env)
    assert cancel.returncode == 0 and "✗ failed" in cancel.stdout, cancel.stderr


def _failed_task(task_id: str, ui_home: str) -> TaskRecord:
    record = TaskRecord(
        task_id=task_id,
        target=Target(kind="ssh", host="10.0.0.7", user="root", port=40022),
        ui_home=ui_home,
        spec={"task_id": task_id, "ui_home": ui_home, "nodes": ["https://example.com/a/b"]},
        created_at=time.time(),
    )
    record.progress = failed_document(starting_document(record), "start_failed", "refused")
    record.state = "failed"
    record.finished_at = time.time()
    return record


@pytest.mark.timeout(120)
def test_short_ids_resolve_and_an_ambiguous_one_lists_the_matches(tmp_path: Path) -> None:
    env = data_env(tmp_path)
    settings = load_settings(environ={}, overrides={"data_dir": tmp_path / "data"})
    first = "abcdef01-" + str(uuid.uuid4())[9:]
    second = "abcdef02-" + str(uuid.uuid4())[9:]
    registry = Registry(settings.database_path)
    try:
        for task_id, home in ((first, "/workspace/one"), (second, "/workspace/two")):
            assert registry.add_if_free(_failed_task(task_id, home)) is None
    finally:
        registry.close()

    ambiguous = run_cli("status", "abcdef", env=env)
    assert ambiguous.returncode == 2, ambiguous.stdout + ambiguous.stderr
    assert "abcdef names 2 tasks" in ambiguous.stderr
    assert first in ambiguous.stderr and second in ambiguous.stderr
    assert "give more of the id" in ambiguous.stderr

    unique = run_cli("status", "--json", "abcdef02", env=env)
    assert unique.returncode == 1, unique.stderr  # the task failed: status says so
    assert f'"task_id": "{second}"' in unique.stdout

    missing = run_cli("logs", "fedcba98", env=env)
    assert missing.returncode == 4 and "no task id starts with fedcba98" in missing.stderr
    too_short = run_cli("cancel", "abc", env=env)
    assert too_short.returncode == 2 and "first 6 or more hex digits" in too_short.stderr

    # Point 6: at 80 columns the table keeps whole targets and folders (wrapped, not
    # cut to "ui_h…"); ids are the short ones every command accepts.
    term = Terminal(["tasks"], env, columns=80)
    assert term.wait(60) == 0, term.text
    assert "…" not in term.text, term.text
    assert "root@10.0.0.7:40022" in term.text and "/workspace/one" in term.text
    assert re.search(r"^\s*abcdef01\s", term.text, re.MULTILINE), term.text
    assert first not in term.text


@pytest.mark.timeout(120)
def test_refusals_number_nodes_from_one_and_help_lists_exit_codes(tmp_path: Path) -> None:
    # "local" (the default target) is allowed, so the nodes are what gets refused.
    env = {**data_env(tmp_path), "NODEFERRY_ALLOW_LOCAL": "1"}
    local = run_cli("install", "--ui-home", "/w/ComfyUI", "file:///srv/node", env=env)
    assert local.returncode == 2
    assert "NODE 1: scheme 'file' is not allowed" in local.stderr
    assert "--allow-file-urls" in local.stderr
    twins = run_cli(
        "install", "--ui-home", "/w/ComfyUI", "https://h.example/a/b", "https://g.example/c/b",
        env=env,
    )  # fmt: skip
    assert twins.returncode == 2
    assert "NODE 2: installs into 'b' like NODE 1" in twins.stderr and "URL#NAME" in twins.stderr
    assert "nodes." not in twins.stderr

    helped = run_cli("--help", env=env)
    assert helped.returncode == 0
    for code in (0, 1, 2, 3, 4, 5, 6, 124, 130):
        assert re.search(rf"^  {code} +\S", helped.stdout, re.MULTILINE), code
    install_help = run_cli("install", "--help", env=env)
    assert "exit status:" in install_help.stdout and "URL[@REF][#NAME]" in install_help.stdout
