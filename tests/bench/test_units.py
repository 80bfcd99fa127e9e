"""Unit tests of the benchmark's own arithmetic: where time went, how stale a
sighting was, how the report states ratios. Fast; no real parts needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protocol.progress import parse_time
from tests.bench.controller_bench import _staleness
from tests.bench.install_bench import AgentInstall
from tests.bench.report import Report, Row, markdown_table


def test_phases_split_the_wall_time_at_each_state_change() -> None:
    run = AgentInstall(
        wall=10.0,
        state="completed",
        successful=3,
        failed=0,
        peak_rss=1,
        state_times={
            "cloning": 0.5,
            "installing_requirements": 6.0,
            "running_install_scripts": 9.0,
            "completed": 9.9,
        },
    )
    assert run.phases() == pytest.approx(
        {"startup": 0.5, "clone": 5.5, "requirements": 3.0, "install_scripts": 1.0}
    )


def test_phases_of_an_install_without_requirements_or_scripts() -> None:
    run = AgentInstall(
        wall=4.0,
        state="completed",
        successful=1,
        failed=0,
        peak_rss=1,
        state_times={"cloning": 0.25, "completed": 3.9},
    )
    assert run.phases() == pytest.approx(
        {"startup": 0.25, "clone": 3.75, "requirements": 0.0, "install_scripts": 0.0}
    )


def test_staleness_counts_each_change_once_at_its_first_sighting() -> None:
    changed = "2026-11-29T04:00:00.000Z"
    finished = "2026-11-29T04:00:01.000Z"
    base = parse_time(changed).timestamp()
    doc_a = {"updated_at": changed, "nodes": [{"name": "a", "started_at": changed}]}
    doc_b = {
        "updated_at": finished,
        "nodes": [{"name": "a", "started_at": changed, "finished_at": finished}],
    }
    seen = [(base + 0.2, doc_a), (base + 0.4, doc_a), (base + 1.3, doc_b)]
    # updated_at and started_at seen 0.2 s late; the new updated_at and finished_at 0.3 s.
    assert sorted(_staleness(seen)) == pytest.approx([0.2, 0.2, 0.3, 0.3])


def test_ratio_is_baseline_over_value_and_smoke_claims_no_target(tmp_path: Path) -> None:
    full = Report(size="full", command="x")
    row = full.add(Row("poll", "p50", 0.01, "s", baseline=0.5, target=">= 20x", met=True))
    assert row.ratio == pytest.approx(50.0) and row.met is True
    smoke = Report(size="smoke", command="x")
    assert smoke.add(Row("poll", "p50", 0.01, "s", met=False)).met is None
    full.fail("scale", "no sshd")
    full.write_json(tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["rows"][0]["ratio"] == pytest.approx(50.0)
    table = markdown_table(data)
    assert "| poll | p50 | 10.0 ms | 500.0 ms | 50.0x | >= 20x | yes |" in table
    assert "**scale: not measured** — no sshd" in table


@pytest.mark.timeout(30)
def test_blackhole_counts_every_completed_connection_when_read() -> None:
    import socket

    from tests.bench.blackhole import Blackhole

    with Blackhole() as hole:
        clients = [socket.create_connection(("127.0.0.1", hole.port), timeout=10) for _ in range(3)]
        # Read at once, before the background thread may have run: still all three.
        assert hole.accepted == 3
        clients[0].settimeout(0.3)
        with pytest.raises(TimeoutError):
            clients[0].recv(1)  # and not a word from it
        for client in clients:
            client.close()
        assert hole.accepted == 3
