import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from protocol import NodeProgress, Progress, ProtocolError
from protocol.api import progress_response
from protocol.progress import parse_time, utc_now

pytestmark = pytest.mark.timeout(10)

TASK_ID = "3f2a5b8e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
ROOT = Path(__file__).resolve().parents[2]


def running() -> Progress:
    doc = Progress(task_id=TASK_ID, ui_home="/workspace/ComfyUI", pid=123, boot_id="b")
    doc.nodes = [
        NodeProgress(name="a", url="https://h/a", status="installed", commit="c" * 40),
        NodeProgress(name="b", url="https://h/b", status="failed", error="clone failed"),
        NodeProgress(name="c", url="https://h/c", status="skipped"),
        NodeProgress(name="d", url="https://h/d", status="cloning", requirements_status="pending"),
    ]
    doc.recount()
    doc.move_to("cloning")
    return doc


def test_recount_derives_counters_from_nodes() -> None:
    doc = running()
    assert (doc.total_nodes, doc.processed, doc.successful, doc.failed, doc.skipped) == (
        4,
        3,
        1,
        1,
        1,
    )
    assert doc.has_requirements is True


def test_states_only_move_forward_and_final_is_final() -> None:
    doc = running()
    assert not doc.can_move_to("starting")
    doc.move_to("installing_requirements")
    doc.move_to("installing_requirements")  # staying put is allowed
    doc.move_to("completed")
    for state in ("cloning", "failed", "cancelled", "completed"):
        assert not doc.can_move_to(state)
    with pytest.raises(ValueError, match="cannot move"):
        doc.move_to("failed")


def test_documents_round_trip_through_json() -> None:
    doc = running()
    assert Progress.from_json(doc.to_json()) == doc


def test_timestamps_are_iso_utc_with_millis() -> None:
    stamp = utc_now()
    assert stamp.endswith("Z") and len(stamp) == len("2026-11-29T03:40:00.123Z")
    assert parse_time(stamp).tzinfo is not None


def mutate(**changes: Any) -> dict[str, Any]:
    data = running().to_dict()
    data.update(changes)
    return data


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (mutate(schema=2), "schema"),
        (mutate(state="exploded"), "state"),
        (mutate(task_id="../x"), "task_id"),
        (mutate(processed=-1), "processed"),
        (mutate(processed=True), "processed"),
        (mutate(updated_at="yesterday"), "updated_at"),
        (mutate(error_code="oops"), "error_code"),
        (mutate(nodes=[{"name": "a", "url": "u", "status": "weird"}]), "nodes.0.status"),
        (mutate(nodes=[{"name": "a", "url": "u"}]), "nodes.0.status"),
        (mutate(extra=1), ""),
    ],
)
def test_invalid_documents_name_the_field(data: dict[str, Any], field: str) -> None:
    with pytest.raises(ProtocolError) as info:
        Progress.from_dict(data)
    assert info.value.field == field


def test_progress_response_in_progress_keeps_the_seed_shape() -> None:
    body = progress_response(running())
    assert body["success"] is True
    assert body["in_progress"] is True
    assert body["completed"] is False
    assert body["state"] == "cloning"
    for key in (
        "task_id",
        "total_nodes",
        "processed",
        "current_node",
        "current_status",
        "successful",
        "failed",
        "skipped",
        "has_requirements",
        "requirements_status",
        "nodes",
        "started_at",
        "updated_at",
    ):
        assert key in body
    assert "successful_clones" not in body


def test_progress_response_finished_reports_failure_honestly() -> None:
    doc = running()
    doc.nodes[3].status = "installed"
    doc.recount()
    doc.move_to("completed")
    doc.exit_code = 1
    body = progress_response(doc)
    assert body["in_progress"] is False
    assert body["completed"] is True
    assert body["success"] is False  # one node failed: never reported as success
    assert (body["successful_clones"], body["failed_clones"]) == (2, 1)

    doc.nodes[1].status = "installed"
    doc.recount()
    assert progress_response(doc)["success"] is True


def test_stale_flag_is_carried() -> None:
    assert progress_response(running(), stale=True)["stale"] is True


def test_protocol_imports_and_validates_on_python38(python38: Path) -> None:
    code = (
        "import json, sys; from protocol import Progress, InstallSpec;"
        "doc = Progress.from_json(sys.stdin.read());"
        "print(json.dumps(doc.to_dict(), sort_keys=True))"
    )
    doc = running()
    out = subprocess.run(
        [str(python38), "-c", code],
        input=doc.to_json(),
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
        timeout=30,
    )
    assert json.loads(out.stdout) == doc.to_dict()
