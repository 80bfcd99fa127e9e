"""The install itself: clone every node, resolve requirements once, run install.py files.

Runs in the worker process (detached for ``start``, a child for ``run`` and
``install``). Every change is written to the progress document at once; the
final document is always written, on success, failure, an exception or a
signal.
"""

import concurrent.futures
import contextlib
import os
import shlex
import shutil
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import List, Optional

from agent import git as gitmod
from agent import liveness, procs, requirements
from agent.errors import Cancelled, StepFailed
from agent.progress_file import ProgressWriter
from agent.statedir import TaskPaths
from agent.tasklog import TaskLog
from protocol import ExitCode, InstallSpec, NodeProgress, NodeSpec, Progress, utc_now


@dataclass
class Timeouts:
    """Seconds each kind of command may take. ``NODEFERRY_AGENT_<NAME>_TIMEOUT`` overrides."""

    git: float = 600.0
    requirements: float = 1800.0
    install_script: float = 900.0

    @classmethod
    def from_env(cls) -> "Timeouts":
        values = cls()
        for name in ("git", "requirements", "install_script"):
            raw = os.environ.get(f"NODEFERRY_AGENT_{name.upper()}_TIMEOUT")
            if raw:
                with contextlib.suppress(ValueError):
                    setattr(values, name, max(1.0, float(raw)))
        return values


def initial_progress(spec: InstallSpec, paths: TaskPaths) -> Progress:
    progress = Progress(
        task_id=spec.task_id,
        ui_home=spec.ui_home,
        pid=os.getpid(),
        boot_id=liveness.boot_id(),
        log_file=str(paths.log),
        nodes=[NodeProgress(name=n.dir_name, url=n.url, ref=n.ref) for n in spec.nodes],
    )
    progress.recount()
    return progress


