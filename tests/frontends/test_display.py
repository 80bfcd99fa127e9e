"""The terminal view and the CLI's input handling, without a controller."""

from __future__ import annotations

import argparse
import datetime
import re
import uuid
from pathlib import Path

import pytest
from rich.console import Console

from controller.cli import console as commands
from controller.cli import display
from protocol import ProtocolError

pytestmark = pytest.mark.timeout(20)

NOW = datetime.datetime(2026, 1, 1, 12, 0, 30, tzinfo=datetime.timezone.utc)


def running_doc() -> dict[str, object]:
    return {
        "task_id": str(uuid.uuid4()),
        "state": "installing_requirements",
        "in_progress": True,
        "total_nodes": 3,
        "processed": 2,
        "successful": 1,
        "failed": 1,
        "skipped": 0,
        "has_requirements": True,
        "requirements_status": "running",
        "started_at": "2026-01-01T12:00:00.000Z",
        "nodes": [
            {
                "name": "ComfyUI-Good",
                "url": "git://127.0.0.1/good",
                "status": "installed",
                "commit": "0123456789abcdef",
                "requirements_status": "done",
                "started_at": "2026-01-01T12:00:00.000Z",
                "finished_at": "2026-01-01T12:00:05.000Z",
            },
            {
                "name": "ComfyUI-Bad",
                "url": "git://127.0.0.1/bad",
                "status": "failed",
                "error": "git clone failed:\nfatal: repository 'git://127.0.0.1/bad' not found",
                "started_at": "2026-01-01T12:00:00.000Z",
                "finished_at": "2026-01-01T12:00:01.000Z",
            },
            {
                "name": "ComfyUI-Slow",
                "url": "git://127.0.0.1/slow",
                "status": "installing_requirements",
                "requirements_status": "running",
                "started_at": "2026-01-01T12:00:10.000Z",
            },
        ],
    }


def text_of(renderable: object, width: int = 120) -> str:
    out = Console(width=width, record=True, color_system="truecolor", force_terminal=True)
    out.print(renderable)
    return out.export_text()


def test_render_shows_bar_rows_times_errors_and_requirements() -> None:
    doc = running_doc()
    text = text_of(display.render(doc, title="local:/ComfyUI", now=NOW))
    assert "installing requirements" in text
    assert "2/3 nodes" in text and "67%" in text
    assert "0:30" in text  # task elapsed, running
    assert "0:05" in text  # a finished node's time
    assert "0:20" in text  # a running node's time, to now
    assert "0123456789" in text
    assert "repository 'git://127.0.0.1/bad' not found" in text
    assert "requirements: running" in text


def test_failed_node_error_is_red() -> None:
    out = Console(width=120, record=True, force_terminal=True, color_system="truecolor")
    out.print(display.render(running_doc(), now=NOW))
    html = out.export_html(inline_styles=True)
    error_span = next(line for line in html.splitlines() if "not found" in line)
    assert "color: #800000" in error_span or "color: #ff0000" in error_span


def test_summary_and_exit_status() -> None:
    done = {"state": "completed", "success": True, "successful": 3, "failed": 0, "skipped": 0}
    assert commands.exit_status(done) == 0
    assert "✓ done: 3 installed" in display.summary(done).plain
    failed = {**done, "success": False, "successful": 2, "failed": 1}
    assert commands.exit_status(failed) == 1
    assert display.summary(failed).plain.startswith("✗ finished with failures")
    assert commands.exit_status({"state": "cancelled"}) == 6
    lost = {"state": "lost", "error": "the agent died\nwithout finishing"}
    assert commands.exit_status(lost) == 1
    assert "the agent died without finishing" in display.summary(lost).plain


def test_change_log_prints_only_changes() -> None:
    log = display.ChangeLog()
    doc = running_doc()
    first = log.lines(doc)
    assert first[0] == "state: installing_requirements"
    assert any(line.startswith("  ComfyUI-Bad: failed: fatal: repository") for line in first)
    assert log.lines(doc) == []
    nodes = doc["nodes"]
    assert isinstance(nodes, list)
    nodes[2]["status"] = "installed"
    assert log.lines(doc) == ["  ComfyUI-Slow: installed"]


