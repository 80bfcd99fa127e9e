"""The requirements stage: one batched resolve, culprits dropped, the rest said out loud.

1. Every node's requirements are read as packs write them (:mod:`agent.reqfile`)
   and normalised into one file per node; their index options join the batch.
2. One install of them all, constrained to the torch family already there.
3. If it fails: dry-run resolves find the node(s) that make it unsatisfiable
   (:mod:`agent.bisect`); those fail with the resolver's message and the rest
   is installed in one resolve. Only when no culprit can be found (a build
   failure, say) is each node installed on its own.
4. What cannot be batched is installed alone, and the node's warnings say so.
5. The environment before and after is compared (:mod:`agent.envdiff`).
"""

import shlex
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from agent import bisect, envdiff, installer, procs, reqfile, requirements
from agent.tasklog import TaskLog


class Hooks:
    """How the stage reports back to the worker (statuses live in its document)."""

    def __init__(
        self,
        set_status: Callable[[int, str], None],
        fail: Callable[[int, str], None],
        node_warning: Callable[[int, str], None],
        task_warning: Callable[[str], None],
        set_installer: Callable[[str], None],
        set_packages: Callable[[envdiff.Changes], None],
    ) -> None:
        self.set_status = set_status
        self.fail = fail
        self.node_warning = node_warning
        self.task_warning = task_warning
        self.set_installer = set_installer
        self.set_packages = set_packages


