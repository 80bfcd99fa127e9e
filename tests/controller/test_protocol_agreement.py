"""The controller's pydantic models and the stdlib ``protocol`` package must agree:
every example document is accepted by both or refused by both, and what both
accept comes out the same."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError

from controller.common.errors import InvalidRequest
from controller.core.schemas import InstallRequest, ProgressModel, parse_body
from protocol import InstallSpec, NodeProgress, Progress, ProtocolError

TASK_ID = "3f2b8e0a-5c1d-4e7f-9a2b-1c3d5e7f9a2b"
T0 = "2026-11-29T03:40:00.123Z"
T1 = "2026-11-29T03:41:07.5Z"


def _node(**changes: Any) -> dict[str, Any]:
    node = NodeProgress(name="ComfyUI-Manager", url="https://github.com/ltdrdata/ComfyUI-Manager")
    data = node.to_dict()
    data.update(changes)
    return data


def _doc(**changes: Any) -> dict[str, Any]:
    data = Progress(task_id=TASK_ID, ui_home="/workspace/ComfyUI", started_at=T0, updated_at=T0)
    doc = data.to_dict()
    doc.update(changes)
    return doc


def _in_progress() -> dict[str, Any]:
    progress = Progress(task_id=TASK_ID, ui_home="/workspace/ComfyUI", started_at=T0, updated_at=T1)
    progress.state = "cloning"
    progress.pid = 4242
    progress.boot_id = "b3cd8a1c-8cb4-4c4c-a398-3b39a212238c"
    progress.nodes = [
        NodeProgress(
            "A",
            "https://example.com/a",
            status="installed",
            commit="a" * 40,
            requirements_status="done",
            started_at=T0,
            finished_at=T1,
        ),
        NodeProgress("B", "git://127.0.0.1:9418/b", ref="v1.2", status="cloning", started_at=T1),
        NodeProgress("C", "https://example.com/c", status="pending"),
    ]
    progress.recount()
    progress.current_node = "B"
    progress.current_status = "running"
    progress.log_file = "/root/.nodeferry/tasks/x/agent.log"
    return progress.to_dict()


def _finished(state: str, **changes: Any) -> dict[str, Any]:
    doc = _in_progress()
    doc.update(state=state, finished_at=T1, exit_code=1, current_node=None, current_status=None)
    doc.update(changes)
    return doc


VALID_DOCUMENTS = {
    "starting": _doc(),
    "in_progress": _in_progress(),
    "completed": _finished("completed", exit_code=0),
    "failed_conflict": _finished("failed", error="busy", error_code="conflict"),
    "lost": _finished("lost", error="the agent died", error_code="lost"),
    "cancelled": _finished("cancelled", error_code="cancelled"),
    "short_fraction_time": _doc(updated_at="2026-11-29T03:40:00.1Z"),
    "node_with_error": _doc(nodes=[_node(status="failed", error="clone failed: not found")]),
    "node_warnings": _doc(
        nodes=[
            _node(
                status="installed",
                install_script_status="done",
                warnings=["install.py printed a traceback: ModuleNotFoundError: x"],
            )
        ]
    ),
    "packages_and_warnings": _finished(
        "completed",
        exit_code=0,
        installer="uv",
        warnings=["numpy downgraded 2.4.6 -> 1.26.4 (ComfyUI-Impact-Pack: numpy<2)"],
        packages={
            "added": {"gguf": [None, "0.19.0"]},
            "downgraded": {"numpy": ["2.4.6", "1.26.4"]},
            "removed": {"old": ["1.0", None]},
        },
    ),
    "restarting": _doc(state="restarting", current_status="restarting ComfyUI"),
    "ready_missing": _finished(
        "completed",
        error="the running ComfyUI lacks 1 class(es) the workflow needs: X",
        ready={
            "restarted_by": "supervisor",
            "classes": 812,
            "missing": ["X"],
            "seconds": 14.2,
            "port": 8188,
            "pid": 4242,
            "service": "comfyui",
            "note": None,
        },
    ),
    "ready_note_only": _finished(
        "completed", exit_code=0, ready={"note": "no running ComfyUI found for this home"}
    ),
    "not_ready": _finished(
        "failed", error="did not answer", error_code="not_ready", ready={"restarted_by": "process"}
    ),
    "minimal": {
        "schema": 1,
        "task_id": TASK_ID,
        "ui_home": "/x",
        "state": "starting",
        "started_at": T0,
        "updated_at": T0,
    },
}


def _without(key: str) -> dict[str, Any]:
    doc = _doc()
    del doc[key]
    return doc


INVALID_DOCUMENTS = {
    "schema_2": _doc(schema=2),
    "schema_missing": _without("schema"),
    "task_id_missing": _without("task_id"),
    "updated_at_missing": _without("updated_at"),
    "uppercase_task_id": _doc(task_id=TASK_ID.upper()),
    "task_id_not_uuid": _doc(task_id="../../etc/passwd"),
    "task_id_uuid1": _doc(task_id="6ba7b810-9dad-11d1-80b4-00c04fd430c8"),
    "unknown_field": _doc(colour="blue"),
    "unknown_state": _doc(state="dancing"),
    "negative_count": _doc(processed=-1),
    "bool_count": _doc(failed=True),
    "string_count": _doc(total_nodes="3"),
    "float_pid": _doc(pid=12.0),
    "bad_time": _doc(started_at="2026-11-29 03:40:00"),
    "time_without_fraction": _doc(started_at="2026-11-29T03:40:00Z"),
    "impossible_date": _doc(started_at="2026-13-29T03:40:00.000Z"),
    "has_requirements_string": _doc(has_requirements="yes"),
    "bad_requirements_status": _doc(requirements_status="maybe"),
    "bad_error_code": _doc(error_code="oops"),
    "nodes_not_list": _doc(nodes={"a": 1}),
    "node_unknown_field": _doc(nodes=[_node(extra=1)]),
    "node_missing_url": _doc(nodes=[{"name": "a", "status": "pending"}]),
    "node_bad_status": _doc(nodes=[_node(status="sleeping")]),
    "node_bad_time": _doc(nodes=[_node(started_at="yesterday")]),
    "node_not_object": _doc(nodes=["a"]),
    "ui_home_number": _doc(ui_home=5),
    "node_warning_number": _doc(nodes=[_node(warnings=[5])]),
    "node_warnings_string": _doc(nodes=[_node(warnings="oops")]),
    "node_bad_install_script_status": _doc(nodes=[_node(install_script_status="maybe")]),
    "warnings_not_list": _doc(warnings="numpy went down"),
    "packages_bad_kind": _doc(packages={"sideways": {"numpy": ["1", "2"]}}),
    "packages_pair_too_long": _doc(packages={"added": {"numpy": [None, "2", "3"]}}),
    "packages_pair_not_list": _doc(packages={"added": {"numpy": "2"}}),
    "packages_version_number": _doc(packages={"added": {"numpy": [None, 2]}}),
    "packages_not_object": _doc(packages=["numpy"]),
    "ready_bad_restarted_by": _doc(ready={"restarted_by": "magic"}),
    "ready_unknown_field": _doc(ready={"colour": "blue"}),
    "ready_negative_classes": _doc(ready={"classes": -1}),
    "ready_bool_classes": _doc(ready={"classes": True}),
    "ready_missing_not_list": _doc(ready={"missing": "X"}),
    "ready_missing_number": _doc(ready={"missing": [5]}),
    "ready_negative_seconds": _doc(ready={"seconds": -1.0}),
    "ready_not_object": _doc(ready=["x"]),
    "not_an_object": [1, 2, 3],
}


def _protocol(doc: Any) -> dict[str, Any] | None:
    try:
        return Progress.from_dict(copy.deepcopy(doc)).to_dict()
    except ProtocolError:
        return None


def _pydantic(doc: Any) -> dict[str, Any] | None:
    try:
        return ProgressModel.model_validate(copy.deepcopy(doc)).to_document()
    except ValidationError:
        return None


@pytest.mark.parametrize("name", sorted(VALID_DOCUMENTS))
def test_valid_documents_agree(name: str) -> None:
    doc = VALID_DOCUMENTS[name]
    by_protocol = _protocol(doc)
    by_pydantic = _pydantic(doc)
    assert by_protocol is not None, "protocol refused a valid document"
    assert by_pydantic is not None, "pydantic refused a valid document"
    assert by_protocol == by_pydantic
    # And the round trip is stable through both.
    assert _pydantic(by_protocol) == by_protocol
    assert _protocol(by_pydantic) == by_pydantic


@pytest.mark.parametrize("name", sorted(INVALID_DOCUMENTS))
def test_invalid_documents_agree(name: str) -> None:
    doc = INVALID_DOCUMENTS[name]
    assert _protocol(doc) is None, "protocol accepted an invalid document"
    assert _pydantic(doc) is None, "pydantic accepted an invalid document"


# -- specs: the HTTP body (pydantic) + InstallSpec must accept exactly what protocol does --

BASE_REQUEST = {
    "ssh_connection": "root@127.0.0.1 -p 2222",
    "ui_home": "/workspace/ComfyUI",
    "nodes": [
        "https://github.com/ltdrdata/ComfyUI-Manager",
        "https://github.com/a/b@v1.2",
        {"url": "https://github.com/c/d", "ref": "3f2a9c1"},
    ],
    "python": "/venv/main/bin/python",
    "pip_args": [],
    "jobs": 4,
    "update": False,
}

LOCK_NODE = {"name": "x", "url": "https://github.com/a/x", "commit": "a" * 40}
LOCK = {
    "schema": 1,
    "created_at": "2026-01-31T12:00:00.000Z",
    "ui_home": "/workspace/ComfyUI",
    "nodes": [LOCK_NODE],
    "packages": {"tinydep": "1.0"},
}

SPEC_CASES: dict[str, tuple[dict[str, Any], str | None]] = {
    # name: (changes to the request, the field both must name — None if valid)
    "seed_example": ({}, None),
    "minimal": ({"python": None, "pip_args": None, "jobs": 1}, None),
    "pip_args": ({"pip_args": ["--no-index", "--find-links", "/wh"]}, None),
    "home_relative": ({"ui_home": "~/ComfyUI"}, None),
    "named_node": ({"nodes": [{"url": "https://h/x/y.git", "name": "Y"}]}, None),
    "jobs_string": ({"jobs": "4"}, "jobs"),
    "jobs_zero": ({"jobs": 0}, "jobs"),
    "jobs_huge": ({"jobs": 1000}, "jobs"),
    "jobs_bool": ({"jobs": True}, "jobs"),
    "clone_jobs_max": ({"clone_jobs": 64}, None),
    "clone_jobs_zero": ({"clone_jobs": 0}, "clone_jobs"),
    "clone_jobs_huge": ({"clone_jobs": 65}, "clone_jobs"),
    "clone_jobs_string": ({"clone_jobs": "8"}, "clone_jobs"),
    "update_string": ({"update": "yes"}, "update"),
    "nodes_empty": ({"nodes": []}, "nodes"),
    "nodes_string": ({"nodes": "https://h/a/b"}, "nodes"),
    "pip_args_string": ({"pip_args": "--no-index"}, "pip_args"),
    "pip_args_bad_option": ({"pip_args": ["--upgrade"]}, "pip_args.0"),
    "ui_home_number": ({"ui_home": 7}, "ui_home"),
    "ui_home_semicolon": ({"ui_home": "/w; rm -rf /"}, "ui_home"),
    "ui_home_dotdot": ({"ui_home": "/w/../etc"}, "ui_home"),
    "node_ext": ({"nodes": ["ext::sh -c touch% /tmp/x"]}, "nodes.0"),
    "node_upload_pack": ({"nodes": ["--upload-pack=touch /tmp/x"]}, "nodes.0"),
    "node_file": ({"nodes": ["file:///etc"]}, "nodes.0"),
    "node_object_bad_url": ({"nodes": [{"url": 5}]}, "nodes.0.url"),
    "node_object_extra": ({"nodes": [{"url": "https://h/a/b", "x": 1}]}, "nodes.0"),
    "node_bad_ref": ({"nodes": ["https://h/a/b@../../x"]}, "nodes.0"),
    "python_injection": ({"python": "python3; id"}, "python"),
    "verify_false": ({"verify": False}, None),
    "verify_comfyui": ({"verify": "comfyui", "verify_timeout": 30}, None),
    "verify_import": ({"verify": "import"}, None),
    "verify_string": ({"verify": "yes"}, "verify"),
    "verify_timeout_huge": ({"verify_timeout": 1e6}, "verify_timeout"),
    "lock": ({"nodes": None, "lock": LOCK}, None),
    "lock_and_nodes": ({"lock": LOCK}, "nodes"),
    "lock_bad_commit": (
        {"nodes": None, "lock": {**LOCK, "nodes": [{**LOCK_NODE, "commit": "HEAD"}]}},
        "lock.nodes.0.commit",
    ),
    "lock_not_object": ({"nodes": None, "lock": "{}"}, "lock"),
    "no_nodes_no_lock": ({"nodes": None}, "nodes"),
    "restart_auto": ({"restart": "auto"}, None),
    "restart_never_ready_check": ({"restart": "never", "ready_check": True}, None),
    "restart_command": ({"restart": {"command": ["supervisorctl", "start", "x"]}}, None),
    "restart_ready_timeout": ({"restart": "auto", "ready_timeout": 30}, None),
    "restart_unknown": ({"restart": "always"}, "restart"),
    "restart_true": ({"restart": True}, "restart"),
    "restart_shell_string": ({"restart": {"command": "systemctl restart x"}}, "restart.command"),
    "restart_empty_command": ({"restart": {"command": []}}, "restart.command"),
    "restart_command_number": ({"restart": {"command": ["a", 5]}}, "restart.command.1"),
    "restart_command_nul": ({"restart": {"command": ["a\0b"]}}, "restart.command.0"),
    "restart_extra_key": ({"restart": {"command": ["a"], "shell": True}}, "restart"),
    "ready_check_string": ({"ready_check": "yes"}, "ready_check"),
    "ready_timeout_zero": ({"ready_timeout": 0}, "ready_timeout"),
    "ready_timeout_huge": ({"ready_timeout": 1e6}, "ready_timeout"),
}


def _controller_pipeline(body: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """What the HTTP handler does: pydantic shape check, then InstallSpec."""
    try:
        request = parse_body(InstallRequest, {k: v for k, v in body.items() if v is not None})
        nodes = {"nodes": request.nodes} if request.nodes is not None else {}
        spec = InstallSpec.from_dict(
            {
                **nodes,
                "task_id": TASK_ID,
                "ui_home": request.ui_home,
                "python": request.python,
                "pip_args": request.pip_args or [],
                "jobs": request.jobs,
                "clone_jobs": request.clone_jobs,
                "update": request.update,
                "verify": request.verify,
                "verify_timeout": request.verify_timeout,
                "lock": request.lock,
                "restart": request.restart,
                "ready_check": request.ready_check,
                "ready_timeout": request.ready_timeout,
            }
        )
    except InvalidRequest as exc:
        return None, exc.field
    except ProtocolError as exc:
        return None, exc.field
    return spec.to_dict(), None


def _protocol_spec(body: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    data = {k: v for k, v in body.items() if k != "ssh_connection" and v is not None}
    data["task_id"] = TASK_ID
    if data.get("pip_args") is None:
        data["pip_args"] = []
    try:
        return InstallSpec.from_dict(data).to_dict(), None
    except ProtocolError as exc:
        return None, exc.field


@pytest.mark.parametrize("name", sorted(SPEC_CASES))
def test_specs_agree(name: str) -> None:
    changes, expected_field = SPEC_CASES[name]
    body = {**BASE_REQUEST, **changes}
    by_controller, controller_field = _controller_pipeline(body)
    by_protocol, protocol_field = _protocol_spec(body)
    if expected_field is None:
        assert by_controller is not None and by_protocol is not None
        assert by_controller == by_protocol
        assert InstallSpec.from_dict(by_controller).to_dict() == by_controller
    else:
        assert by_controller is None and by_protocol is None
        assert controller_field == expected_field
        assert protocol_field == expected_field
