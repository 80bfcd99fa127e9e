"""Unit tests of the agent's parts, with fakes only where the real part is tested elsewhere."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import git as gitmod
from agent import liveness, lock, procs, requirements
from agent.errors import Cancelled, Conflict, StepFailed
from agent.progress_file import ProgressWriter, read_progress, write_atomic
from agent.statedir import StateDir, TaskPaths
from agent.tasklog import TaskLog
from agent.worker import Installer, initial_progress
from controller.sandbox.comfy import make_comfy_home
from protocol import InstallSpec, NodeProgress, Progress
from protocol.fields import new_task_id
from tests.agent.conftest import REPO_ROOT, wait_until
from tests.support.procs import ended

pytestmark = pytest.mark.timeout(60)


def _doc(task_id: str | None = None, **changes: object) -> Progress:
    progress = Progress(
        task_id=task_id or new_task_id(),
        ui_home="/srv/ComfyUI",
        nodes=[NodeProgress(name="a", url="https://example.com/a")],
    )
    for key, value in changes.items():
        setattr(progress, key, value)
    return progress


# -- atomic writes -------------------------------------------------------------------------


def test_failed_write_keeps_the_previous_document(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "progress.json"
    good = _doc()
    write_atomic(path, good.to_json())

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    changed = _doc(good.task_id, state="cloning")
    with pytest.raises(OSError):
        write_atomic(path, changed.to_json())
    monkeypatch.undo()
    assert read_progress(path) == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["progress.json"]  # no temp left


def test_writer_survives_a_failed_heartbeat_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "progress.json"
    writer = ProgressWriter(path, _doc())
    with writer.change() as doc:
        doc.move_to("cloning")
    real_replace = Path.replace
    failed = threading.Event()
    beats_after_failure = []

    def flaky_replace(self: Path, target: Path) -> Path:
        # Only the heartbeat thread's writes are broken, and only its first one.
        if threading.current_thread().name == "heartbeat":
            if not failed.is_set():
                failed.set()
                raise OSError(5, "I/O error")
            beats_after_failure.append(1)
        return real_replace(self, target)

    monkeypatch.setattr(Path, "replace", flaky_replace)
    writer.start_heartbeat(interval=0.05)
    try:
        assert failed.wait(30), "the heartbeat never wrote"
        # The thread lives on: later beats write again, and changes still land.
        wait_until(lambda: beats_after_failure, 30, "a heartbeat write after the failure")
        with writer.change() as doc:
            doc.nodes[0].status = "cloning"
        assert read_progress(path).nodes[0].status == "cloning"  # type: ignore[union-attr]
        assert writer.write_errors == 1
        assert writer.finish("completed", exit_code=0)
    finally:
        writer.stop_heartbeat()
    final = read_progress(path)
    assert final is not None and final.state == "completed"


def test_a_writer_killed_mid_write_never_leaves_a_partial_document(tmp_path: Path) -> None:
    """SIGKILL a process that rewrites a large document in a loop; the file always parses."""
    path = tmp_path / "progress.json"
    script = f"""
import sys
sys.path.insert(0, {str(REPO_ROOT)!r})
from agent.progress_file import write_atomic
from protocol import NodeProgress, Progress
from pathlib import Path
doc = Progress(task_id={new_task_id()!r}, ui_home="/srv/ComfyUI",
               nodes=[NodeProgress(name="n%d" % i, url="https://e.com/%d" % i, error="x" * 2000)
                      for i in range(300)])
path = Path({str(path)!r})
write_atomic(path, doc.to_json())
print("ready", flush=True)
i = 0
while True:
    i += 1
    doc.current_status = "write %d" % i
    write_atomic(path, doc.to_json())
