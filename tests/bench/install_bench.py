"""Install wall time: the agent against the sequential baseline, same repositories
(behind the latency proxy), same wheelhouse, a fresh ComfyUI home, venv copy and
pip/uv caches for every run. Also the agent's footprint: bundle bytes and peak
RSS during the install.

The agent runs from its bundle (``python agent.pyz run --spec -``), the way it
runs on an instance. Where its time goes is read from its own progress document
while it runs: the moments the task enters ``installing_requirements``,
``running_install_scripts`` and its final state.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from protocol.spec import DEFAULT_CLONE_JOBS
from tests.bench.baselines import BaselineInstall, sequential_install
from tests.bench.lab import Lab
from tests.bench.procwatch import PeakRssSampler
from tests.bench.report import Report, Row
from tests.bench.stats import Summary, median

SECTION = "install"
AGENT_TIMEOUT = 300.0


@dataclass
class AgentInstall:
    wall: float
    state: str
    successful: int
    failed: int
    peak_rss: int
    #: Seconds from launch to the first sight of each task state.
    state_times: dict[str, float] = field(default_factory=dict)
    installer: str = "auto"

    def phases(self) -> dict[str, float]:
        """Seconds in start-up, cloning, requirements and install.py, from the state times."""
        marks = self.state_times
        order = ["cloning", "installing_requirements", "running_install_scripts"]
        end = self.wall
        seen = [(name, marks[name]) for name in order if name in marks]
        out: dict[str, float] = {"startup": seen[0][1] if seen else end}
        for (name, began), following in zip(seen, [*seen[1:], ("end", end)], strict=False):
            out[name] = following[1] - began
        return {
            "startup": out["startup"],
            "clone": out.get("cloning", 0.0),
            "requirements": out.get("installing_requirements", 0.0),
            "install_scripts": out.get("running_install_scripts", 0.0),
        }


def write_bundle(lab: Lab) -> tuple[Path, int]:
    from agent.bundle import bundle

    built = bundle()
    path = lab.workdir / built.filename
    if not path.exists():
        path.write_bytes(built.data)
    return path, len(built.data)


def agent_install(
    lab: Lab,
    bundle_path: Path,
    urls: list[str],
    label: str,
    *,
    installer: str = "auto",
    jobs: int = 4,
    clone_jobs: int | None = None,
) -> AgentInstall:
    home = lab.fresh_home(label)
    env = lab.fresh_env(label)
    env["NODEFERRY_AGENT_INSTALLER"] = installer
    state_dir = home.root.parent / "state"
    task_id = str(uuid.uuid4())
    spec = {
        "task_id": task_id,
        "ui_home": str(home.root),
        "nodes": urls,
        "python": str(home.python),
        "pip_args": lab.pip_args,
        "jobs": jobs,
    }
    if clone_jobs is not None:  # else the spec's default
        spec["clone_jobs"] = clone_jobs
    progress_file = state_dir / "tasks" / task_id / "progress.json"
    states: dict[str, float] = {}
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, str(bundle_path), "--state-dir", str(state_dir), "run", "--spec", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=home.root.parent,
    )
    done = threading.Event()
    watcher = threading.Thread(
        target=_watch_states, args=(progress_file, states, started, done), daemon=True
    )
    watcher.start()
    with PeakRssSampler(proc.pid) as rss:
        try:
            out, err = proc.communicate(json.dumps(spec).encode(), timeout=AGENT_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise RuntimeError(
                f"the agent did not finish {label} within {AGENT_TIMEOUT:.0f} s"
            ) from None
    wall = time.perf_counter() - started
    done.set()
    watcher.join(5)
    try:
        final = json.loads(out)
    except ValueError:
        raise RuntimeError(
            f"the agent printed no final document (exit {proc.returncode}): "
            f"{err.decode(errors='replace')[-2000:]}"
        ) from None
    result = AgentInstall(
        wall=wall,
        state=final["state"],
        successful=final["successful"],
        failed=final["failed"],
        peak_rss=rss.peak,
        state_times=states,
        installer=installer,
    )
    if result.state != "completed" or result.failed:
        failures = [f"{n['name']}: {n.get('error')}" for n in final["nodes"] if n.get("error")]
        raise RuntimeError(f"agent install {label} ended {result.state}: {failures[:3]}")
    lab.discard(home.root.parent)
    return result


def _watch_states(
    progress_file: Path, states: dict[str, float], started: float, done: threading.Event
) -> None:
    """Record when each task state first shows in the document (20 ms resolution)."""
    while not done.is_set():
        try:
            state = json.loads(progress_file.read_text())["state"]
        except (OSError, ValueError, KeyError):
            state = None
        if state is not None and state not in states:
            states[state] = time.perf_counter() - started
        done.wait(0.02)


def baseline_install(lab: Lab, urls: list[str], label: str) -> BaselineInstall:
    home = lab.fresh_home(label)
    result = sequential_install(
        urls, home.root, str(home.python), lab.pip_args, env=lab.fresh_env(label)
    )
    if result.failed:
        errors = [n.error for n in result.nodes if not n.ok]
        raise RuntimeError(f"the sequential baseline failed on {result.failed}: {errors[:2]}")
    lab.discard(home.root.parent)
    return result


def run(lab: Lab, report: Report, log: Callable[[str], None]) -> None:
    size = lab.size
    bundle_path, bundle_bytes = write_bundle(lab)
    report.add(
        Row(
            "footprint",
            "agent bundle size",
            bundle_bytes,
            "bytes",
            target="<= 160 KiB",
            met=bundle_bytes <= 160 * 1024,
        )
    )
    urls = lab.node_urls(via_proxy=True)
    assert lab.repo_set is not None
    report.detail(
        SECTION,
        "repos",
        {
            "count": len(urls),
            "history_bytes_total": lab.repo_set.total_history_bytes,
            "with_requirements": sum(1 for p in lab.repo_set.plans if p.requirements),
            "with_install_py": sum(1 for p in lab.repo_set.plans if p.install_script),
            "proxy_delay_each_way_s": size.proxy_delay,
            "agent_jobs": "spec default",
        },
    )
    # (key, label, installer, clone_jobs): the first is the headline figure, at the
    # spec's defaults (jobs 4, clone_jobs 16).
    variants: list[tuple[str, str, str, int | None]] = [
        ("agent", f"agent, defaults (clone_jobs {DEFAULT_CLONE_JOBS})", "auto", None),
        ("agent_pip", "agent forced to pip, defaults", "pip", None),
        *(
            (f"agent_clone_jobs{j}", f"agent, clone_jobs {j}", "auto", j)
            for j in size.compare_clone_jobs
        ),
    ]
    baselines: list[BaselineInstall] = []
    runs: dict[str, list[AgentInstall]] = {key: [] for key, *_ in variants}
    # Interleaved, so slow drift of the machine's load hits every side alike.
    for index in range(size.install_runs):
        log(f"install run {index + 1}/{size.install_runs}: sequential baseline")
        baselines.append(baseline_install(lab, urls, f"baseline-{index}"))
        line = f"  baseline {baselines[-1].wall:.2f} s"
        for key, _label, installer, clone_jobs in variants:
            result = agent_install(
                lab, bundle_path, urls, f"{key}-{index}", installer=installer, clone_jobs=clone_jobs
            )
            runs[key].append(result)
            line += f"; {key} {result.wall:.2f} s"
        log(line)

    base = Summary.of(b.wall for b in baselines)
    for key, label, installer, _clone_jobs in variants:
        summary = Summary.of(a.wall for a in runs[key])
        headline = key == "agent"
        note = ""
        if installer == "pip":
            note = "NODEFERRY_AGENT_INSTALLER=pip: what an instance without uv gets"
        report.add(
            Row(
                SECTION,
                f"{len(urls)} nodes, wall (p50): {label}",
                summary.p50,
                "s",
                baseline=base.p50,
                baseline_name="sequential clone+pip",
                target=">= 10x" if headline else None,
                met=base.p50 / summary.p50 >= 10 if headline else None,
                note=note,
            )
        )
        report.detail(SECTION, f"{key}_wall", summary)
        phases = [a.phases() for a in runs[key]]
        report.detail(
            SECTION,
            f"{key}_breakdown_p50",
            {name: median([p[name] for p in phases]) for name in phases[0]},
        )
    everything = [a for results in runs.values() for a in results]
    report.add(
        Row(
            "footprint",
            "agent peak RSS during the install",
            max(a.peak_rss for a in everything),
            "bytes",
            note="the worker process itself; git/pip/uv children are separate processes",
        )
    )
    report.detail(SECTION, "baseline_wall", base)
    report.detail(
        SECTION,
        "baseline_breakdown_p50",
        {
            "clone": median([b.clone for b in baselines]),
            "requirements": median([b.requirements for b in baselines]),
            "install_scripts": median([b.install_script for b in baselines]),
        },
    )
    report.detail(SECTION, "agent_peak_rss_bytes", [a.peak_rss for a in everything])
    report.detail(SECTION, "agent_state_times", [a.state_times for a in runs["agent"]])
