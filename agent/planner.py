"""A plan: what an install would change, into which interpreter, changing nothing.

The worker runs this instead of the install for a spec with ``mode: "plan"``.
Nodes are cloned into the task folder (``<task>/staged/<name>``), never into
``custom_nodes``; their requirements are resolved with the install's own command
and constraints (the torch family held) plus ``--dry-run`` (pip: ``--report``), so
nothing is installed; culprits are found as the install finds them. The answer
is the progress document's ``plan``:

``interpreter`` (path, how it was chosen, the ComfyUI processes of the home and
whether they run it), ``installer``, ``nodes`` (new / update from → to / same),
``packages`` (added / upgraded / downgraded / removed, name → [old, new]),
``reasons`` (package → the requirement lines and the packs behind them),
``culprits``, ``install_scripts``, ``alone``, ``downloads``, ``violations`` (the
spec's policies), and ``environment`` / ``apply`` (what an apply checks and pins).
"""

import concurrent.futures
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from agent import (
    bisect,
    envdiff,
    inventory,
    procs,
    reqstage,
    requirements,
    running_comfyui,
)
from agent import git as gitmod
from agent.errors import Refused, StepFailed
from agent.worker import Installer
from protocol import NodeSpec

_UV_CHANGE = re.compile(r"^\s*([+-])\s+([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")
_UV_DOWNLOAD = re.compile(r"Would download (\d+) package")
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def freeze_hash(packages: Dict[str, str]) -> str:
    """One hash of an environment's distributions (name==version, sorted)."""
    text = "".join(f"{name}=={packages[name]}\n" for name in sorted(packages))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def interpreter_report(spec_python: Optional[str], ui_home: Path) -> Dict[str, Any]:
    """The target interpreter, how it was chosen, and the ComfyUI processes of the home."""
    python, why = requirements.find_interpreter(spec_python, ui_home)
    running = running_comfyui.find(ui_home)
    target = running_comfyui.identity(python) if python else None
    others = [r for r in running if r.identity != target]
    return {
        "path": python,
        "chosen_by": "--python" if spec_python else why,
        "why": why,
        "explicit": spec_python is not None,
        "running": [dict(r.to_dict(), matches=r.identity == target) for r in running],
        "mismatch": [f"ComfyUI (pid {r.pid}) runs {r.python}, not {python}" for r in others],
    }


def wrong_interpreter(report: Dict[str, Any]) -> Optional[str]:
    """Why an install must not go on with this interpreter (None: it may)."""
    if not report["mismatch"] or report["explicit"]:
        return None
    return (
        "; ".join(report["mismatch"])
        + ": the requirements would go where ComfyUI does not look. Give --python (the "
        "interpreter ComfyUI runs, or this one if you mean it) to install anyway"
    )


def violations(
    changes: envdiff.Changes,
    reasons: Dict[str, List[str]],
    forbid_downgrade: Sequence[str],
    forbid: Sequence[str],
) -> List[str]:
    """Each package change the policies forbid, naming the change and who forces it."""
    out: List[str] = []
    for name, (old, new) in sorted(changes.get("downgraded", {}).items()):
        if name in forbid_downgrade:
            why = "; ".join(reasons.get(name, [])) or "the resolve"
            out.append(f"{name} would be downgraded {old} -> {new} (forced by {why})")
    for kind in ("added", "upgraded", "downgraded", "removed"):
        for name, (old, new) in sorted(changes.get(kind, {}).items()):
            if name in forbid:
                why = "; ".join(reasons.get(name, [])) or "the resolve"
                out.append(
                    f"{name} is forbidden but would be {kind} "
                    f"({old or 'absent'} -> {new or 'absent'}; required by {why})"
                )
    return out


