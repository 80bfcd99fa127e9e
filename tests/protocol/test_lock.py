"""The lock document, its use as constraints, its diff and the Manager snapshot."""

import copy
from typing import Any

import pytest

from protocol import InstallSpec, Lock, NodeProgress, Progress, ProtocolError
from protocol.lock import diff
from protocol.progress import ImportResult
from protocol.snapshot import manager_snapshot

TASK_ID = "3f2b8e0a-5c1d-4e7f-9a2b-1c3d5e7f9a2b"
A = "a" * 40
B = "b" * 40

LOCK: dict[str, Any] = {
    "schema": 1,
    "created_at": "2026-11-29T03:40:00.123Z",
    "ui_home": "/workspace/ComfyUI",
    "comfyui": "c" * 40,
    "python": {"version": "3.11.9", "path": "/venv/main/bin/python"},
    "torch": {"torch": "2.4.1+cu124"},
    "nodes": [
        {
            "name": "ComfyUI-Manager",
            "url": "https://github.com/ltdrdata/ComfyUI-Manager",
            "commit": A,
        },
        {
            "name": "rgthree-comfy",
            "url": "https://github.com/rgthree/rgthree-comfy.git",
            "commit": B,
        },
    ],
    "packages": {"torch": "2.4.1+cu124", "Pillow": "10.4.0", "numpy": "1.26.4"},
}


def test_round_trip_and_normalised_names() -> None:
    lock = Lock.from_dict(LOCK)
    assert lock.packages == {"torch": "2.4.1+cu124", "pillow": "10.4.0", "numpy": "1.26.4"}
    again = Lock.from_json(lock.to_json())
    assert again == lock
    assert again.to_dict()["python"] == {"version": "3.11.9", "path": "/venv/main/bin/python"}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d.update(schema=2), "lock.schema"),
        (lambda d: d.update(extra=1), "lock"),
        (lambda d: d["nodes"][0].update(commit="abc"), "lock.nodes.0.commit"),
        (lambda d: d["nodes"][0].update(name="../x"), "lock.nodes.0.name"),
        (lambda d: d["nodes"][1].update(url="ext::sh -c id"), "lock.nodes.1.url"),
        (lambda d: d["nodes"].append(dict(d["nodes"][0])), "lock.nodes.2.name"),
        (lambda d: d["packages"].update({"x": "1.0 --index-url=http://evil"}), "lock.packages.x"),
        (lambda d: d["packages"].update({"-r /etc/passwd": "1"}), "lock.packages"),
        (lambda d: d.update(python="3.11"), "lock.python"),
    ],
)
def test_bad_locks_name_the_field(change: Any, field: str) -> None:
    data = copy.deepcopy(LOCK)
    change(data)
    with pytest.raises(ProtocolError) as caught:
        Lock.from_dict(data)
    assert caught.value.field == field


def test_constraints_keep_the_instances_torch() -> None:
    lock = Lock.from_dict(LOCK)
    pins, warnings = lock.constraints({"torch": "2.5.0+cu121"})
    assert pins["torch"] == "2.5.0+cu121" and pins["numpy"] == "1.26.4"
    assert warnings == [
        "torch: the lock has 2.4.1+cu124, this instance has 2.5.0+cu121; kept 2.5.0+cu121"
    ]
    same, none = lock.constraints({"torch": "2.4.1+cu124"})
    assert same["torch"] == "2.4.1+cu124" and none == []
    absent, quiet = lock.constraints({})
    assert absent["torch"] == "2.4.1+cu124" and quiet == []


