"""The client commands as a person runs them: in a pseudo-terminal (live display,
Ctrl-C), and as plain subprocesses (``--json``, exit statuses, the in-process
controller)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from agent import liveness
from controller.client import Client
from tests.frontends.conftest import DemoWorld, RunningController

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


#: The session controller's data dir: a command given its URL finds the token
#: there, as a command on the controller's machine does.
_controller_data_dir: list[str] = []


@pytest.fixture(autouse=True)
def _commands_find_the_token(controller: RunningController) -> None:
    _controller_data_dir[:] = [str(controller.settings.data_dir)]


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NODEFERRY_")}
    if _controller_data_dir:
        env["NODEFERRY_DATA_DIR"] = _controller_data_dir[0]
    env.update(PYTHONPATH=str(ROOT), TERM="xterm-256color", **extra)
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    return env


class Terminal:
    """A command running in a pseudo-terminal (120x40 unless told), its output collected."""

    def __init__(self, args: list[str], env: dict[str, str], columns: int = 120) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # the child: the pty is its controlling terminal
            os.execve(sys.executable, [sys.executable, "-m", "controller", *args], env)
        self.pid, self.fd = pid, fd
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
        self.raw = b""
        self.status: int | None = None

    @property
    def text(self) -> str:
        return ANSI.sub("", self.raw.decode("utf-8", errors="replace"))

    def _pump(self, timeout: float) -> None:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if ready:
            try:
                data = os.read(self.fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                data = b""
            self.raw += data
            if not data:
                self._reap(block=True)
        else:
            self._reap(block=False)

    def _reap(self, block: bool) -> None:
        if self.status is not None:
            return
        pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
        if pid:
            self.status = os.waitstatus_to_exitcode(status)

    def expect(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.text)
            if found:
                return found
            if self.status is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"no {pattern!r} within {timeout} s (exit {self.status}); output:\n{self.text}"
                )
            self._pump(0.1)

    def close(self) -> None:
        """End the command and everything it started (a demo's controller and git
        daemon), whether or not the test got as far as ending it itself."""
        if self.status is None:
            # pty.fork made the child a session leader: its group is its own pid.
            # Children in groups of their own are found through /proc first.
            tree = [self.pid, *liveness.descendants(self.pid)]
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while self.status is None and time.monotonic() < deadline:
                self._pump(0.1)
            for pid in tree:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if self.status is None:
                self._reap(block=True)
        with contextlib.suppress(OSError):
            os.close(self.fd)

    def send(self, data: str) -> None:
        os.write(self.fd, data.encode())

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.status is None:
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                raise AssertionError(f"still running after {timeout} s; output:\n{self.text}")
            self._pump(0.1)
        while True:  # drain what is left
            ready, _, _ = select.select([self.fd], [], [], 0)
            if not ready:
                break
            try:
                data = os.read(self.fd, 65536)
            except OSError:
                break
            if not data:
                break
            self.raw += data
        return self.status


def install_args(
    world: DemoWorld, home: Path, nodes: list[str], controller: str | None = None
) -> list[str]:
    """``install`` with the sandbox's interpreter and wheelhouse."""
    args = ["install", "--ui-home", str(home), "--python", str(world.sandbox.python)]
    if controller is not None:
        args += ["--controller", controller]
    for arg in world.sandbox.pip_args:
        args.append(f"--pip-arg={arg}")
    return args + nodes


@pytest.mark.timeout(120)
def test_install_live_display_in_a_terminal(
    controller: RunningController,
    world: DemoWorld,
    tmp_path: Path,
    terminal: Callable[[list[str], dict[str, str]], Terminal],
) -> None:
    home = world.new_ui_home(tmp_path)
    term = terminal(
        install_args(world, home, world.nodes(), controller.url),
        cli_env(),
    )
    term.expect(r"task [0-9a-f-]{36}", 30)
    # Live: the display shows the install.py phase while it runs (it takes ~2 s).
    term.expect(r"running install scripts?", 60)
    assert term.wait(60) == 0, term.text
    text = term.text
    assert "━" in text  # the overall bar
    for node in world.sandbox.nodes:
        assert re.search(rf"{node.name}\s+✓ installed", text), node.name
    assert "4/4 nodes  100%" in text
    assert "✓ done: 4 installed, 0 failed, 0 skipped" in text