class Planner(Installer):
    """The install's steps up to the resolve, with every change staged or dry-run."""

    def _install(self) -> None:
        spec = self.spec
        self.log.line(None, f"planning {len(spec.nodes)} node(s) for {self.ui_home}")
        who = interpreter_report(spec.python, self.ui_home)
        python = who["path"]
        self.python = python
        self.log.line(None, f"target interpreter: {python or 'none'} ({who['why']})")
        for line in who["mismatch"]:
            self._warn(line)
        if python is None:
            raise Refused("plan_failed", f"no interpreter to plan for: {who['why']}")
        before = envdiff.snapshot(python)
        if before is None:
            raise Refused("plan_failed", f"{python} could not list its packages")
        heads = {node.name: node.commit for node in inventory.installed_nodes(self.custom_nodes)[0]}
        self.staged = self.paths.dir / "staged"
        self.staged.mkdir(exist_ok=True)
        with self.writer.change() as doc:
            doc.move_to("cloning")
            doc.current_status = "staging clones in the task folder"
        self.actions: Dict[int, Dict[str, Any]] = {}
        self.dirs: Dict[int, Path] = {}
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=spec.clone_jobs)
        try:
            futures = [pool.submit(self._stage, i, n) for i, n in enumerate(spec.nodes)]
            pending = set(futures)
            while pending:
                _done, pending = concurrent.futures.wait(pending, timeout=0.2)
            for future in futures:
                future.result()
        finally:
            pool.shutdown(wait=True)
        self.children.check()
        with self.writer.change() as doc:
            doc.move_to("planning")
            doc.current_node = None
            doc.current_status = "resolving (dry run)"
        resolved = self._resolve(python, before)
        plan = self._document(who, before, heads, resolved)
        with self.writer.change() as doc:
            doc.plan = plan
            doc.installer = plan["installer"]
            doc.packages = plan["packages"]
        for i in range(len(spec.nodes)):
            if not self._node(i).is_final:
                self._set(i, "planned", commit=self.actions[i].get("to"))
        if plan["violations"]:
            raise Refused(
                "policy_violation",
                "the plan breaks a policy, so nothing would be installed: "
                + "; ".join(plan["violations"]),
            )

    # -- nodes ---------------------------------------------------------------------

    def _stage(self, index: int, node: NodeSpec) -> None:
        name = node.dir_name
        dest = self.custom_nodes / name
        action: Dict[str, Any] = {"name": name, "url": node.url, "ref": node.ref}
        self.actions[index] = action
        try:
            if dest.exists() or dest.is_symlink():
                self._stage_existing(index, node, dest, action)
                return
            self._set(index, "cloning")
            sha = self.git.clone(node.url, node.ref, self.staged / name, name, self.tmp_prefix)
            action.update(action="new", to=sha, **{"from": None})
            self.dirs[index] = self.staged / name
            self.log.line(name, f"new: would clone {sha}")
        except StepFailed as exc:
            action.update(action="fails", error=str(exc))
            self._fail(index, str(exc), "clone")

    def _stage_existing(
        self, index: int, node: NodeSpec, dest: Path, action: Dict[str, Any]
    ) -> None:
        name = node.dir_name
        if dest.is_symlink() or not dest.is_dir():
            raise StepFailed(f"{dest} exists and is not a directory; an install leaves it")
        origin = self.git.origin_of(dest, name)
        if origin is None or not gitmod.same_origin(origin, node.url):
            raise StepFailed(
                f"{dest} is not a clone of {node.url}; an install would leave it untouched "
                "(give the node another name: URL#NAME)"
            )
        old = self.git.head(dest, name)
        action["from"] = old
        if not self.spec.update and not self._other_ref(dest, node.ref, old):
            needs = self._steps_needed(dest)
            complete = self.completion.is_complete(name, old, needs) or (
                self.completion.get(name) is None and not any(needs.values())
            )
            action.update(action="same", to=old, steps=not complete)
            if not complete:
                self.dirs[index] = dest  # its steps would run against what is there
            self.log.line(name, f"same: stays at {old}" + ("" if complete else ", steps run"))
            return
        self._set(index, "cloning")
        sha = self.git.clone(node.url, node.ref, self.staged / name, name, self.tmp_prefix)
        action.update(action="update" if sha != old else "same", to=sha)
        self.dirs[index] = self.staged / name
        self.log.line(name, f"{action['action']}: {old} -> {sha}")

    # -- the resolve ---------------------------------------------------------------

    def _resolve(self, python: str, before: Dict[str, str]) -> Dict[str, Any]:
        names = {i: self._node(i).name for i in self.dirs}
        pins = requirements.installed_versions(python, requirements.TORCH_FAMILY)
        requirements.write_constraints(self.paths.constraints, pins)
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
                set_status=lambda i, s: None,
                fail=self._requirements_failed,
                node_warning=self._node_warning,
                task_warning=self._task_warning,
                set_installer=self._set_installer,
                set_packages=lambda changes: None,
            ),
        )
        reqs = stage.prepare({i: (names[i], d) for i, d in self.dirs.items()})
        result: Dict[str, Any] = {
            "installer": None,
            "installs": {},
            "removes": {},
            "downloads": 0,
            "culprits": [],
            "lines": [(names[i], line) for i, r in reqs.items() for line in r.lines],
            "alone": [
                {"node": names[i], "what": " ".join(tail)}
                for i, r in reqs.items()
                for tail in r.alone
            ],
            "torch": pins,
        }
        batched = [i for i in sorted(reqs) if stage.files[i].stat().st_size]
        if not batched:
            return result
        result["installer"] = stage.choose()
        report = self.paths.dir / "resolve-report.json"
        # uv takes <venv>/.lock (an empty file it flocks) even for a dry run; a plan
        # leaves the environment byte for byte as it found it, so a new one goes.
        uv_lock = Path(running_comfyui.identity(python)) / ".lock"
        had_lock = uv_lock.exists()
        try:
            self._resolve_batch(stage, batched, names, report, result)
        finally:
            if not had_lock and uv_lock.is_file() and uv_lock.stat().st_size == 0:
                uv_lock.unlink()
        return result

    def _resolve_batch(
        self,
        stage: reqstage.RequirementsStage,
        batched: List[int],
        names: Dict[int, str],
        report: Path,
        result: Dict[str, Any],
    ) -> None:

        def dry_run(nodes: Sequence[int]) -> Tuple[bool, str]:
            ok, message, _lines = self._dry_run(stage, nodes, report)
            return ok, message

        ok, message, lines = self._dry_run(stage, batched, report)
        if not ok:
            self.log.line(None, "the batch does not resolve; looking for the node(s) that cause it")
            culprits = bisect.find_culprits(batched, dry_run)
            for i, text in culprits.items():
                result["culprits"].append({"node": names[i], "conflict": text})
                self._requirements_failed(
                    i, f"its requirements could not be resolved with the others': {text}"
                )
            rest = [i for i in batched if i not in culprits]
            if not rest:
                return
            ok, message, lines = self._dry_run(stage, rest, report)
            if not ok:
                raise Refused("plan_failed", f"the requirements do not resolve: {message}")
        self._read_resolution(stage.kind, lines, report, result)

    def _dry_run(
        self, stage: reqstage.RequirementsStage, nodes: Sequence[int], report: Path
    ) -> Tuple[bool, str, List[str]]:
        argv = stage.dry_run_argv(nodes)
        if stage.kind == "pip":
            argv += ["--report", str(report)]
        lines: List[str] = []
        done = procs.run(
            argv,
            log=self.log,
            prefix="plan",
            children=self.children,
            timeout=self.timeouts.requirements,
            env=requirements.pip_env(),
            collect=lines,
        )
        return done.ok, done.describe("resolving requirements"), lines

    @staticmethod
    def _read_resolution(kind: str, lines: List[str], report: Path, result: Dict[str, Any]) -> None:
        if kind == "uv":
            for line in lines:
                change = _UV_CHANGE.match(line)
                if change:
                    side = "installs" if change.group(1) == "+" else "removes"
                    result[side][normalise(change.group(2))] = change.group(3)
                count = _UV_DOWNLOAD.search(line)
                if count:
                    result["downloads"] = int(count.group(1))
            return
        data = json.loads(report.read_text(encoding="utf-8"))
        for item in data.get("install", []):
            meta = item.get("metadata", {})
            result["installs"][normalise(meta["name"])] = meta["version"]
        result["downloads"] = len(result["installs"])

    # -- the document --------------------------------------------------------------

    def _document(
        self,
        who: Dict[str, Any],
        before: Dict[str, str],
        heads: Dict[str, str],
        resolved: Dict[str, Any],
    ) -> Dict[str, Any]:
        after = dict(before)
        for name in resolved["removes"]:
            after.pop(name, None)
        after.update(resolved["installs"])
        changes = envdiff.diff(before, after)
        lines: List[Tuple[str, str]] = resolved["lines"]
        reasons: Dict[str, List[str]] = {}
        for origin, line in lines:
            found = _NAME.match(line)
            if found and normalise(found.group(1)) in after:
                reasons.setdefault(normalise(found.group(1)), []).append(f"{origin}: {line}")
        if changes.get("downgraded") and self.python:
            for name, why in envdiff.downgrade_reasons(
                self.python, changes["downgraded"], lines
            ).items():
                for text in why:
                    if text not in reasons.setdefault(name, []):
                        reasons[name].append(text)
        changed = {name for kind in changes.values() for name in kind}
        nodes = [self.actions[i] for i in range(len(self.spec.nodes))]
        scripts = [
            self._node(i).name for i in sorted(self.dirs) if (self.dirs[i] / "install.py").is_file()
        ]
        failed = {c["node"] for c in resolved["culprits"]}
        return {
            "interpreter": {k: v for k, v in who.items() if k != "explicit"},
            "installer": resolved["installer"],
            "nodes": nodes,
            "packages": changes,
            "reasons": {name: reasons[name] for name in sorted(reasons) if name in changed},
            "culprits": resolved["culprits"],
            "install_scripts": [name for name in scripts if name not in failed],
            "alone": resolved["alone"],
            "downloads": {"count": resolved["downloads"], "bytes": None},
            "held": resolved["torch"],
            "violations": violations(
                changes, reasons, self.spec.forbid_downgrade, self.spec.forbid
            ),
            "environment": {
                "packages": before,
                "freeze_sha256": freeze_hash(before),
                "heads": {a["name"]: heads.get(a["name"]) for a in nodes},
            },
            "apply": {
                "nodes": [
                    {"url": a["url"], "ref": a.get("to"), "name": a["name"]}
                    for a in nodes
                    if a.get("to") and a["name"] not in failed
                ],
                "pins": dict(sorted(resolved["installs"].items())),
            },
        }


