"""Restart and readiness (#22) in the agent: how it finds the way ComfyUI runs (over a
made-up /proc, and systemd, which this container does not run), and the plain
process path end to end with a small stand-in server: the real ComfyUI's tier is
tests/realworld/test_restart.py, this one covers the failures quickly."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import comfyproc, restart
from agent.procs import Children
from agent.tasklog import TaskLog
from controller.sandbox.comfy import ComfyHome
from tests.agent.conftest import Agent, Repos
from tests.agent.test_install import run_spec
from tests.support import comfy_server
from tests.support.sshd import free_port

pytestmark = pytest.mark.timeout(60)

#: A stand-in ComfyUI: what ``mode`` in its home says (serve, slow, die, hang) decides
#: what this start does; it serves /object_info with one class per custom node.
FAKE_MAIN = """\
import http.server, json, os, sys, time
port = int(sys.argv[sys.argv.index("--port") + 1])
mode = open("mode").read().strip()
print("fake ComfyUI", os.getpid(), "mode", mode, "env", os.environ.get("FAKE_MARK"), flush=True)
if mode == "die":
    print("boom: CUDA out of memory at start", flush=True)
    sys.exit(3)
if mode == "hang":
    time.sleep(600)
if mode == "slow":
    time.sleep(3)  # torch's import, in short: a restart that can be watched
classes = {"KSampler": {}}
for name in sorted(os.listdir("custom_nodes")):
    classes[name + "Node"] = {}
body = json.dumps(classes).encode()

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/object_info" else 404)
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


# -- detection over a made-up /proc -----------------------------------------------