class Installer:
    def __init__(
        self,
        spec: InstallSpec,
        paths: TaskPaths,
        writer: ProgressWriter,
        log: TaskLog,
        timeouts: Optional[Timeouts] = None,
    ) -> None:
        self.spec = spec
        self.paths = paths
        self.writer = writer
        self.log = log
        self.timeouts = timeouts or Timeouts.from_env()
        self.children = procs.Children()
        self.git = gitmod.Git(log, self.children, self.timeouts.git)
        self.ui_home = Path(spec.ui_home).expanduser()
        self.custom_nodes = self.ui_home / "custom_nodes"
        self.tmp_prefix = gitmod.temp_prefix(spec.task_id)
        # Nodes whose files changed in this run: they get requirements and install.py.
        self.fresh: List[int] = []
        self.python: Optional[str] = None

    # -- entry point ---------------------------------------------------------------

    def run(self) -> int:
        """Install everything and write the final document; returns the exit code."""
        started = time.monotonic()
        try:
            self._install()
        except Cancelled:
            self.log.line(None, "cancelled: stopping")
            self._stop_stragglers()
            self._sweep_temp_dirs()
            self.writer.finish(
                "cancelled",
                exit_code=ExitCode.CANCELLED,
                error="the install was cancelled",
                error_code="cancelled",
            )
            return int(ExitCode.CANCELLED)
        except Exception as exc:  # the final document must say what killed us
            self.log.line(None, "internal error:\n" + traceback.format_exc())
            self._sweep_temp_dirs()
            self.writer.finish(
                "failed",
                exit_code=ExitCode.INTERNAL,
                error=f"the agent failed: {type(exc).__name__}: {exc}",
                error_code="agent_crashed",
                node_status_for_unfinished="failed",
            )
            return int(ExitCode.INTERNAL)
        doc = self.writer.progress
        code = ExitCode.OK if doc.failed == 0 else ExitCode.INSTALL_FAILED
        self.log.line(
            None,
            f"done in {time.monotonic() - started:.1f}s: {doc.successful} installed, "
            f"{doc.skipped} skipped, {doc.failed} failed",
        )
        self.writer.finish("completed", exit_code=code)
        return int(code)

    def cancel(self) -> None:
        """Stop every child now (called on SIGTERM/SIGINT/SIGHUP); the main flow unwinds."""
        self.children.cancel()

    # -- the steps -----------------------------------------------------------------

    def _install(self) -> None:
        self.log.line(None, f"installing {len(self.spec.nodes)} node(s) into {self.ui_home}")
        self.custom_nodes.mkdir(exist_ok=True)
        with self.writer.change() as doc:
            doc.move_to("cloning")
            doc.current_status = "cloning"
        self._clone_all()
        self.children.check()
        self.fresh.sort()
        self._install_requirements()
        self.children.check()
        self._run_install_scripts()

    def _node(self, index: int) -> NodeProgress:
        return self.writer.progress.nodes[index]

    def _set(
        self, index: int, status: str, *, stage: Optional[str] = None, **changes: object
    ) -> None:
        with self.writer.change() as doc:
            if stage is not None:
                doc.move_to(stage)
            node = doc.nodes[index]
            node.status = status
            for key, value in changes.items():
                setattr(node, key, value)
            if node.started_at is None:
                node.started_at = utc_now()
            if node.is_final:
                node.finished_at = utc_now()
            doc.current_node = node.name
            doc.current_status = status

    def _fail(self, index: int, message: str) -> None:
        self.log.line(self._node(index).name, "FAILED: " + message)
        self._set(index, "failed", error=message)

    # clone ----------------------------------------------------------------------------

    def _clone_all(self) -> None:
        pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.spec.jobs, thread_name_prefix="clone"
        )
        try:
            futures = [
                pool.submit(self._prepare_node, i, node) for i, node in enumerate(self.spec.nodes)
            ]
            pending = set(futures)
            # Short waits keep the main thread responsive to signals.
            while pending:
                _done, pending = concurrent.futures.wait(pending, timeout=0.2)
            for future in futures:
                future.result()  # re-raises Cancelled or a bug
        finally:
            pool.shutdown(wait=True)

    def _prepare_node(self, index: int, node: NodeSpec) -> None:
        name = node.dir_name
        dest = self.custom_nodes / name
        self.children.check()
        try:
            if dest.exists() or dest.is_symlink():
                self._existing_node(index, node, dest)
                return
            self._set(index, "cloning")
            sha = self.git.clone(node.url, node.ref, dest, name, self.tmp_prefix)
            self.log.line(name, f"cloned {sha}")
            self._set(index, "cloned", commit=sha)
            self.fresh.append(index)
        except StepFailed as exc:
            self._fail(index, str(exc))
        except OSError as exc:  # e.g. custom_nodes not writable: this node fails, not all
            self._fail(index, f"{type(exc).__name__}: {exc}")

    def _existing_node(self, index: int, node: NodeSpec, dest: Path) -> None:
        name = node.dir_name
        if dest.is_symlink() or not dest.is_dir():
            raise StepFailed(f"{dest} exists and is not a directory; left it untouched")
        origin = self.git.origin_of(dest, name)
        if origin is None:
            raise StepFailed(
                f"{dest} exists but is not a git clone; left it untouched "
                "(remove it or give the node another 'name')"
            )
        if not gitmod.same_origin(origin, node.url):
            raise StepFailed(
                f"{dest} is a clone of {origin}, not {node.url}; left it untouched "
                "(remove it or give the node another 'name')"
            )
        if not self.spec.update:
            sha = self.git.head(dest, name)
            self.log.line(name, f"already installed at {sha}; skipped (update not requested)")
            self._set(index, "skipped", commit=sha)
            return
        self._set(index, "cloning")
        sha = self.git.update(dest, node.ref, name)
        self.log.line(name, f"updated to {sha}")
        self._set(index, "cloned", commit=sha)
        self.fresh.append(index)

    # requirements -----------------------------------------------------------------------

    def _install_requirements(self) -> None:
        wanting = [i for i in self.fresh if self._requirements_file(i).is_file()]
        python, why = requirements.find_interpreter(self.spec.python, self.ui_home)
        self.python = python
        self.log.line(None, f"ComfyUI's interpreter: {python or 'none'} ({why})")
        if not wanting:
            return
        with self.writer.change() as doc:
            doc.move_to("installing_requirements")
            doc.requirements_status = "running"
            doc.current_node = None
            doc.current_status = "installing requirements"
            for i in wanting:
                doc.nodes[i].requirements_status = "pending"
        if python is None:
            for i in wanting:
                self._requirements_failed(i, f"cannot install requirements: {why}")
            self._finish_requirements()
            return
        pins = requirements.installed_versions(python, requirements.TORCH_FAMILY)
        requirements.write_constraints(self.paths.constraints, pins)
        pinned = ", ".join(f"{k}=={v}" for k, v in sorted(pins.items())) or "nothing installed"
        self.log.line(None, f"torch family pinned: {pinned}")
        installer = requirements.choose_installer(python)
        self.log.line(None, f"installing requirements with {installer}")
        pip_args = list(self.spec.pip_args)
        if installer == "uv":
            from_pip = requirements.pip_config_as_args(python, pip_args)
            if from_pip:
                self.log.line(None, "uv gets pip's configured sources: " + shlex.join(from_pip))
            pip_args += from_pip
        for i in wanting:
            self._set_requirements(i, "running")
        argv = requirements.install_command(
            installer,
            python,
            [self._requirements_file(i) for i in wanting],
            self.paths.constraints,
            pip_args,
        )
        result = requirements.run_install(
            argv,
            log=self.log,
            prefix="requirements",
            children=self.children,
            timeout=self.timeouts.requirements,
        )
        if result.ok:
            for i in wanting:
                self._set_requirements(i, "done")
        elif len(wanting) == 1:
            self._requirements_failed(wanting[0], result.describe("installing requirements"))
        else:
            self.log.line(None, "the batched install failed; retrying node by node")
            for i in wanting:
                name = self._node(i).name
                argv = requirements.install_command(
                    installer,
                    python,
                    [self._requirements_file(i)],
                    self.paths.constraints,
                    pip_args,
                )
                single = requirements.run_install(
                    argv,
                    log=self.log,
                    prefix=name,
                    children=self.children,
                    timeout=self.timeouts.requirements,
                )
                if single.ok:
                    self._set_requirements(i, "done")
                else:
                    self._requirements_failed(i, single.describe("installing requirements"))
        self._finish_requirements()

    def _requirements_file(self, index: int) -> Path:
        return self.custom_nodes / self._node(index).name / "requirements.txt"

    def _set_requirements(self, index: int, status: str) -> None:
        # A node stays "installing_requirements" until its install.py step starts.
        self._set(index, "installing_requirements", requirements_status=status)

    def _requirements_failed(self, index: int, message: str) -> None:
        with self.writer.change() as doc:
            doc.nodes[index].requirements_status = "failed"
        self._fail(index, message)

    def _finish_requirements(self) -> None:
        with self.writer.change() as doc:
            failed = any(n.requirements_status == "failed" for n in doc.nodes)
            doc.requirements_status = "failed" if failed else "done"

    # install.py -------------------------------------------------------------------------

    def _run_install_scripts(self) -> None:
        todo = [i for i in self.fresh if not self._node(i).is_final]
        scripts = [
            i for i in todo if (self.custom_nodes / self._node(i).name / "install.py").is_file()
        ]
        # Nodes without install.py are done now: settling them first means that once
        # the task reads running_install_scripts, current_node names a script's node.
        for i in todo:
            if i not in scripts:
                self._set(i, "installed")
                self.log.line(self._node(i).name, "installed")
        for n, i in enumerate(scripts):
            self.children.check()
            name = self._node(i).name
            # The state and the node it is busy with change in one document write,
            # so no reader sees the new state with the previous node.
            stage = "running_install_scripts" if n == 0 else None
            python = self.python
            if python is None:
                if stage is not None:
                    with self.writer.change() as doc:
                        doc.move_to(stage)
                self._fail(i, "cannot run install.py: no Python interpreter found")
                continue
            self._set(i, "running_install_script", stage=stage)
            result = procs.run(
                [python, "install.py"],
                log=self.log,
                prefix=name,
                children=self.children,
                timeout=self.timeouts.install_script,
                cwd=str(self.custom_nodes / name),
                env=requirements.pip_env(),
            )
            if not result.ok:
                self._fail(i, result.describe("install.py"))
                continue
            self._set(i, "installed")
            self.log.line(name, "installed")

    # cleanup ----------------------------------------------------------------------------

    def _stop_stragglers(self) -> None:
        # Children's groups are already killed; this catches what left its group.
        stopped = procs.kill_task_processes(self.spec.task_id)
        if stopped:
            self.log.line(None, f"killed leftover processes: {stopped}")

    def _sweep_temp_dirs(self) -> None:
        sweep_temp_dirs(self.custom_nodes, self.tmp_prefix)