def drift(expect: Dict[str, Any], custom_nodes: Path, python: str) -> List[str]:
    """What changed since the plan: a planned node's head, a package of the environment."""
    out: List[str] = []
    now = {node.name: node.commit for node in inventory.installed_nodes(custom_nodes)[0]}
    for name, head in sorted(expect["heads"].items()):
        if now.get(name) != head:
            out.append(f"{name} was {head or 'absent'} and is now {now.get(name) or 'absent'}")
    packages = envdiff.snapshot(python)
    if packages is None:
        return [*out, f"{python} could not list its packages"]
    for kind, changed in sorted(envdiff.diff(expect["packages"], packages).items()):
        for name, (old, new) in sorted(changed.items()):
            out.append(f"{name} {kind} since the plan ({old or 'absent'} -> {new or 'absent'})")
    return out


def policy_check(installer: Installer) -> List[str]:
    """An install's policies checked by planning it first (clones staged in the task
    folder, written to a progress file of its own): the violations, if any."""
    from agent.progress_file import ProgressWriter
    from agent.worker import initial_progress

    paths = installer.paths
    writer = ProgressWriter(paths.dir / "preflight.json", initial_progress(installer.spec, paths))
    preflight = Planner(installer.spec, paths, writer, installer.log, installer.timeouts)
    preflight.children = installer.children  # one cancel stops both
    preflight.git.children = installer.children
    try:
        preflight._install()
    except Refused as exc:
        if exc.code == "policy_violation":
            return list((writer.progress.plan or {}).get("violations", [])) or [exc.message]
        raise
    return []