class FakeProc:
    """/proc/<pid>/{cmdline,cwd,environ,stat,cgroup} for processes a test invents."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def add(
        self,
        pid: int,
        argv: list[str],
        cwd: Path,
        ppid: int = 1,
        cgroup: str = "0::/",
        env: dict[str, str] | None = None,
        state: str = "S",
    ) -> None:
        d = self.root / str(pid)
        d.mkdir()
        (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
        (d / "cwd").symlink_to(cwd)
        (d / "environ").write_bytes(b"\0".join(f"{k}={v}".encode() for k, v in (env or {}).items()))
        rest = " ".join(["0"] * 20)
        (d / "stat").write_text(f"{pid} (x y) {state} {ppid} {rest}\n")
        (d / "cgroup").write_text(cgroup + "\n")


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[tuple[FakeProc, Path, TaskLog]]:
    home = tmp_path / "ComfyUI"
    home.mkdir()
    (home / "main.py").write_text("")
    log_path = tmp_path / "agent.log"
    log = TaskLog.open(str(log_path))
    yield FakeProc(tmp_path / "proc"), home, log
    log.close()


def test_the_process_running_that_homes_main_py_is_found_and_nothing_else(
    fake: tuple[FakeProc, Path, TaskLog], tmp_path: Path
) -> None:
    proc, home, _log = fake
    other = tmp_path / "OtherComfy"
    other.mkdir()
    (other / "main.py").write_text("")
    proc.add(100, ["python", "main.py", "--port", "8190"], home, env={"A": "1"})
    proc.add(101, ["python", str(other / "main.py")], tmp_path)  # another home
    proc.add(102, ["python", "main.py", "--quick-test-for-ci", "--cpu"], home)  # verify run
    proc.add(103, ["python", "main.py"], home, state="Z")  # dead, not yet reaped
    proc.add(104, ["vim", "main.py"], home)  # an editor is no server
    proc.add(105, ["python3", "../ComfyUI/main.py", "--listen"], tmp_path / "proc")
    found = comfyproc.find(home, proc.root)
    assert [p.pid for p in found] == [100, 105]
    first = found[0]
    assert first.env == {"A": "1"} and first.cwd == str(home) and first.port == 8190
    assert found[1].host == "127.0.0.1" and found[1].port == 8188


@pytest.mark.parametrize(
    ("argv", "host", "port"),
    [
        (["python", "main.py"], "127.0.0.1", 8188),
        (["python", "main.py", "--port", "9000", "--listen", "0.0.0.0"], "127.0.0.1", 9000),
        (["python", "main.py", "--port=7000", "--listen=10.1.2.3,::"], "10.1.2.3", 7000),
        (["python", "main.py", "--listen", "--port", "x"], "127.0.0.1", 8188),
        (["python", "main.py", "--port", "99999"], "127.0.0.1", 8188),
    ],
)
def test_where_comfyui_listens_is_read_from_its_argv(argv: list[str], host: str, port: int) -> None:
    assert (comfyproc.host_of(argv), comfyproc.port_of(argv)) == (host, port)


def test_a_supervisord_parent_is_used_with_its_own_config_and_program_name(
    fake: tuple[FakeProc, Path, TaskLog], tmp_path: Path
) -> None:
    proc, home, log = fake
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    ctl = bin_dir / "supervisorctl"
    # A stand-in supervisorctl: prints `status` as supervisor 4 does.
    ctl.write_text(
        "#!/bin/sh\n"
        'echo "$@" >> "$(dirname "$0")/calls"\n'
        'echo "other     RUNNING   pid 77, uptime 0:00:09"\n'
        'echo "comfyui   RUNNING   pid 200, uptime 0:01:02"\n'
        "exit 3\n"
    )
    ctl.chmod(0o755)
    proc.add(150, [sys.executable, str(bin_dir / "supervisord"), "-c", "conf/sv.conf"], tmp_path)
    proc.add(200, ["bash", "start.sh"], home, ppid=150)  # the program runs a script …
    proc.add(201, ["python", "main.py"], home, ppid=200)  # … that runs ComfyUI
    system = restart.System(proc=proc.root, path="")
    plan = restart.detect(home, "auto", log, Children(), system)
    assert plan is not None and plan.kind == "supervisor" and plan.service == "comfyui"
    conf = str(tmp_path / "conf" / "sv.conf")
    assert plan.argv == [str(ctl), "-c", conf, "restart", "comfyui"]
    assert (bin_dir / "calls").read_text() == f"-c {conf} status\n"


def test_systemd_is_used_only_for_a_unit_that_starts_comfyui(
    fake: tuple[FakeProc, Path, TaskLog], tmp_path: Path
) -> None:
    """Not a real systemd (none runs in this container): the cgroup a process is in,
    and what a stand-in ``systemctl show`` answers, decide."""
    proc, home, log = fake
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(
        "#!/bin/sh\n"
        'case "$*" in\n'
        '  *comfyui.service*) echo "MainPID=999"; echo "ExecStart={ path=/venv/bin/python ;'
        ' argv[]=/venv/bin/python main.py --listen ; }";;\n'
        '  *) echo "MainPID=1"; echo "ExecStart={ path=/usr/sbin/sshd ; argv[]=sshd -D ; }";;\n'
        "esac\n"
    )
    (bin_dir / "systemctl").chmod(0o755)
    run_dir = tmp_path / "run-systemd"
    run_dir.mkdir()
    system = restart.System(proc=proc.root, systemd_run_dir=run_dir, path=str(bin_dir))
    proc.add(300, ["python", "main.py"], home, cgroup="0::/system.slice/comfyui.service")
    plan = restart.detect(home, "auto", log, Children(), system)
    assert plan is not None and plan.kind == "systemd"
    assert plan.argv == [str(bin_dir / "systemctl"), "restart", "comfyui.service"]
    # A ComfyUI started from an ssh session that landed in sshd.service: never restart sshd.
    (proc.root / "300").rename(proc.root / "gone")
    proc.add(301, ["python", "main.py"], home, cgroup="0::/system.slice/sshd.service")
    plan = restart.detect(home, "auto", log, Children(), system)
    assert plan is not None and plan.kind == "process" and plan.old is not None
    # Without systemd as PID 1 a cgroup name means nothing.
    run_dir.rmdir()
    (proc.root / "301").rename(proc.root / "gone2")
    proc.add(302, ["python", "main.py"], home, cgroup="0::/system.slice/comfyui.service")
    plan = restart.detect(home, "auto", log, Children(), system)
    assert plan is not None and plan.kind == "process"


def test_user_units_and_the_unit_name_from_cgroups() -> None:
    assert restart.systemd_unit(["0::/system.slice/comfy.service"]) == ("comfy.service", False)
    user = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/comfy.service"
    assert restart.systemd_unit([user]) == ("comfy.service", True)
    assert restart.systemd_unit(["0::/user.slice/user-0.slice/session-4.scope"]) == (None, False)
    assert restart.systemd_unit(["0::/user.slice/user-0.slice/user@0.service/init.scope"]) == (
        None,
        False,
    )
    assert restart.systemd_unit(["0::/"]) == (None, False)


def test_nothing_running_means_the_command_or_an_honest_none(
    fake: tuple[FakeProc, Path, TaskLog],
) -> None:
    proc, home, log = fake
    system = restart.System(proc=proc.root, path="")
    assert restart.detect(home, "auto", log, Children(), system) is None
    plan = restart.detect(home, {"command": ["./run.sh", "--port", "9"]}, log, Children(), system)
    assert plan is not None and plan.kind == "command" and plan.argv == ["./run.sh", "--port", "9"]
    # Something runs it: found first, the command is only the fallback.
    proc.add(400, ["python", "main.py"], home)
    plan = restart.detect(home, {"command": ["./run.sh"]}, log, Children(), system)
    assert plan is not None and plan.kind == "process"


def test_program_lines_and_config_options() -> None:
    lines = ["a:x  RUNNING   pid 5, uptime 1:00", "b   STOPPED   Dec 04 08:00 PM", "c FATAL"]
    assert restart.program_for(lines, [9, 5]) == "a:x"
    assert restart.program_for(lines, [6]) is None
    assert restart.supervisord_config(["supervisord", "--configuration=/e/s.conf"], "/x") == (
        "/e/s.conf"
    )
    assert restart.supervisord_config(["supervisord", "-c/e/s.conf"], None) == "/e/s.conf"
    assert restart.supervisord_config(["supervisord", "-n"], "/x") is None


# -- the plain process end to end, with a stand-in server --------------------------


@pytest.fixture
def server_home(bare_comfy: ComfyHome) -> Iterator[ComfyHome]:
    (bare_comfy.root / "main.py").write_text(FAKE_MAIN)
    (bare_comfy.root / "mode").write_text("serve")
    try:
        yield bare_comfy
    finally:
        comfy_server.end_servers(bare_comfy.root)
        assert comfy_server.server_pids(bare_comfy.root) == {}


def start_server(home: ComfyHome, port: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ, FAKE_MARK="kept")
    log = (home.root / "first.log").open("ab")
    with log:
        proc = subprocess.Popen(
            [sys.executable, "main.py", "--port", str(port)],
            cwd=home.root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    comfy_server.wait_ready(port, 30, home.root / "first.log")
    return proc


def restart_spec(agent: Agent, home: ComfyHome, repos: Repos, **extra: object) -> dict[str, object]:
    return agent.spec(home.root, [repos.plain.url], verify=False, restart="auto", **extra)


def test_a_plain_process_comes_back_with_its_argv_cwd_and_environment(
    agent: Agent, server_home: ComfyHome, repos: Repos
) -> None:
    port = free_port()
    first = start_server(server_home, port)
    try:
        ((old_pid, old_argv),) = comfy_server.server_pids(server_home.root).items()
        spec = restart_spec(agent, server_home, repos, ready_classes=["KSampler", "plainNode", "X"])
        doc = run_spec(agent, spec, expect=1)  # X is missing: the task did not succeed
        assert doc.state == "completed" and doc.failed == 0 and not doc.succeeded
        assert doc.ready is not None and doc.ready.restarted_by == "process"
        assert doc.ready.missing == ["X"] and doc.ready.classes == 2 and doc.ready.port == port
        assert doc.error is not None and "X" in doc.error
        ((new_pid, new_argv),) = comfy_server.server_pids(server_home.root).items()
        assert new_pid != old_pid and new_argv == old_argv and doc.ready.pid == new_pid
        log = (Path(str(doc.log_file)).parent / "comfyui.log").read_text()
        assert f"fake ComfyUI {new_pid} mode serve env kept" in log  # its environment kept
        assert first.wait(timeout=10) is not None  # the old one was stopped
    finally:
        comfy_server.end_servers(server_home.root)
        first.wait(timeout=10)


def test_a_server_that_dies_on_restart_fails_the_task_with_its_log(
    agent: Agent, server_home: ComfyHome, repos: Repos
) -> None:
    first = start_server(server_home, free_port())
    try:
        (server_home.root / "mode").write_text("die")
        doc = run_spec(agent, restart_spec(agent, server_home, repos), expect=1)
        assert doc.state == "failed" and doc.error_code == "not_ready"
        assert doc.error is not None and "exited with status 3" in doc.error
        assert "boom: CUDA out of memory at start" in doc.error  # ComfyUI's own words
        assert doc.ready is not None and doc.ready.restarted_by == "process"
        assert doc.nodes[0].status == "installed"  # the install itself is not undone
    finally:
        first.wait(timeout=10)


def test_a_server_that_never_answers_times_out_with_its_log(
    agent: Agent, server_home: ComfyHome, repos: Repos
) -> None:
    first = start_server(server_home, free_port())
    try:
        (server_home.root / "mode").write_text("hang")
        started = time.monotonic()
        doc = run_spec(agent, restart_spec(agent, server_home, repos, ready_timeout=3), expect=1)
        assert time.monotonic() - started < 30
        assert doc.state == "failed" and doc.error_code == "not_ready"
        assert doc.error is not None and "did not answer" in doc.error
        assert "mode hang" in doc.error
    finally:
        first.wait(timeout=10)


def test_cancel_works_while_it_waits_for_the_server(
    agent: Agent, server_home: ComfyHome, repos: Repos
) -> None:
    first = start_server(server_home, free_port())
    try:
        (server_home.root / "mode").write_text("hang")
        spec = restart_spec(agent, server_home, repos, ready_timeout=600)
        task = agent.start(spec)["task_id"]
        deadline = time.monotonic() + 30
        while agent.json("status", "--task-id", task)["state"] != "restarting":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        started = time.monotonic()
        final = agent.json("cancel", "--task-id", task, expect=0)
        assert final["state"] == "cancelled" and time.monotonic() - started < 15
    finally:
        first.wait(timeout=10)


def test_ready_check_without_a_server_is_an_answer_not_a_failure(
    agent: Agent, bare_comfy: ComfyHome, repos: Repos
) -> None:
    spec = agent.spec(bare_comfy.root, [repos.plain.url], verify=False, ready_check=True)
    doc = run_spec(agent, spec)
    assert doc.succeeded and doc.ready is not None
    assert doc.ready.note == "no running ComfyUI found for this home" and doc.ready.classes is None


def test_the_ready_command_asks_and_refuses_bad_input(agent: Agent, server_home: ComfyHome) -> None:
    port = free_port()
    first = start_server(server_home, port)
    try:
        home = str(server_home.root)
        body = agent.json("ready", "--ui-home", home, "--classes", "-", input='["KSampler"]')
        assert body["ready"]["classes"] == 1 and body["ready"]["missing"] == []
        body = agent.json(
            "ready", "--ui-home", home, "--classes", "-", input='["KSampler", "Nope"]', expect=1
        )
        assert body["ready"]["missing"] == ["Nope"] and body["ready"]["port"] == port
        bad = agent.json("ready", "--ui-home", home, "--classes", "-", input='["a\\nb"]', expect=2)
        assert bad["field"] == "classes.0"
        bad = agent.json("ready", "--ui-home", str(server_home.root / "nope"), expect=2)
        assert bad["field"] == "ui_home"
    finally:
        comfy_server.end_servers(server_home.root)
        first.wait(timeout=10)
