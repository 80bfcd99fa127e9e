"""The restart fields of the spec and the ``restarting`` state and ``ready`` result of
the progress document (#22)."""

from __future__ import annotations

from typing import Any

import pytest

from protocol import InstallSpec, Progress, ProtocolError, ReadyResult
from protocol.spec import MAX_READY_CLASSES

pytestmark = pytest.mark.timeout(10)

TASK_ID = "3f2a5b8e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"


def spec(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"task_id": TASK_ID, "ui_home": "/w/ComfyUI", "nodes": ["https://h/a/b"]}
    base.update(overrides)
    return base


def test_restart_defaults_to_never_and_an_old_spec_reads_as_never() -> None:
    parsed = InstallSpec.from_dict(spec())
    assert parsed.restart == "never" and not parsed.ready_check and not parsed.wants_ready
    # Written with its defaults (the agent is always the controller's own), and read
    # back the same.
    written = parsed.to_dict()
    assert (written["restart"], written["ready_check"], written["ready_classes"]) == (
        "never",
        False,
        [],
    )
    assert InstallSpec.from_dict(written) == parsed


def test_restart_fields_round_trip() -> None:
    given = spec(
        restart={"command": ["/opt/start.sh", "--port", "8190"]},
        ready_timeout=60,
        ready_classes=["KSampler", "Seed (rgthree)", "KSampler"],
    )
    parsed = InstallSpec.from_dict(given)
    assert parsed.wants_ready and parsed.ready_timeout == 60.0
    assert parsed.ready_classes == ["KSampler", "Seed (rgthree)"]  # duplicates dropped
    assert InstallSpec.from_dict(parsed.to_dict()) == parsed


@pytest.mark.parametrize(
    ("value", "where"),
    [
        (["x"] * 2 + [""], "ready_classes.2"),
        (["a\tb"], "ready_classes.0"),
        (["x" * 257], "ready_classes.0"),
        ("KSampler", "ready_classes"),
        ([f"C{i}" for i in range(MAX_READY_CLASSES + 1)], "ready_classes"),
    ],
)
def test_bad_ready_classes_are_refused_by_name(value: object, where: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        InstallSpec.from_dict(spec(ready_classes=value))
    assert caught.value.field == where


def test_restarting_comes_after_verifying_and_before_the_end() -> None:
    doc = Progress(task_id=TASK_ID, ui_home="/w")
    doc.move_to("verifying")
    doc.move_to("restarting")
    assert not doc.can_move_to("verifying")
    doc.move_to("completed")
    assert doc.is_final


def test_a_missing_class_makes_a_completed_task_unsuccessful() -> None:
    doc = Progress(task_id=TASK_ID, ui_home="/w", state="completed")

    def succeeded() -> bool:  # read anew each time (mypy would keep the last answer)
        return doc.succeeded

    assert succeeded()
    doc.ready = ReadyResult(restarted_by="process", classes=500, missing=[])
    assert succeeded()
    doc.ready = ReadyResult(restarted_by="process", classes=500, missing=["X"])
    assert not succeeded()
    # An honest "nothing runs here" is not a failure.
    doc.ready = ReadyResult(note="no running ComfyUI found for this home")
    assert succeeded()
    again = Progress.from_dict(doc.to_dict())
    assert again.ready == doc.ready


def test_a_document_without_ready_is_written_without_it() -> None:
    assert "ready" not in Progress(task_id=TASK_ID, ui_home="/w").to_dict()
