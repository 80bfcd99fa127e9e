"""The install itself: clone every node, resolve requirements once, run install.py files.

Runs in the worker process (detached for ``start``, a child for ``run`` and
``install``). Every change is written to the progress document at once; the
final document is always written, on success, failure, an exception or a
signal.
"""

import concurrent.futures
import contextlib
import dataclasses
import os
import shutil
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Dict, List, Optional

from agent import (
    comfyargs,
    failures,
    install_script,
    inventory,
    liveness,
    priority,
    procs,
    reqfile,
    reqstage,
    requirements,
)
from agent import git as gitmod
from agent import restart as restartmod
from agent import verify as verifymod
from agent.completion import Completion, records_path
from agent.errors import Cancelled, Refused, StepFailed
from agent.progress_file import ProgressWriter, write_atomic
from agent.statedir import TaskPaths
from agent.tasklog import TaskLog
from protocol import (
    ExitCode,
    ImportResult,
    InstallSpec,
    NodeProgress,
    NodeSpec,
    Progress,
    utc_now,
)


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
        # Fresh nodes that passed requirements and install.py: verification's input.
        self.ready: List[int] = []
        self.python: Optional[str] = None
        # A lock's package pins (with this instance's torch family), when reproducing one.
        self.lock_pins: Optional[Dict[str, str]] = None
        # <state>/tasks/<id> -> <state>: what finished for each node, across tasks.
        self.state_root = paths.dir.parent.parent
        self.completion = Completion(records_path(self.state_root, self.ui_home), self.ui_home)

    # -- entry point ---------------------------------------------------------------

    def run(self) -> int:
        """Install everything and write the final document; returns the exit code."""
        started = time.monotonic()
        not_ready: Optional[str] = None
        try:
            self._install()
            if self.spec.wants_ready and self.spec.mode == "install":  # a plan changes nothing
                not_ready = self._bring_up()
        except Refused as exc:
            self.log.line(None, "refused: " + exc.message)
            self._stop_stragglers()
            self._sweep_temp_dirs()
            self._write_lock()
            self.writer.finish(
                "failed",
                exit_code=ExitCode.INSTALL_FAILED,
                error=exc.message,
                error_code=exc.code,
                node_status_for_unfinished="cancelled",
            )
            return int(ExitCode.INSTALL_FAILED)
        except Cancelled:
            self.log.line(None, "cancelled: stopping")
            self._stop_stragglers()
            self._sweep_temp_dirs()
            self._write_lock()
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
            self._write_lock()
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
        self._write_lock()
        if not_ready is not None:
            # The nodes are on disk, but nobody can press "Queue": the task failed.
            self.writer.finish(
                "failed",
                exit_code=ExitCode.INSTALL_FAILED,
                error=not_ready,
                error_code="not_ready",
            )
            return int(ExitCode.INSTALL_FAILED)
        missing = doc.ready.missing if doc.ready is not None else []
        error = None
        if missing:
            code = ExitCode.INSTALL_FAILED
            error = (
                f"the running ComfyUI lacks {len(missing)} class(es) the workflow needs: "
                + ", ".join(missing)
            )
        self.writer.finish("completed", exit_code=code, error=error)
        return int(code)

    def _bring_up(self) -> Optional[str]:
        """Restart ComfyUI (when asked) and ask it for its classes; the failure, if any."""
        restarting = self.spec.restart != "never"
        with self.writer.change() as doc:
            doc.move_to("restarting")
            doc.current_node = None
            doc.current_status = "restarting ComfyUI" if restarting else "asking ComfyUI"
        try:
            result = restartmod.bring_up(
                self.ui_home,
                self.spec.restart,
                self.spec.ready_classes,
                self.spec.ready_timeout,
                log=self.log,
                children=self.children,
                log_file=self.paths.dir / "comfyui.log",
            )
        except restartmod.NotReady as exc:
            self.log.line(None, f"ComfyUI is not ready: {exc}")
            with self.writer.change() as doc:
                doc.ready = exc.result
            return str(exc)
        with self.writer.change() as doc:
            doc.ready = result
            if result.note:
                doc.warnings.append(result.note)
        return None

    def cancel(self) -> None:
        """Stop every child now (called on SIGTERM/SIGINT/SIGHUP); the main flow unwinds."""
        self.children.cancel()

    # -- the steps -----------------------------------------------------------------

    def _install(self) -> None:
        self.log.line(None, f"installing {len(self.spec.nodes)} node(s) into {self.ui_home}")
        self._check_before_touching()
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
        self.children.check()
        self._verify()

    def _check_before_touching(self) -> None:
        """Refuse (nothing touched yet) the wrong interpreter, a drifted plan, a policy."""
        from agent import planner  # planner builds on this module

        who = planner.interpreter_report(self.spec.python, self.ui_home)
        wrong = planner.wrong_interpreter(who)
        if wrong is not None:
            raise Refused("wrong_interpreter", wrong)
        if self.spec.expect is not None and who["path"] is not None:
            drift = planner.drift(self.spec.expect, self.custom_nodes, who["path"])
            if drift:
                raise Refused(
                    "plan_drift",
                    f"the instance changed since plan {self.spec.expect['plan_id']}: "
                    + "; ".join(drift)
                    + " (make a new plan)",
                )
            # The plan's package set, exactly: nothing is re-resolved to other versions.
            held = requirements.installed_versions(who["path"], requirements.TORCH_FAMILY)
            self.lock_pins = {**self.spec.expect["pins"], **held}
        elif self.spec.forbid or self.spec.forbid_downgrade:
            verdict = planner.policy_check(self)
            if verdict:
                raise Refused(
                    "policy_violation",
                    "the install breaks a policy, so nothing was touched: " + "; ".join(verdict),
                )

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

    def _fail(self, index: int, message: str, step: str = "other") -> None:
        self.log.line(self._node(index).name, "FAILED: " + message)
        self._set(index, "failed", error=message, error_code=failures.classify(step, message))

    # clone ----------------------------------------------------------------------------

    def _clone_all(self) -> None:
        pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.spec.clone_jobs, thread_name_prefix="clone"
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
            staged = self._staged_clone(node)
            if staged is not None:
                sha = self._adopt(staged, dest)
                self.log.line(name, f"took the plan's staged clone at {sha}")
            else:
                sha = self.git.clone(node.url, node.ref, dest, name, self.tmp_prefix)
            self.log.line(name, f"cloned {sha}")
            self.completion.record(name, node.url, "clone", sha)
            self._set(index, "cloned", commit=sha)
            self.fresh.append(index)
        except StepFailed as exc:
            self._fail(index, str(exc), "clone")
        except OSError as exc:  # e.g. custom_nodes not writable: this node fails, not all
            self._fail(index, f"{type(exc).__name__}: {exc}")

    def _staged_clone(self, node: NodeSpec) -> Optional[Path]:
        """Applying a plan: its clone of ``node`` in the plan's task folder, when that is
        a clone of the same URL at the planned commit (else None: clone anew)."""
        if self.spec.expect is None:
            return None
        staged = self.state_root / "tasks" / self.spec.expect["plan_id"] / "staged" / node.dir_name
        if staged.is_symlink() or not staged.is_dir():
            return None
        origin = self.git.origin_of(staged, node.dir_name)
        if origin is None or not gitmod.same_origin(origin, node.url):
            return None
        try:
            head = self.git.head(staged, node.dir_name)
        except StepFailed:
            return None
        return staged if head == node.ref else None

    def _adopt(self, staged: Path, dest: Path) -> str:
        """Move a staged clone into place: beside ``dest`` first (a move across file
        systems copies), then one rename, so ``dest`` appears whole or not at all."""
        beside = dest.parent / (self.tmp_prefix + dest.name)
        shutil.move(str(staged), str(beside))
        beside.rename(dest)
        return self.git.head(dest, dest.name)

    def _existing_node(self, index: int, node: NodeSpec, dest: Path) -> None:
        name = node.dir_name
        if dest.is_symlink() or not dest.is_dir():
            raise StepFailed(f"{dest} exists and is not a directory; left it untouched")
        origin = self.git.origin_of(dest, name)
        if origin is None:
            raise StepFailed(
                f"{dest} exists but is not a git clone; left it untouched "
                "(remove it, or give the node another name: URL#NAME)"
            )
        if not gitmod.same_origin(origin, node.url):
            raise StepFailed(
                f"{dest} is a clone of {origin}, not {node.url}; left it untouched "
                "(remove it, or give the node another name: URL#NAME)"
            )
        old = self.git.head(dest, name)
        if not self.spec.update and not self._other_ref(dest, node.ref, old):
            needs = self._steps_needed(dest)
            if self.completion.get(name) is None and not any(needs.values()):
                self.completion.record(name, node.url, "clone", old)
            if self.completion.is_complete(name, old, needs):
                self.log.line(
                    name, f"already installed at {old}; skipped (--update brings it up to date)"
                )
                self._set(index, "skipped", commit=old)
                return
            # Present, but its steps never finished here (or were never run by
            # nodeferry): "skipped" would report work that did not happen.
            missing = self.completion.missing(name, old, needs)
            self.log.line(
                name, f"present at {old} but not known complete ({', '.join(missing)}); installing"
            )
            self.completion.record(name, node.url, "clone", old)
            self._set(index, "cloned", commit=old)
            self.fresh.append(index)
            return
        # --update, or a ref other than the one checked out was asked for: asking
        # for v2 of a node that sits at v1 means v2, so that node alone is updated.
        self._set(index, "cloning")
        sha = self.git.update(dest, node.ref, name)
        why = "" if self.spec.update else f" ({node.ref} requested)"
        self.log.line(name, f"updated {old} -> {sha}{why}")
        self.completion.record(name, node.url, "clone", sha)
        self._set(index, "cloned", commit=sha)
        self.fresh.append(index)

    def _steps_needed(self, dest: Path) -> "dict[str, bool]":
        """The steps a node present in ``dest`` must have finished to be complete."""
        return {
            "requirements": reqfile.source_of(dest) is not None,
            "install_script": (dest / "install.py").is_file(),
            # A node that failed to import is not complete, whatever ran before.
            "import": self.spec.verify is not False,
        }

    def _other_ref(self, dest: Path, ref: Optional[str], head: str) -> bool:
        """Whether ``ref`` names a commit other than ``head`` (no ref: the one there)."""
        if ref is None:
            return False
        # A clone made at this ref has it locally (the branch, the tag or the
        # commit); a ref the clone does not know is another one by definition.
        local = self.git.output(
            ["rev-parse", "--verify", "--quiet", ref + "^{commit}"], dest.name, dest
        )
        return local != head

    # requirements -----------------------------------------------------------------------

    def _install_requirements(self) -> None:
        wanting = [i for i in self.fresh if reqfile.source_of(self._node_dir(i)) is not None]
        python, why = requirements.find_interpreter(self.spec.python, self.ui_home)
        self.python = python
        self.log.line(None, f"ComfyUI's interpreter: {python or 'none'} ({why})")
        if self.spec.lock is not None and python is not None:
            self._pin_to_lock(python)
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
        requirements.write_constraints(self.paths.constraints, self.lock_pins or pins)
        pinned = ", ".join(f"{k}=={v}" for k, v in sorted(pins.items())) or "nothing installed"
        self.log.line(None, f"torch family pinned: {pinned}")
        if self.lock_pins is not None:
            self.log.line(None, f"the lock pins {len(self.lock_pins)} package(s)")
        work = self.paths.dir / "requirements"
        work.mkdir(exist_ok=True)
        stage = reqstage.RequirementsStage(
            python=python,
            spec_installer=self.spec.installer,
            pip_args=self.spec.pip_args,
            constraints=self.paths.constraints,
            work_dir=work,
            tools_dir=self.state_root / "tools",
            log=self.log,
            children=self.children,
            timeout=self.timeouts.requirements,
            hooks=reqstage.Hooks(
                set_status=self._set_requirements,
                fail=self._requirements_failed,
                node_warning=self._node_warning,
                task_warning=self._task_warning,
                set_installer=self._set_installer,
                set_packages=self._set_packages,
            ),
        )
        done = stage.run({i: (self._node(i).name, self._node_dir(i)) for i in wanting})
        for i in wanting:
            node = self._node(i)
            if i in done or node.requirements_status != "failed":
                self._set_requirements(i, "done")
                self.completion.record(node.name, node.url, "requirements", node.commit or "")
        self._finish_requirements()

    def _node_dir(self, index: int) -> Path:
        return self.custom_nodes / self._node(index).name

    def _node_warning(self, index: int, text: str) -> None:
        with self.writer.change() as doc:
            doc.nodes[index].warnings.append(text)

    def _task_warning(self, text: str) -> None:
        with self.writer.change() as doc:
            doc.warnings.append(text)

    def _set_installer(self, kind: str) -> None:
        with self.writer.change() as doc:
            doc.installer = kind

    def _set_packages(self, changes: "dict[str, dict[str, list[Optional[str]]]]") -> None:
        with self.writer.change() as doc:
            doc.packages = changes

    def _set_requirements(self, index: int, status: str) -> None:
        # A node stays "installing_requirements" until its install.py step starts.
        self._set(index, "installing_requirements", requirements_status=status)

    def _requirements_failed(self, index: int, message: str) -> None:
        with self.writer.change() as doc:
            doc.nodes[index].requirements_status = "failed"
        self._fail(index, message, "requirements")

    def _finish_requirements(self) -> None:
        with self.writer.change() as doc:
            failed = any(n.requirements_status == "failed" for n in doc.nodes)
            doc.requirements_status = "failed" if failed else "done"

    # install.py -------------------------------------------------------------------------

    def _run_install_scripts(self) -> None:
        todo = [i for i in self.fresh if not self._node(i).is_final]
        scripts = [i for i in todo if (self._node_dir(i) / "install.py").is_file()]
        # Nodes without install.py are through this step now: settling them first
        # means that once the task reads running_install_scripts, current_node names
        # a script's node.
        for i in todo:
            if i not in scripts:
                self._script_step_done(i)
        for n, i in enumerate(scripts):
            self.children.check()
            node = self._node(i)
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
            self._set(i, "running_install_script", stage=stage, install_script_status="running")
            heard = install_script.WarningCollector()
            result = procs.run(
                [python, "install.py"],
                log=self.log,
                prefix=node.name,
                children=self.children,
                timeout=self.timeouts.install_script,
                cwd=str(self._node_dir(i)),
                env=install_script.script_env(self.ui_home),
                on_line=heard.feed,
            )
            for text in heard.warnings:
                self._node_warning(i, text)
            if not result.ok:
                self._set(i, "running_install_script", install_script_status="failed")
                self._fail(i, result.describe("install.py"), "install_script")
                continue
            self._set(i, "running_install_script", install_script_status="done")
            self.completion.record(node.name, node.url, "install_script", node.commit or "")
            self._script_step_done(i)

    def _script_step_done(self, index: int) -> None:
        """Past install.py: on to the import check, or installed without one."""
        if self.spec.verify is False:
            self._import_done(index, ImportResult("skipped"))  # done now, as before verifying
        else:
            self.ready.append(index)

    # import verification ------------------------------------------------------------------

    def _verify(self) -> None:
        """Judge every ready node the way this ComfyUI loads it; only what loads is installed."""
        ready = sorted(self.ready)  # empty with verify: false
        mode = self.spec.verify
        if not ready:
            return
        if self.python is None:
            self._warn("no Python interpreter for ComfyUI: the nodes' imports were not checked")
            for i in ready:
                self._import_done(i, ImportResult("skipped"))
            return
        with self.writer.change() as doc:
            doc.move_to("verifying")
            doc.current_node = None
            doc.current_status = "verifying imports"
        if mode == "comfyui" and not (self.ui_home / "main.py").is_file():
            self._warn("verify 'comfyui': no main.py in the ComfyUI home; imported each node")
        elif (
            mode == "comfyui" or (mode is True and verifymod.is_comfyui(self.ui_home))
        ) and self._verify_with_comfyui(ready):
            return
        self._verify_by_import(ready)

    def _verify_by_import(self, ready: List[int]) -> None:
        """The bare import of each node, in its own interpreter: for homes that are no ComfyUI."""
        if self.python is None:  # the caller found none and skipped verification
            raise RuntimeError("an import check without an interpreter")
        index = {self._node(i).name: i for i in ready}
        verifymod.import_all(
            self.python,
            self.ui_home,
            [self._node(i).name for i in ready],
            jobs=self.spec.jobs,
            log=self.log,
            children=self.children,
            timeout=self.spec.verify_timeout,
            scratch=self.paths.dir,
            on_start=lambda name: self._set(index[name], "verifying"),
            on_done=lambda name, result: self._import_done(index[name], result),
        )

    def _start_comfyui(
        self, args: comfyargs.ComfyArgs, timeout: float, **options: Any
    ) -> verifymod.Start:
        if self.python is None:  # the caller found none and skipped verification
            raise RuntimeError("ComfyUI's start without an interpreter")
        return verifymod.run_comfyui(
            self.python,
            self.ui_home,
            args,
            log=self.log,
            children=self.children,
            timeout=timeout,
            scratch=self.paths.dir,
            transcript=self.paths.comfyui_check,
            **options,
        )

    def _verify_with_comfyui(self, ready: List[int]) -> bool:
        """ComfyUI's own start judges the nodes; False when only the bare import can.

        One start with every node, as the instance starts it. Where that start
        fails as a whole (ComfyUI broken, or a node that kills or hangs it), each
        node gets a start of its own, so one bad node cannot fail the others.
        """
        args = comfyargs.learn(self.ui_home)
        if args.source:
            self.log.line(
                None, f"ComfyUI runs here as {args.source}; the check passes on: {args.argv}"
            )
        for i in ready:
            self._set(i, "verifying")
        names = verifymod.loadable(self.ui_home, args)
        per_node = self.spec.verify_timeout
        whole = self._start_comfyui(
            args,
            verifymod.comfyui_timeout(len(names), per_node),
            expect_block=bool(names),
        )
        if whole.report is not None:
            skipped = set(verifymod.not_whitelisted(whole.lines))
            for i in ready:
                name = self._node(i).name
                self._import_done(i, whole.report.get(name) or self._unlisted(name, skipped))
            return True
        if not verifymod.is_comfyui(self.ui_home):
            # A stand-in's main.py that reports nothing: no start of it can judge.
            self._warn(f"verify 'comfyui': {whole.why_not('main.py')}; imported each node instead")
            return False
        self._warn(
            whole.why_not("ComfyUI's start") + f" (see {self.paths.comfyui_check.name}); "
            "starting it with one node at a time"
        )
        # Each node alone, and beside them a start with none, which tells a broken
        # ComfyUI from nodes that break it (in parallel: the starts are the cost).
        index = {self._node(i).name: i for i in ready}
        results: Dict[str, ImportResult] = {}
        bare: List[verifymod.Start] = []

        def one(name: str) -> None:
            self.children.check()
            if name:
                results[name] = self._verify_alone(args, name, per_node)
            else:
                timeout = verifymod.comfyui_timeout(0, per_node)
                bare.append(self._start_comfyui(args, timeout, only=[]))

        verifymod.for_each(["", *index], one, jobs=self.spec.jobs)
        if not bare[0].result.ok:
            self._warn(
                f"ComfyUI does not start even without custom nodes "
                f"({bare[0].why_not('its start')}): imported each node on its own instead"
            )
            return False
        for name, result in results.items():
            self._import_done(index[name], result)
        return True

    def _verify_alone(self, args: comfyargs.ComfyArgs, name: str, per_node: float) -> ImportResult:
        if not args.loads(name):
            return self._unlisted(name, {name})
        start = self._start_comfyui(args, verifymod.comfyui_timeout(1, per_node), only=[name])
        found = (start.report or {}).get(name)
        if found is not None:
            return dataclasses.replace(found, check=verifymod.CHECK_ALONE)
        return ImportResult(
            "timeout" if start.result.timed_out else "failed",
            seconds=round(start.result.seconds, 3),
            error=start.why_not("ComfyUI's start with only this node")
            + ("" if start.result.timed_out else " (it takes ComfyUI down with it)"),
            check=verifymod.CHECK_ALONE,
            traceback=start.tail() or None,
        )

    @staticmethod
    def _unlisted(name: str, skipped: "set[str]") -> ImportResult:
        if name in skipped:
            error = (
                "this ComfyUI runs with --disable-all-custom-nodes and does not "
                "whitelist it: it is not loaded"
            )
        else:
            error = "ComfyUI did not list it among its custom nodes"
        return ImportResult("failed", error=error, check=verifymod.CHECK_COMFYUI)

    def _import_done(self, index: int, result: ImportResult) -> None:
        name = self._node(index).name
        if result.status in ("ok", "skipped"):
            self._set(index, "installed", import_result=result)
            if result.status == "ok":
                node = self._node(index)
                self.completion.record(name, node.url, "import", node.commit or "")
            classes = (
                "" if result.node_classes is None else f", {result.node_classes} node class(es)"
            )
            self.log.line(name, f"installed (import {result.status}{classes})")
            return
        if result.status == "timeout":
            message = f"loading it as ComfyUI does timed out ({result.error})"
        else:
            message = f"ComfyUI cannot import it: {result.error}"
        if result.traceback:
            self.log.line(name, "ComfyUI's traceback for it:\n" + result.traceback)
        self.log.line(name, "FAILED: " + message)
        self._set(index, "failed", error=message, import_result=result, error_code="import_failed")

    def _warn(self, message: str) -> None:
        self.log.line(None, "warning: " + message)
        self._task_warning(message)

    # lock -------------------------------------------------------------------------------

    def _pin_to_lock(self, python: str) -> None:
        if self.spec.lock is None:  # called only for a spec with a lock
            raise RuntimeError("no lock to pin to")
        have = requirements.installed_versions(python, requirements.TORCH_FAMILY)
        pins, warnings = self.spec.lock.constraints(have)
        self.lock_pins = pins
        for message in warnings:
            self._warn(message)

    def _write_lock(self) -> None:
        """``lock.json`` beside the progress document: what this home holds now."""
        try:
            python = self.python
            if python is None:
                python, _why = requirements.find_interpreter(self.spec.python, self.ui_home)
            lock = inventory.take(self.ui_home, python)
            write_atomic(self.paths.lock, lock.to_json())
            self.log.line(
                None,
                f"lock written: {len(lock.nodes)} node(s), {len(lock.packages)} package(s)",
            )
        except Exception as exc:  # a lock must never turn a finished install into a crash
            self.log.line(None, f"could not write the lock: {type(exc).__name__}: {exc}")

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
    if spec.mode == "plan":
        from agent.planner import Planner  # it builds on Installer

        installer: Installer = Planner(spec, paths, writer, log)
    else:
        installer = Installer(spec, paths, writer, log)
    _install_signal_handlers(installer, log)
    log.line(None, f"nodeferry-agent worker pid {os.getpid()} task {spec.task_id}")
    if spec.low_priority:
        # Before any child or clone thread starts: they all inherit it (on Linux
        # niceness is per thread, so the heartbeat thread keeps its priority).
        log.line(None, "lower priority: " + ", ".join(priority.lower()))
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