def test_nodes_file(tmp_path: Path) -> None:
    nodes = tmp_path / "nodes.txt"
    nodes.write_text(
        "# my workflow\n"
        "https://github.com/ltdrdata/ComfyUI-Manager\n"
        "\n"
        "  https://github.com/a/b@v1.2   # pinned\n"
    )
    args = argparse.Namespace(nodes_file=nodes, nodes=["https://github.com/c/d"])
    assert commands.collect_nodes(args) == [
        "https://github.com/ltdrdata/ComfyUI-Manager",
        "https://github.com/a/b@v1.2",
        "https://github.com/c/d",
    ]
    nodes.write_text("https://github.com/a/b\next::sh -c touch%20/tmp/x\n")
    with pytest.raises(ProtocolError, match=r"nodes.txt:2"):
        commands.collect_nodes(argparse.Namespace(nodes_file=nodes, nodes=[]))
    with pytest.raises(ProtocolError, match="at least one node"):
        commands.collect_nodes(argparse.Namespace(nodes_file=None, nodes=[]))
    with pytest.raises(ProtocolError, match="cannot read"):
        commands.collect_nodes(argparse.Namespace(nodes_file=tmp_path / "nope", nodes=[]))


def verified_doc() -> dict[str, object]:
    doc = running_doc()
    doc["state"] = "verifying"
    nodes = doc["nodes"]
    assert isinstance(nodes, list)
    nodes[0]["import"] = {"status": "ok", "seconds": 0.2, "error": None, "node_classes": 3}
    nodes[1].update(
        error="ComfyUI cannot import it: ModuleNotFoundError: No module named 'cv3'",
        **{"import": {"status": "failed", "seconds": 0.1, "error": "No module named 'cv3'"}},
    )
    nodes[2].update(status="verifying")
    doc["warnings"] = ["torch: the lock has 2.0.0, this instance has 1.0.0; kept 1.0.0"]
    return doc


def test_render_shows_the_verifying_phase_import_results_and_warnings() -> None:
    text = text_of(display.render(verified_doc(), now=NOW), width=160)
    assert "verifying" in text
    assert "✓ ok · 3 classes" in text
    assert "✗ failed" in text and "No module named 'cv3'" in text
    assert "warning: torch: the lock has 2.0.0, this instance has 1.0.0; kept 1.0.0" in text
    assert display.import_text({"status": "timeout"}).plain == "✗ timeout"
    assert display.import_text({"status": "ok", "node_classes": 1}).plain == "✓ ok · 1 class"
    assert display.import_text(None).plain == ""


def test_change_log_shows_import_results_and_each_warning_once() -> None:
    log = display.ChangeLog()
    lines = log.lines(verified_doc())
    assert lines[0] == "state: verifying"
    assert "  ComfyUI-Good: installed (import ok, 3 classes)" in lines
    assert any(
        line.startswith("  ComfyUI-Bad: failed (import failed): ComfyUI cannot import it")
        for line in lines
    )
    assert lines[-1].startswith("warning: torch: the lock has 2.0.0")
    assert log.lines(verified_doc()) == []


def test_a_node_waiting_for_install_scripts_is_not_shown_installing() -> None:
    doc = {
        "task_id": "t",
        "state": "running_install_scripts",
        "nodes": [
            {"name": "Waits", "status": "installing_requirements", "requirements_status": "done"}
        ],
    }
    console = Console(width=120, record=True)
    console.print(display.render(doc))
    text = console.export_text()
    assert re.search(r"Waits\s+waiting\s+✓ done", text), text
    assert "installing requirements" not in text
    assert display.ChangeLog().lines(doc)[-1] == "  Waits: waiting"


def test_node_warnings_and_package_changes_are_shown_once() -> None:
    doc = verified_doc()
    nodes = doc["nodes"]
    assert isinstance(nodes, list)
    nodes[0]["warnings"] = ["[ERROR] ComfyUI-Good: Dependency installation has failed."]
    doc["packages"] = {
        "added": {"gguf": [None, "0.10.0"]},
        "downgraded": {"numpy": ["2.4.6", "1.26.4"]},
    }
    doc["warnings"] = ["numpy downgraded 2.4.6 -> 1.26.4 (forced by ComfyUI-Impact-Pack: numpy<2)"]
    text = text_of(display.render(doc, now=NOW), width=200)
    assert "packages: 1 added, 1 downgraded" in text
    assert (
        "warning: ComfyUI-Good: [ERROR] ComfyUI-Good: Dependency installation has failed." in text
    )
    assert "warning: numpy downgraded 2.4.6 -> 1.26.4 (forced by" in text
    log = display.ChangeLog()
    lines = log.lines(doc)
    assert "packages: 1 added, 1 downgraded" in lines
    assert sum(line.startswith("warning: ") for line in lines) == 2
    assert log.lines(doc) == []