@pytest.mark.timeout(120)
def test_ctrl_c_asks_and_cancels(
    controller: RunningController,
    world: DemoWorld,
    tmp_path: Path,
    terminal: Callable[[list[str], dict[str, str]], Terminal],
) -> None:
    home = world.new_ui_home(tmp_path)
    term = terminal(
        install_args(world, home, [world.slow_node()], controller.url),
        cli_env(),
    )
    task_id = term.expect(r"task ([0-9a-f-]{36})", 30).group(1)
    term.expect(r"ComfyUI-Slow\s+running install script", 60)
    term.send("\x03")
    term.expect(r"\[c\]ancel the install on the instance, or \[d\]etach", 10)
    term.send("c\n")
    term.expect("cancelling the install", 10)
    assert term.wait(30) == 6, term.text
    assert "✗ cancelled" in term.text
    with Client(controller.url, token=controller.token) as client:
        assert client.progress(task_id)["state"] == "cancelled"


@pytest.mark.timeout(120)
def test_ctrl_c_can_detach_and_the_install_keeps_running(
    controller: RunningController,
    world: DemoWorld,
    tmp_path: Path,
    terminal: Callable[[list[str], dict[str, str]], Terminal],
) -> None:
    home = world.new_ui_home(tmp_path)
    term = terminal(
        install_args(world, home, [world.slow_node()], controller.url),
        cli_env(),
    )
    task_id = term.expect(r"task ([0-9a-f-]{36})", 30).group(1)
    term.expect(r"ComfyUI-Slow\s+running install script", 60)
    term.send("\x03")
    term.expect(r"\[c/d\]", 10)
    term.send("\x03")  # a second Ctrl-C detaches
    assert term.wait(30) == 130, term.text
    assert f"nodeferry status -f {task_id}" in term.text
    with Client(controller.url, token=controller.token) as client:
        assert client.progress(task_id)["state"] == "running_install_scripts"
        assert client.cancel(task_id)["state"] == "cancelled"


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller", *args],
        env=env or cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.timeout(150)
def test_json_output_and_exit_statuses(
    controller: RunningController, world: DemoWorld, tmp_path: Path
) -> None:
    home = world.new_ui_home(tmp_path / "ok")
    done = run_cli(*install_args(world, home, world.nodes()[:2], controller.url), "--json")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["state"] == "completed" and document["success"] is True

    home = world.new_ui_home(tmp_path / "bad")
    missing = f"{world.git_url}/ComfyUI-Missing.git"
    failed = run_cli(
        *install_args(world, home, [world.nodes()[0], missing], controller.url), "--json"
    )
    assert failed.returncode == 1, failed.stderr
    document = json.loads(failed.stdout)
    assert document["success"] is False and document["failed_clones"] == 1
    bad_node = next(n for n in document["nodes"] if n["name"] == "ComfyUI-Missing")
    assert bad_node["status"] == "failed" and bad_node["error"]

    # The same failure in the human display: the node's error, and exit status 1.
    home = world.new_ui_home(tmp_path / "bad-human")
    human = run_cli(*install_args(world, home, [missing], controller.url))
    assert human.returncode == 1
    # Without a terminal: one line per change, each said once, then the summary.
    assert human.stdout.count("ComfyUI-Missing: failed") == 1, human.stdout
    assert "✗ finished with failures: 0 installed, 1 failed" in human.stdout

    relative = run_cli("install", "--controller", controller.url, "--ui-home", "ComfyUI", missing)
    assert relative.returncode == 2
    assert "ui_home" in relative.stderr and "absolute" in relative.stderr
    hostile = run_cli(
        "install",
        "--controller",
        controller.url,
        "--ui-home",
        "/x",
        "ext::sh%20-c%20touch%20/tmp/p",
    )
    assert hostile.returncode == 2 and "remote-helper" in hostile.stderr
    unknown = run_cli("status", "--controller", controller.url, str(uuid.uuid4()))
    assert unknown.returncode == 4 and "no task" in unknown.stderr
    nobody = run_cli("tasks", "--controller", "http://127.0.0.1:9")
    assert nobody.returncode == 5 and "cannot reach the controller" in nobody.stderr
    assert "connection refused (is `nodeferry serve` running there?)" in nobody.stderr
    assert "ssl:default" not in nobody.stderr and "Connect call" not in nobody.stderr


