"""The benchmark's smoke size, run in CI so the script cannot rot.

It asserts the structure and sanity of the figures (every section measured,
every value a finite positive number, ratios consistent with their rows), never
a machine-dependent time: those belong in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.bench.latency_proxy import LatencyProxy
from tests.bench.realpacks import _dist_name, find_realworld
from tests.bench.stats import Summary, percentile

REPO_ROOT = Path(__file__).resolve().parents[2]
# The real-pack section needs shared/realworld beside the clone (CI has it); without
# it, and without CI set, the section is skipped cleanly.
SECTIONS = {"install", "start", "poll", "freshness", "scale", "footprint", "storage"} | (
    {"realpacks"} if find_realworld() else set()
)


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "smoke.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, "-m", "tests.bench", "--smoke", "--json", str(out)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"bench failed:\n{done.stdout}\n{done.stderr[-4000:]}"
    report: dict[str, Any] = json.loads(out.read_text())
    report["_stdout"] = done.stdout
    return report


@pytest.mark.slow
@pytest.mark.timeout(320)
def test_smoke_run_measures_every_section(smoke_report: dict[str, Any]) -> None:
    assert smoke_report["schema"] == 1
    assert smoke_report["size"] == "smoke"
    assert smoke_report["errors"] == {}
    assert {row["section"] for row in smoke_report["rows"]} == SECTIONS
    machine = smoke_report["machine"]
    assert machine["cores"] >= 1 and machine["python"] and machine["paramiko"]


@pytest.mark.slow
@pytest.mark.timeout(320)
def test_smoke_figures_are_sane(smoke_report: dict[str, Any]) -> None:
    for row in smoke_report["rows"]:
        value = row["value"]
        assert isinstance(value, (int, float)) and math.isfinite(value), row
        assert value >= 0, row
        # Anything timed, and any throughput, took some time or did some work; a
        # count of bytes, reads or CPU may honestly be zero in a tiny window.
        if row["unit"] in ("s", "polls/s"):
            assert value > 0, row
        # A smoke run never claims a target met or missed.
        assert row["met"] is None, row
        if row["baseline"] is not None:
            assert row["baseline"] > 0, row
            assert row["ratio"] == pytest.approx(row["baseline"] / value), row
    details = smoke_report["details"]
    install = details["install"]
    assert install["repos"]["count"] >= 1
    for name in ("baseline_wall", "agent_wall"):
        summary = install[name]
        assert summary["minimum"] <= summary["p50"] <= summary["p95"] <= summary["maximum"]
    assert details["start"]["second_start_uploads"] == [0] * len(
        details["start"]["second_start_uploads"]
    )
    for run in ("paced", "saturated"):
        assert details["scale"][run]["polls"] > 0
        assert details["scale"][run]["errors"] == 0
    # The event stream's shared read: many watchers, not many times the reads.
    sse = details["scale"]["sse"]
    assert sse["many"]["watchers"] > sse["one"]["watchers"] == 1
    assert sse["many"]["events"] >= sse["many"]["watchers"]


@pytest.mark.slow
@pytest.mark.timeout(320)
def test_smoke_real_packs_structure(smoke_report: dict[str, Any]) -> None:
    details = smoke_report["details"].get("realpacks", {})
    if find_realworld() is None:
        assert "skipped" in details
        pytest.skip("shared/realworld is not beside this clone")
    # The smoke size installs the packs without requirements: no network needed.
    assert details["packs"] and all(reqs == [] for reqs in details["packs"].values())
    assert "ComfyUI_UltimateSDUpscale" in details["packs"]  # the submodule case
    for key in ("naive", "vast", "nodeferry_pip", "nodeferry_uv"):
        outcome = details[key]
        assert outcome["ran"] and not outcome["error"], outcome
        assert outcome["wall"] > 0 and outcome["clone"] > 0, outcome
        checks = outcome["checks"]
        assert checks["pip_check_ok"] and checks["torch_unchanged"], checks
        assert set(checks["packs_importable"]) == set(details["packs"]), checks
        assert outcome["correct"] is True
    assert "cm_cli" not in details  # it needs the package index: full size only


def test_requirement_lines_name_their_distribution() -> None:
    assert _dist_name("scipy>=1.11.4") == "scipy"
    assert _dist_name("numpy<2") == "numpy"
    assert _dist_name("GitPython") == "gitpython"
    assert _dist_name("opencv_python-headless[extra] ; python_version>'3'") == (
        "opencv-python-headless"
    )


@pytest.mark.slow
@pytest.mark.timeout(320)
def test_smoke_table_is_printed(smoke_report: dict[str, Any]) -> None:
    table = smoke_report["_stdout"]
    assert table.splitlines()[0].split()[:3] == ["section", "metric", "nodeferry"]
    for row in smoke_report["rows"]:
        assert row["metric"] in table


def test_percentiles_use_nearest_rank() -> None:
    samples = [float(n) for n in range(1, 101)]
    assert percentile(samples, 0.5) == 50.0
    assert percentile(samples, 0.99) == 99.0
    assert percentile([3.0, 1.0, 2.0], 0.99) == 3.0
    summary = Summary.of([0.2, 0.1, 0.4, 0.3])
    assert (summary.p50, summary.minimum, summary.maximum) == (0.25, 0.1, 0.4)
    with pytest.raises(ValueError):
        Summary.of([])


@pytest.mark.timeout(30)
def test_latency_proxy_adds_the_configured_delay_each_way() -> None:
    import socket
    import threading
    import time

    server = socket.create_server(("127.0.0.1", 0))

    def echo_once() -> None:
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    threading.Thread(target=echo_once, daemon=True).start()
    delay = 0.05
    with LatencyProxy("127.0.0.1", server.getsockname()[1], delay=delay) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as client:
            started = time.perf_counter()
            client.sendall(b"ping")
            assert client.recv(16) == b"ping"
            first = time.perf_counter() - started
            started = time.perf_counter()
            client.sendall(b"again")
            assert client.recv(16) == b"again"
            second = time.perf_counter() - started
        assert proxy.bytes_up == 9 and proxy.bytes_down == 9
    server.close()
    # The first exchange also pays the modelled handshake (one round trip).
    assert first >= 4 * delay * 0.9
    assert 2 * delay * 0.9 <= second < 2 * delay + 1.0


def test_latency_proxy_refuses_non_loopback_targets() -> None:
    with pytest.raises(ValueError):
        LatencyProxy("10.0.0.1", 80)