class RequirementsStage:
    def __init__(
        self,
        *,
        python: str,
        spec_installer: str,
        pip_args: Sequence[str],
        constraints: Path,
        work_dir: Path,
        tools_dir: Path,
        log: TaskLog,
        children: procs.Children,
        timeout: float,
        hooks: Hooks,
    ) -> None:
        self.python = python
        self.spec_installer = spec_installer
        self.pip_args = list(pip_args)
        self.constraints = constraints
        self.work_dir = work_dir
        self.tools_dir = tools_dir
        self.log = log
        self.children = children
        self.timeout = timeout
        self.hooks = hooks
        self.kind = "pip"
        self.uv: Optional[str] = None
        self.options: List[str] = []
        self.files: Dict[int, Path] = {}
        self.node_dirs: Dict[int, Path] = {}
        self.names: Dict[int, str] = {}

    # -- commands ------------------------------------------------------------------

    def _choose(self) -> None:
        self.kind, self.uv = installer.choose(
            self.spec_installer,
            self.python,
            self.tools_dir,
            self.pip_args,
            lambda text: self._say_task(text),
        )
        self.hooks.set_installer(self.kind)
        self.log.line(None, f"installing requirements with {self.kind}")
        if self.kind == "uv":
            from_pip = installer.uv_source_args(self.python, self.pip_args)
            if from_pip:
                self.log.line(None, "uv gets pip's configured sources: " + shlex.join(from_pip))
            self.options += from_pip

    def _say_task(self, text: str) -> None:
        self.log.line(None, text)
        self.hooks.task_warning(text)

    def _argv(self, tail: Sequence[str], dry_run: bool = False) -> List[str]:
        argv = requirements.install_command(
            self.kind, self.python, [], self.constraints, [*self.pip_args, *self.options]
        )
        if self.kind == "uv":
            argv[0] = self.uv or "uv"
            argv = installer.with_index_strategy(argv)
        if dry_run:
            argv.append("--dry-run")
        return [*argv, *tail]

    def _files_argv(self, nodes: Sequence[int], dry_run: bool = False) -> List[str]:
        tail: List[str] = []
        for i in nodes:
            tail += ["-r", str(self.files[i])]
        return self._argv(tail, dry_run)

    def _run(self, argv: Sequence[str], prefix: str, cwd: Optional[Path] = None) -> procs.Result:
        return procs.run(
            argv,
            log=self.log,
            prefix=prefix,
            children=self.children,
            timeout=self.timeout,
            cwd=str(cwd) if cwd else None,
            env=requirements.pip_env(),
        )

    # -- the stage -----------------------------------------------------------------

    def run(self, wanting: Dict[int, Tuple[str, Path]]) -> List[int]:
        """Install the requirements of ``wanting`` (index -> (name, dir)); returns successes."""
        reqs = self.prepare(wanting)
        if not reqs:
            return []
        order = sorted(reqs)
        for i in order:
            self.hooks.set_status(i, "running")
        self._choose()
        before = envdiff.snapshot(self.python)
        done = self._batch(order)
        done = [i for i in done if self._alone(i, reqs[i])]
        after = envdiff.snapshot(self.python)
        if before is not None and after is not None:
            self._report_changes(before, after, {i: reqs[i] for i in done})
        return done

    def prepare(self, wanting: Dict[int, Tuple[str, Path]]) -> Dict[int, reqfile.NodeRequirements]:
        """Read and batch each node's requirements (one file each); changes nothing else."""
        reqs: Dict[int, reqfile.NodeRequirements] = {}
        for i, (name, node_dir) in wanting.items():
            self.node_dirs[i] = node_dir
            self.names[i] = name
            try:
                found = reqfile.read_node(node_dir)
            except OSError as exc:
                self.hooks.fail(i, f"cannot read its requirements: {exc}")
                continue
            if found is None:
                continue
            reqs[i] = found
            path = self.work_dir / f"{i:03d}-{name}.txt"
            path.write_text(found.batch_text(), encoding="utf-8")
            self.files[i] = path
            for note in found.notes:
                self.log.line(name, note)
                if note.startswith("installed alone"):
                    self.hooks.node_warning(i, f"requirements {note}")
            for group in found.options:
                if not _has_group(self.options, group):
                    self.options += group
        return reqs

    def choose(self) -> str:
        """Pick the installer (uv set up if needed) as the install would; returns it."""
        self._choose()
        return self.kind

    def dry_run_argv(self, nodes: Sequence[int]) -> List[str]:
        """The batch's install command, resolve only: what a plan runs."""
        return self._files_argv(nodes, dry_run=True)

    def _batch(self, order: List[int]) -> List[int]:
        batched = [i for i in order if self.files[i].stat().st_size]
        plain = [i for i in order if i not in batched]  # only alone items
        if not batched:
            return plain
        result = self._run(self._files_argv(batched), "requirements")
        if result.ok:
            return plain + batched
        if len(batched) == 1:
            self.hooks.fail(batched[0], result.describe("installing requirements"))
            return plain
        self.log.line(None, "the batched install failed; looking for the node(s) that cause it")
        culprits = bisect.find_culprits(batched, self._dry_run)
        rest = [i for i in batched if i not in culprits]
        for i, message in culprits.items():
            others = " together with the other nodes' (they were installed without it)"
            self.hooks.fail(
                i, f"its requirements could not be resolved{others if rest else ''}: {message}"
            )
        if culprits and rest:
            names = ", ".join(self.names[i] for i in culprits)
            self.log.line(None, f"dropped {names}; installing the rest in one resolve")
            result = self._run(self._files_argv(rest), "requirements")
            if result.ok:
                return plain + rest
        elif culprits:
            return plain
        self.log.line(None, "no single culprit found; installing node by node")
        ok = []
        for i in rest:
            single = self._run(self._files_argv([i]), self.names[i])
            if single.ok:
                ok.append(i)
            else:
                self.hooks.fail(i, single.describe("installing requirements"))
        return plain + ok

    def _dry_run(self, nodes: Sequence[int]) -> Tuple[bool, str]:
        result = self._run(self._files_argv(nodes, dry_run=True), "resolve")
        if not result.ok and any("no such option: --dry-run" in line for line in result.tail):
            # pip older than 22.2 cannot resolve without installing: give up bisecting.
            return True, ""
        return result.ok, result.describe("resolving requirements")

    def _alone(self, i: int, reqs: reqfile.NodeRequirements) -> bool:
        for tail in reqs.alone:
            result = self._run(self._argv(tail), self.names[i], cwd=self.node_dirs[i])
            if not result.ok:
                self.hooks.fail(i, result.describe("installing " + " ".join(tail) + " (alone)"))
                return False
        return True

    def _report_changes(
        self,
        before: envdiff.Versions,
        after: envdiff.Versions,
        reqs: Dict[int, reqfile.NodeRequirements],
    ) -> None:
        changes = envdiff.diff(before, after)
        self.hooks.set_packages(changes)
        summary = ", ".join(f"{len(v)} {k}" for k, v in sorted(changes.items())) or "no changes"
        self.log.line(None, f"packages: {summary}")
        if not changes.get("downgraded"):
            return
        lines = [(self.names[i], line) for i, node in reqs.items() for line in node.lines]
        reasons = envdiff.downgrade_reasons(self.python, changes["downgraded"], lines)
        for text in envdiff.describe_downgrades(changes, reasons):
            self._say_task(text)


def _has_group(options: Sequence[str], group: Sequence[str]) -> bool:
    size = len(group)
    return any(list(options[k : k + size]) == list(group) for k in range(len(options)))
