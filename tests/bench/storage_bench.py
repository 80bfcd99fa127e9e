"""Bounded storage (issue 8 point 7): a registry holding 150 finished tasks of 500
nodes each, every node with a 2 KB error (about 1 MB per document as the agent
writes it), then the controller process listing them.

The tasks are written through the registry itself, so what it stores is what the
storage cap lets through; the listing is timed over HTTP against a controller in
its own process, whose peak RSS comes from /proc.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from controller.common.target import Target
from controller.core.registry import Registry, TaskRecord
from protocol import NodeProgress, Progress
from tests.bench.controller_proc import ControllerProcess
from tests.bench.lab import Lab
from tests.bench.procwatch import peak_rss_bytes
from tests.bench.report import Report, Row
from tests.bench.sizes import BenchSize
from tests.bench.stats import Summary

#: (tasks, nodes per task, listings timed) for each size.
SHAPES = {"full": (150, 500, 200), "smoke": (6, 20, 10)}
ERROR_TEXT = "x" * 2000


def _task(index: int, nodes: int) -> TaskRecord:
    task_id = str(uuid.uuid4())
    progress = Progress(task_id=task_id, ui_home=f"/w/h{index}/ComfyUI", state="completed")
    progress.nodes = [
        NodeProgress(
            name=f"Node-{n:03d}",
            url=f"https://example.invalid/owner/Node-{n:03d}",
            status="failed",
            error=f"git clone failed with exit code 128:\n{ERROR_TEXT}",
            error_code="network",
        )
        for n in range(nodes)
    ]
    progress.recount()
    created = time.time() - 3600 + index
    return TaskRecord(
        task_id,
        Target("ssh", "root", f"10.0.{index // 250}.{index % 250 + 1}", 22),
        progress.ui_home,
        {"task_id": task_id, "ui_home": progress.ui_home, "nodes": []},
        created,
        state="completed",
        finished_at=created + 30,
        launched=True,
        progress=progress,
    )


def _get(url: str, auth: dict[str, str]) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(urllib.request.Request(url, headers=auth), timeout=60) as response:
        json.loads(response.read())
    return time.perf_counter() - started


def run(lab: Lab, report: Report, log: object) -> None:
    size: BenchSize = lab.size
    tasks, nodes, listings = SHAPES.get(size.name, SHAPES["smoke"])
    base = Path(lab.workdir) / "storage"
    shutil.rmtree(base, ignore_errors=True)  # a kept --workdir must not add up
    data = base / "data"
    registry = Registry(data / "tasks.sqlite3")
    agent_bytes = 0
    for index in range(tasks):
        record = _task(index, nodes)
        assert record.progress is not None
        agent_bytes = max(agent_bytes, len(record.progress.to_json()))
        registry.add(record)
    registry.close()
    stored = (data / "tasks.sqlite3").stat().st_size
    report.detail("storage", "document_bytes_as_the_agent_writes_it", agent_bytes)
    report.detail("storage", "registry_bytes", stored)
    report.add(Row("storage", f"registry size, {tasks} tasks of {nodes} nodes", stored / 1e6, "MB"))

    with ControllerProcess(base / "controller", {"data_dir": str(data)}) as controller:
        url = controller.url + "/api/tasks"
        auth = controller.auth()
        _get(url, auth)  # first request: imports, the connection pool
        samples = [_get(url, auth) for _ in range(listings)]
        with ThreadPoolExecutor(10) as pool:
            burst = list(pool.map(lambda _: _get(url, auth), range(10)))
        history_url = controller.url + "/api/history?limit=50"
        history = [_get(history_url, auth) for _ in range(listings // 4 + 1)]
        rss = peak_rss_bytes(controller.pid) or 0
    listing = Summary.of(samples)
    report.add(
        Row(
            "storage",
            f"GET /api/tasks with {tasks} stored tasks of {nodes} nodes (p50)",
            listing.p50,
            "s",
            target="<= 50 ms",
            met=listing.p50 <= 0.05,
        )
    )
    report.add(Row("storage", "GET /api/tasks, 10 at once (slowest)", max(burst), "s"))
    report.add(
        Row("storage", "GET /api/history?limit=50 with nodes (p50)", Summary.of(history).p50, "s")
    )
    report.add(
        Row(
            "storage",
            "controller peak RSS after the listings",
            rss / 1e6,
            "MB",
            target="<= 200 MB",
            met=rss <= 200e6,
        )
    )