def sweep_temp_dirs(custom_nodes: Path, prefix: str) -> List[str]:
    """Remove this task's half-made clones; returns what was removed."""
    removed: List[str] = []
    try:
        entries = list(custom_nodes.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if entry.name.startswith(prefix) and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
    return removed


def _install_signal_handlers(installer: Installer, log: TaskLog) -> None:
    """SIGTERM/SIGINT/SIGHUP cancel the install.

    The handler itself only writes the signal number to a pipe: a Python signal
    handler runs between two bytecodes of the main thread, which may hold the
    very lock (the log's, the children's) that cancelling needs. A watcher
    thread does the cancelling in ordinary thread context.
    """
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)

    def on_signal(signum: int, _frame: Optional[FrameType]) -> None:
        with contextlib.suppress(OSError):
            os.write(write_fd, bytes([signum]))

    def watch() -> None:
        while True:
            data = os.read(read_fd, 16)
            if not data:
                return
            for signum in data:
                log.line(None, f"received signal {signum}; cancelling")
                installer.cancel()

    threading.Thread(target=watch, name="signals", daemon=True).start()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)


def run_worker(spec: InstallSpec, paths: TaskPaths) -> int:
    """The worker process's body: first document, signals, install, final document."""
    log = TaskLog.open(str(paths.log))
    writer = ProgressWriter(paths.progress, initial_progress(spec, paths))
    with writer.change():
        pass  # the first document: the launcher waits for it
    writer.start_heartbeat()
    # Inherited by every child and grandchild, so a cancel can find them all.
    os.environ[liveness.TASK_ENV] = spec.task_id
    installer = Installer(spec, paths, writer, log)
    _install_signal_handlers(installer, log)
    log.line(None, f"nodeferry-agent worker pid {os.getpid()} task {spec.task_id}")
    try:
        return installer.run()
    finally:
        writer.stop_heartbeat()
        if not writer.finished:  # only a BaseException can get here; still say so
            writer.finish(
                "failed",
                exit_code=ExitCode.INTERNAL,
                error="the agent was stopped",
                error_code="agent_crashed",
                node_status_for_unfinished="failed",
            )
        log.close()