@pytest.mark.timeout(150)
def test_without_controller_an_in_process_one_serves_every_command(
    world: DemoWorld, tmp_path: Path
) -> None:
    env = cli_env(
        NODEFERRY_DATA_DIR=str(tmp_path / "data"),
        NODEFERRY_LOCAL_STATE_DIR=str(tmp_path / "agent-state"),
        NODEFERRY_ALLOW_LOCAL="1",
    )
    home = world.new_ui_home(tmp_path)
    tiles = next(n for n in world.nodes() if "Tiles" in n)
    done = run_cli(*install_args(world, home, [tiles]), env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    task_id = re.search(r"task ([0-9a-f-]{36})", done.stdout)
    assert task_id, done.stdout
    task = task_id.group(1)
    assert "✓ done: 1 installed" in done.stdout
    # A later command (another process, another in-process controller) finds the
    # task in the same data dir.
    status = run_cli("status", task, env=env)
    assert status.returncode == 0, status.stderr
    assert re.search(r"ComfyUI-Demo-Tiles\s+✓ installed", status.stdout)
    followed_status = run_cli("status", "-f", task, env=env)
    assert followed_status.returncode == 0 and "✓ done: 1 installed" in followed_status.stdout
    listed = run_cli("tasks", "--json", env=env)
    assert [t["task_id"] for t in json.loads(listed.stdout)] == [task]
    logs = run_cli("logs", task, env=env)
    assert logs.returncode == 0 and "install.py: prepared the node" in logs.stdout
    followed = run_cli("logs", "-f", task, env=env)
    assert followed.returncode == 0 and followed.stdout == logs.stdout
    cancel = run_cli("cancel", task, env=env)
    assert cancel.returncode == 0 and "✓ done" in cancel.stdout  # already final: unchanged


@pytest.mark.timeout(150)
def test_plan_prints_the_table_and_install_applies_it_from_its_saved_json(
    controller: RunningController, world: DemoWorld, tmp_path: Path
) -> None:
    home = world.new_ui_home(tmp_path / "planned")
    nodes = world.nodes()[:2]
    plan_args = ["plan", *install_args(world, home, nodes, controller.url)[1:]]
    table = run_cli(*plan_args)
    assert table.returncode == 0, table.stderr
    assert "interpreter" in table.stdout and str(world.sandbox.python) in table.stdout
    assert table.stdout.count(" new ") >= len(nodes), table.stdout
    assert "apply it: nodeferry install --plan" in table.stdout
    assert list((home / "custom_nodes").iterdir()) == []

    saved = run_cli(*plan_args, "--json")
    assert saved.returncode == 0, saved.stderr
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(saved.stdout)
    document = json.loads(saved.stdout)
    assert [n["action"] for n in document["plan"]["nodes"]] == ["new", "new"]

    args = install_args(world, home, [], controller.url)
    applied = run_cli(*args, "--plan", str(plan_file), "--json")
    assert applied.returncode == 0, applied.stderr
    done = json.loads(applied.stdout)
    assert [n["commit"] for n in done["nodes"]] == [n["to"] for n in document["plan"]["nodes"]]
    # The home moved on: the same plan is refused, naming what changed.
    again = run_cli(*args, "--plan", document["task_id"], "--json")
    assert again.returncode == 1
    refused = json.loads(again.stdout)
    assert refused["error_code"] == "plan_drift" and "was absent and is now" in refused["error"]
    both = run_cli(*args, "--plan", document["task_id"], nodes[0])
    assert both.returncode == 2 and "give NODEs or --plan" in both.stderr