def test_diff() -> None:
    locked = Lock.from_dict(LOCK)
    assert diff(locked, locked)["equal"] is True
    data = copy.deepcopy(LOCK)
    data["nodes"] = [
        {"name": "rgthree-comfy", "url": "https://github.com/rgthree/rgthree-comfy", "commit": A},
        {"name": "Extra", "url": "https://example.com/extra", "commit": B},
    ]
    data["packages"] = {"torch": "2.4.1+cu124", "pillow": "11.0.0", "rich": "13.0"}
    body = diff(locked, Lock.from_dict(data))
    assert body["equal"] is False
    assert [n["name"] for n in body["nodes"]["missing"]] == ["ComfyUI-Manager"]
    assert body["nodes"]["other_commit"] == [
        {"name": "rgthree-comfy", "url": LOCK["nodes"][1]["url"], "locked": B, "actual": A}
    ]
    assert body["nodes"]["other_url"] == []  # .git and no .git name the same repo
    assert [n["name"] for n in body["nodes"]["extra"]] == ["Extra"]
    assert body["packages"] == {
        "missing": {"numpy": "1.26.4"},
        "other_version": {"pillow": {"locked": "10.4.0", "actual": "11.0.0"}},
        "extra": {"rich": "13.0"},
    }


def test_manager_snapshot_shape() -> None:
    snapshot = manager_snapshot(Lock.from_dict(LOCK))
    assert snapshot == {
        "comfyui": "c" * 40,
        "git_custom_nodes": {
            "https://github.com/ltdrdata/ComfyUI-Manager": {"hash": A, "disabled": False},
            "https://github.com/rgthree/rgthree-comfy.git": {"hash": B, "disabled": False},
        },
        "cnr_custom_nodes": {},
        "file_custom_nodes": [],
        "pips": {"numpy": "1.26.4", "pillow": "10.4.0", "torch": "2.4.1+cu124"},
    }


def test_spec_with_a_lock_installs_its_nodes_at_its_commits() -> None:
    spec = InstallSpec.from_dict({"task_id": TASK_ID, "ui_home": "/w/ComfyUI", "lock": LOCK})
    assert [(n.dir_name, n.ref) for n in spec.nodes] == [
        ("ComfyUI-Manager", A),
        ("rgthree-comfy", B),
    ]
    assert spec.update is True and spec.lock is not None
    assert InstallSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ProtocolError) as caught:
        InstallSpec.from_dict(
            {"task_id": TASK_ID, "ui_home": "/w", "lock": LOCK, "nodes": ["https://a.b/c"]}
        )
    assert caught.value.field == "nodes"
    with pytest.raises(ProtocolError) as missing:
        InstallSpec.from_dict({"task_id": TASK_ID, "ui_home": "/w"})
    assert missing.value.field == "nodes"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"verify": "yes"}, "verify"),
        ({"verify": 1}, "verify"),
        ({"verify_timeout": 0}, "verify_timeout"),
    ],
)
def test_verify_fields(changes: dict[str, Any], field: str) -> None:
    base = {"task_id": TASK_ID, "ui_home": "/w", "nodes": ["https://a.b/c"]}
    assert InstallSpec.from_dict({**base, "verify": "comfyui"}).verify == "comfyui"
    with pytest.raises(ProtocolError) as caught:
        InstallSpec.from_dict({**base, **changes})
    assert caught.value.field == field


def test_import_result_travels_as_import() -> None:
    progress = Progress(task_id=TASK_ID, ui_home="/w")
    progress.nodes = [
        NodeProgress(
            "n",
            "https://a.b/n",
            status="failed",
            import_result=ImportResult(
                "failed", seconds=0.5, error="ModuleNotFoundError: No module named 'x'"
            ),
        )
    ]
    progress.warnings = ["careful"]
    doc = progress.to_dict()
    assert doc["nodes"][0]["import"]["error"] == "ModuleNotFoundError: No module named 'x'"
    assert "import_result" not in doc["nodes"][0]
    assert Progress.from_dict(doc) == progress
    doc["nodes"][0]["import"]["status"] = "maybe"
    with pytest.raises(ProtocolError) as caught:
        Progress.from_dict(doc)
    assert caught.value.field == "nodes.0.import.status"