"""
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        with ended(proc):  # the writer is endless: killed even when an assert fails
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            reads = 0
            deadline = time.monotonic() + 0.5
            while time.monotonic() < deadline:
                assert len(Progress.from_json(path.read_text()).nodes) == 300
                reads += 1
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        assert reads > 0
        assert len(Progress.from_json(path.read_text()).nodes) == 300


def test_final_document_is_written_once_and_nothing_after(tmp_path: Path) -> None:
    path = tmp_path / "progress.json"
    writer = ProgressWriter(path, _doc())
    writer.start_heartbeat(interval=0.05)
    assert writer.finish("cancelled", exit_code=6, error="stop", error_code="cancelled")
    final_text = path.read_text()
    assert not writer.finish("completed", exit_code=0)
    with pytest.raises(RuntimeError), writer.change():
        pass
    time.sleep(0.2)  # several heartbeat intervals: it must have stopped writing
    assert path.read_text() == final_text
    final = Progress.from_json(final_text)
    assert final.state == "cancelled" and final.nodes[0].status == "cancelled"
    assert final.finished_at and final.failed == 1 and final.processed == 1
    writer.stop_heartbeat()


def test_heartbeat_advances_updated_at(tmp_path: Path) -> None:
    path = tmp_path / "progress.json"
    writer = ProgressWriter(path, _doc())
    with writer.change():
        pass
    first = Progress.from_json(path.read_text()).updated_at
    writer.start_heartbeat(interval=0.05)
    try:
        wait_until(
            lambda: Progress.from_json(path.read_text()).updated_at != first, 5, "heartbeat write"
        )
    finally:
        writer.finish("completed", exit_code=0)
        writer.stop_heartbeat()


# -- lock ------------------------------------------------------------------------------------


def test_lock_is_exclusive_per_real_path_and_names_the_holder(tmp_path: Path) -> None:
    home = tmp_path / "ComfyUI"
    home.mkdir()
    alias = tmp_path / "alias"
    alias.symlink_to(home)
    other = tmp_path / "Other"
    other.mkdir()
    first, second = new_task_id(), new_task_id()
    fd = lock.acquire(tmp_path, str(home), first)
    try:
        with pytest.raises(Conflict) as info:
            lock.acquire(tmp_path, str(alias) + "/", second)
        assert info.value.holder == first
        assert info.value.body()["task_id"] == first
        other_fd = lock.acquire(tmp_path, str(other), second)
        os.close(other_fd)
    finally:
        os.close(fd)
    again = lock.acquire(tmp_path, str(home), second)
    os.close(again)
    assert lock.holder(tmp_path, str(home)) == second


# -- liveness ------------------------------------------------------------------------------


def test_liveness_checks_pid_cmdline_and_boot_id() -> None:
    task = new_task_id()
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", task])
    try:
        boot = liveness.boot_id()
        # Right after fork the child still has our argv: wait for its exec.
        wait_until(lambda: liveness.worker_alive(proc.pid, task, boot), 10, "child exec")
        # The same pid running something else (pid reuse) is not our worker.
        assert not liveness.worker_alive(proc.pid, new_task_id(), boot)
        # Another boot: whatever has this pid now is not our worker.
        if boot is not None:
            assert not liveness.worker_alive(proc.pid, task, "00000000-another-boot")
        assert not liveness.worker_alive(None, task, boot)
    finally:
        proc.kill()
        proc.wait()
    assert not liveness.worker_alive(proc.pid, task, liveness.boot_id())


def test_descendants_finds_the_whole_tree() -> None:
    proc = subprocess.Popen(
        ["bash", "-c", "sleep 30 & (sleep 30 & wait) & wait"], start_new_session=True
    )
    try:

        def sleeps() -> int:
            argvs = [
                Path(f"/proc/{pid}/cmdline").read_bytes() for pid in liveness.descendants(proc.pid)
            ]
            return sum(1 for argv in argvs if argv.startswith(b"sleep\0"))

        # Both sleeps, the grandchild in the subshell too (the wait fails the test).
        wait_until(lambda: sleeps() == 2 and len(liveness.descendants(proc.pid)) >= 3, 10, "tree")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# -- processes -------------------------------------------------------------------------------


#: Logs the tests opened, closed after each test whatever happened (an unclosed
#: file is a ResourceWarning, and warnings are errors).
_OPEN_LOGS: list[TaskLog] = []


@pytest.fixture(autouse=True)
def _close_logs() -> Iterator[None]:
    yield
    while _OPEN_LOGS:
        _OPEN_LOGS.pop().close()


def _open_log(path: Path) -> TaskLog:
    _OPEN_LOGS.append(TaskLog.open(str(path)))
    return _OPEN_LOGS[-1]


def _log(tmp_path: Path) -> tuple[TaskLog, Path]:
    path = tmp_path / "agent.log"
    return _open_log(path), path


def test_run_streams_prefixed_output_and_keeps_the_tail(tmp_path: Path) -> None:
    log, path = _log(tmp_path)
    result = procs.run(
        ["bash", "-c", "for i in $(seq 1 30); do echo line $i; done; echo oops >&2; exit 3"],
        log=log,
        prefix="node-x",
        children=procs.Children(),
        timeout=30,
    )
    log.close()
    assert result.returncode == 3 and not result.ok
    assert result.tail[-1] == "oops" and len(result.tail) == procs.TAIL_LINES
    text = path.read_text()
    assert "[node-x] $ bash -c 'for i in" in text
    assert "[node-x] line 17" in text and "[node-x] oops" in text
    assert "[node-x] exit 3 after" in text
    assert result.describe("thing").startswith("thing failed with exit code 3:\n")


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    log, _ = _log(tmp_path)
    pidfile = tmp_path / "grandchild"
    started = time.monotonic()
    result = procs.run(
        ["bash", "-c", f"sleep 60 & echo $! > {pidfile}; wait"],
        log=log,
        prefix=None,
        children=procs.Children(),
        timeout=1,
    )
    assert time.monotonic() - started < 10
    assert result.timed_out and "timed out after" in result.describe("x")
    grandchild = int(pidfile.read_text())
    wait_until(
        lambda: (
            not Path(f"/proc/{grandchild}").exists()
            or "Z" in Path(f"/proc/{grandchild}/stat").read_text().split(")")[1][:3]
        ),
        5,
        "grandchild killed",
    )


def test_cancel_kills_running_children_and_refuses_new_ones(tmp_path: Path) -> None:
    log, _ = _log(tmp_path)
    children = procs.Children()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            procs.run(["sleep", "60"], log=log, prefix=None, children=children, timeout=120)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    wait_until(lambda: children._procs, 10, "child running")
    children.cancel()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], Cancelled)
    with pytest.raises(Cancelled):
        procs.run(["true"], log=log, prefix=None, children=children, timeout=10)


def test_git_never_prompts() -> None:
    env = gitmod.git_env({"GIT_ASKPASS": "/usr/bin/ksshaskpass", "SSH_ASKPASS": "x", "HOME": "/"})
    assert env["GIT_TERMINAL_PROMPT"] == "0"
    assert "GIT_ASKPASS" not in env and "SSH_ASKPASS" not in env
    assert "BatchMode=yes" in env["GIT_SSH_COMMAND"]
    own = gitmod.git_env({"GIT_SSH_COMMAND": "ssh -i /keys/deploy", "HOME": "/"})
    assert own["GIT_SSH_COMMAND"].startswith("ssh -i /keys/deploy -o BatchMode=yes")


# -- clone retries ---------------------------------------------------------------------------


def test_transient_clone_failures_are_retried_with_backoff(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log, _ = _log(tmp_path)
    children = procs.Children()
    naps: list[float] = []
    monkeypatch.setattr(children, "sleep", naps.append)
    git = gitmod.Git(log, children, timeout=30)
    attempts: list[Path] = []

    def flaky(
        url: str, ref: str | None, tmp: Path, dest: Path, prefix: str, shallow: bool = True
    ) -> str:
        attempts.append(tmp)
        assert tmp.is_dir() and tmp.parent == dest.parent
        if len(attempts) < 3:
            raise StepFailed("git clone failed with exit code 128:\nConnection reset by peer")
        tmp.rename(dest)
        return "a" * 40

    monkeypatch.setattr(git, "_clone_and_place", flaky)
    dest = tmp_path / "custom_nodes" / "node"
    dest.parent.mkdir()
    assert git.clone("git://127.0.0.1/x", None, dest, "node", ".nodeferry-1234abcd-") == "a" * 40
    assert len(attempts) == 3 and naps == list(gitmod.BACKOFF_SECONDS)
    assert os.listdir(dest.parent) == ["node"]  # the failed attempts' temp dirs are gone


def test_clone_gives_up_after_three_tries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log, _ = _log(tmp_path)
    children = procs.Children()
    monkeypatch.setattr(children, "sleep", lambda s: None)
    git = gitmod.Git(log, children, timeout=30)
    calls = []

    def always(*args: object) -> str:
        calls.append(args)
        raise StepFailed("git clone failed: Connection timed out")

    monkeypatch.setattr(git, "_clone_and_place", always)
    (tmp_path / "cn").mkdir()
    with pytest.raises(StepFailed, match="Connection timed out"):
        git.clone("git://127.0.0.1/x", None, tmp_path / "cn" / "n", "n", ".nodeferry-x-")
    assert len(calls) == gitmod.CLONE_TRIES
    assert os.listdir(tmp_path / "cn") == []


# -- parallel clones ---------------------------------------------------------------------------


def test_clones_run_in_parallel_up_to_clone_jobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = make_comfy_home(tmp_path / "ComfyUI", with_venv=False)
    state = StateDir(tmp_path / "state").ensure()
    nodes = [f"https://example.com/n{i}" for i in range(6)]
    spec = InstallSpec.from_dict(
        {
            "task_id": new_task_id(),
            "ui_home": str(home.root),
            "nodes": nodes,
            "jobs": 1,  # caps CPU-bound work, not clones
            "clone_jobs": 3,
            # The fake clones are empty folders: nothing to import.
            "verify": False,
        }
    )
    paths = state.create_task(spec.task_id)
    writer = ProgressWriter(paths.progress, initial_progress(spec, paths))
    log = _open_log(paths.log)
    installer = Installer(spec, paths, writer, log)
    lock_ = threading.Lock()
    running = {"now": 0, "max": 0}
    # All three of a batch must be inside clone() at once to pass the barrier.
    barrier = threading.Barrier(3, timeout=20)

    def fake_clone(url: str, ref: str | None, dest: Path, prefix: str, tmp_prefix: str) -> str:
        with lock_:
            running["now"] += 1
            running["max"] = max(running["max"], running["now"])
        barrier.wait()
        dest.mkdir()
        with lock_:
            running["now"] -= 1
        return "b" * 40

    monkeypatch.setattr(installer.git, "clone", fake_clone)
    assert installer.run() == 0
    assert running["max"] == 3
    final = read_progress(paths.progress)
    assert final is not None and final.successful == 6 and final.state == "completed"


# -- interpreter discovery and installer commands ---------------------------------------------


def test_interpreter_discovery_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "ComfyUI"
    for venv in ("venv", ".venv"):
        (home / venv / "bin").mkdir(parents=True)
        exe = home / venv / "bin" / "python"
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
    found, why = requirements.find_interpreter(sys.executable, home)
    assert found == sys.executable and "spec" in why
    found, why = requirements.find_interpreter(None, home)
    assert found == str(home / "venv" / "bin" / "python") and "venv" in why
    (home / "venv" / "bin" / "python").unlink()
    found, _ = requirements.find_interpreter(None, home)
    assert found == str(home / ".venv" / "bin" / "python")
    (home / ".venv" / "bin" / "python").unlink()
    vast = tmp_path / "venv-main"
    (vast / "bin").mkdir(parents=True)
    (vast / "bin" / "python").write_text("#!/bin/sh\n")
    (vast / "bin" / "python").chmod(0o755)
    candidates = list(requirements.VENV_CANDIDATES)
    candidates[2] = (str(vast), "VastAI's ComfyUI image venv")
    monkeypatch.setattr(requirements, "VENV_CANDIDATES", tuple(candidates))
    found, why = requirements.find_interpreter(None, home)
    assert found == str(vast / "bin" / "python") and "VastAI" in why
    (vast / "bin" / "python").unlink()
    found, why = requirements.find_interpreter(None, home)
    assert found is not None and found.endswith("python3") and "PATH" in why
    found, why = requirements.find_interpreter("/nonexistent/python", home)
    assert found is None and "does not exist" in why


def test_installer_commands_for_uv_and_pip(tmp_path: Path) -> None:
    reqs = [tmp_path / "a.txt", tmp_path / "b.txt"]
    args = [
        "--index-url",
        "https://mirror.example/simple",
        "--trusted-host",
        "mirror.example",
        "--no-cache-dir",
        "--pre",
        "--prefer-binary",
    ]
    uv = requirements.install_command("uv", "/py", reqs, tmp_path / "c.txt", args)
    assert uv == [
        "uv",
        "pip",
        "install",
        "--python",
        "/py",
        "--index-url",
        "https://mirror.example/simple",
        "--allow-insecure-host",
        "mirror.example",
        "--no-cache",
        "--prerelease=allow",
        "-c",
        str(tmp_path / "c.txt"),
        "-r",
        str(reqs[0]),
        "-r",
        str(reqs[1]),
    ]
    pip = requirements.install_command("pip", "/py", reqs[:1], None, args)
    assert pip == ["/py", "-m", "pip", "install", *args, "-r", str(reqs[0])]


def test_installed_versions_reads_the_target_interpreter(venv_template: Path) -> None:
    python = str(venv_template / "bin" / "python")
    assert requirements.installed_versions(python, requirements.TORCH_FAMILY) == {"torch": "1.0.0"}
    assert requirements.installed_versions("/nonexistent/python", ("torch",)) == {}


# -- state dir --------------------------------------------------------------------------------


def test_state_dir_is_private_and_checks_task_ids(tmp_path: Path) -> None:
    root = tmp_path / "state"
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    state = StateDir(root).ensure()
    assert root.stat().st_mode & 0o777 == 0o700
    assert (root / "tasks").stat().st_mode & 0o777 == 0o700
    task = new_task_id()
    paths = state.task(task)
    assert isinstance(paths, TaskPaths) and paths.dir == root / "tasks" / task
    from agent.errors import InvalidInput

    for bad in ("../x", task.upper() + "/..", "", task + "x"):
        with pytest.raises(InvalidInput):
            state.task(bad)


def test_statedir_default_follows_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NODEFERRY_STATE_DIR", str(tmp_path / "s"))
    assert StateDir().root == tmp_path / "s"
    monkeypatch.delenv("NODEFERRY_STATE_DIR")
    assert StateDir().root == Path.home() / ".nodeferry"


def test_ctrl_c_on_install_cancels_cleanly(tmp_path: Path, venv_template: Path) -> None:
    """SIGINT to the foreground install (as a terminal's Ctrl-C) ends in `cancelled`, exit 6."""
    from tests.agent.conftest import Agent

    home = make_comfy_home(tmp_path / "ComfyUI", venv_template=venv_template)
    node = home.custom_nodes.parent / "src-node"
    node.mkdir()
    (node / "install.py").write_text(
        "import time, pathlib; pathlib.Path('started').write_text('1'); time.sleep(60)\n"
    )
    from controller.sandbox.gitserver import git

    git("init", "-q", str(node))
    git("add", "-A", cwd=node)
    git("commit", "-q", "-m", "x", cwd=node)
    agent = Agent(tmp_path / "state", tmp_path)
    proc = subprocess.Popen(
        agent.argv("install", "--allow-file-urls", "--ui-home", str(home.root), f"file://{node}"),
        cwd=REPO_ROOT,
        env=agent.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    with ended(proc):
        wait_until((home.custom_nodes / "src-node" / "started").exists, 60, "install.py started")
        os.killpg(proc.pid, signal.SIGINT)  # the terminal sends it to the whole foreground group
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 6, (out, err)
    assert "cancelled: 1 node(s), 0 installed, 0 skipped, 1 failed" in out
    task_dir = next((tmp_path / "state" / "tasks").iterdir())
    doc = json.loads((task_dir / "progress.json").read_text())
    assert doc["state"] == "cancelled" and doc["nodes"][0]["status"] == "cancelled"


def test_submodule_failure_retries_without_shallow_submodules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log, _ = _log(tmp_path)
    children = procs.Children()
    monkeypatch.setattr(children, "sleep", lambda s: None)
    git = gitmod.Git(log, children, timeout=30)
    seen: list[bool] = []

    def picky(
        url: str, ref: str | None, tmp: Path, dest: Path, prefix: str, shallow: bool = True
    ) -> str:
        seen.append(shallow)
        if shallow:
            raise StepFailed("fatal: Fetched in submodule path 'x', but it did not contain abc")
        tmp.rename(dest)
        return "c" * 40

    monkeypatch.setattr(git, "_clone_and_place", picky)
    (tmp_path / "cn").mkdir()
    assert git.clone("git://127.0.0.1/x", None, tmp_path / "cn" / "n", "n", ".nodeferry-x-")
    assert seen == [True, False]


def test_an_unexpected_exception_still_writes_a_final_document(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = make_comfy_home(tmp_path / "ComfyUI", with_venv=False)
    state = StateDir(tmp_path / "state").ensure()
    spec = InstallSpec.from_dict(
        {"task_id": new_task_id(), "ui_home": str(home.root), "nodes": ["https://e.com/a"]}
    )
    paths = state.create_task(spec.task_id)
    writer = ProgressWriter(paths.progress, initial_progress(spec, paths))
    installer = Installer(spec, paths, writer, _open_log(paths.log))

    def boom() -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(installer, "_clone_all", boom)
    assert installer.run() == 5
    final = read_progress(paths.progress)
    assert final is not None and final.state == "failed"
    assert final.error_code == "agent_crashed" and final.exit_code == 5
    assert final.error == "the agent failed: RuntimeError: disk on fire"
    assert final.nodes[0].status == "failed" and final.finished_at
    assert "Traceback" in paths.log.read_text()


def test_pip_config_becomes_uv_options(
    venv_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    python = str(venv_template / "bin" / "python")
    conf = tmp_path / "pip.conf"
    conf.write_text(
        "[global]\nindex-url = https://mirror.example/simple\n"
        "extra-index-url = https://a.example/simple https://b.example/simple\n"
        "trusted-host = mirror.example\n[install]\nfind-links = /srv/wheels\n"
    )
    for name in list(os.environ):
        if name.startswith("PIP_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    monkeypatch.setenv("PIP_INDEX_URL", "https://env.example/simple")  # env beats the file
    args = requirements.pip_config_as_args(python, [])
    assert args == [
        "--extra-index-url",
        "https://a.example/simple",
        "--extra-index-url",
        "https://b.example/simple",
        "--find-links",
        "/srv/wheels",
        "--index-url",
        "https://env.example/simple",
        "--trusted-host",
        "mirror.example",
    ]
    # The spec's own options win over pip's configuration.
    given = ["-i", "https://spec.example/simple", "--find-links=/x"]
    assert requirements.pip_config_as_args(python, given) == [
        "--extra-index-url",
        "https://a.example/simple",
        "--extra-index-url",
        "https://b.example/simple",
        "--trusted-host",
        "mirror.example",
    ]


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("https://github.com/u/r", "https://github.com/u/r.git", True),
        ("https://github.com/u/r", "https://github.com/U/R/", True),
        ("https://github.com/u/r", "git@github.com:u/r.git", True),
        ("https://github.com/u/r", "ssh://git@github.com:22/u/r.git", True),
        ("git://127.0.0.1:9418/r", "git://127.0.0.1:1234/r", True),
        ("file:///srv/r.git", "/srv/r", True),
        ("https://github.com/u/r", "https://github.com/u/r2", False),
        ("https://github.com/u/r", "https://gitlab.com/u/r", False),
        ("https://github.com/u/r", "https://github.com/other/r", False),
    ],
)
def test_same_origin(a: str, b: str, same: bool) -> None:
    assert gitmod.same_origin(a, b) is same


def test_log_hides_credentials_in_urls(tmp_path: Path) -> None:
    log, path = _log(tmp_path)
    log.command("n", ["git", "clone", "https://user:s3cret@example.com/r", "/x"], None)
    log.line("n", "fatal: unable to access 'https://ghp_token@github.com/u/r/'")
    log.close()
    text = path.read_text()
    assert "s3cret" not in text and "ghp_token" not in text
    assert "https://***@example.com/r" in text and "https://***@github.com/u/r/" in text


@pytest.mark.parametrize(
    ("step", "message", "code"),
    [
        ("clone", "git clone failed with exit code 128:\nfatal: unable to connect to "
         "127.0.0.1:\n127.0.0.1[0: 127.0.0.1]: errno=Connection refused", "network"),
        ("clone", "git clone failed with exit code 128:\nfatal: remote error: access denied "
         "or repository not exported: /nope", "repo_not_found"),
        ("clone", "git clone failed with exit code 128:\nfatal: Remote branch x not found "
         "in upstream origin", "unknown_ref"),
        ("clone", "git clone timed out after 300s", "timeout"),
        ("clone", "/x/custom_nodes/a exists but is not a git clone; left it untouched",
         "node_dir_conflict"),
        ("requirements", "installing requirements failed with exit code 1:\nERROR: "
         "ResolutionImpossible", "resolver_conflict"),
        ("requirements", "installing requirements failed with exit code 1:\nConnectionError: "
         "Max retries exceeded", "network"),
        ("install_script", "install.py failed with exit code 1:\nboom", "install_script_failed"),
        ("other", "PermissionError: custom_nodes", "failed"),
    ],
)  # fmt: skip
def test_node_failures_are_classified_for_retries(step: str, message: str, code: str) -> None:
    from agent import failures
    from protocol import NODE_ERROR_CODES

    assert failures.classify(step, message) == code
    assert code in NODE_ERROR_CODES


def test_lowering_priority_reaches_the_children() -> None:
    script = (
        "import os, subprocess, sys\n"
        "from agent import priority\n"
        "before = os.getpriority(os.PRIO_PROCESS, 0)\n"
        "print(before, priority.lower(), flush=True)\n"
        "child = subprocess.run([sys.executable, '-c', "
        "'import os; print(os.getpriority(os.PRIO_PROCESS, 0))'], "
        "capture_output=True, text=True, check=True)\n"
        "print(child.stdout.strip())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        timeout=30,
    ).stdout.splitlines()
    before = int(out[0].split()[0])
    assert int(out[1]) == min(19, before + 10)
    assert "io best-effort/7" in out[0] or "io priority unchanged" in out[0]
