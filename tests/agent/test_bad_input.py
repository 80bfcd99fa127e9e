"""Bad input gets a clear error (exit 2) and touches nothing: no task, no clone, no command."""

import json
from pathlib import Path
from typing import Any

import pytest

from controller.sandbox.comfy import ComfyHome
from tests.agent.conftest import Agent, Repos

pytestmark = pytest.mark.timeout(60)


def call(agent: Agent, *args: str, input: str = "", expect: int = 2) -> Any:
    """The CLI in this process (fast: these cases never start a worker), JSON answer."""
    import io
    import sys
    from contextlib import redirect_stdout

    from agent.cli import main

    out = io.StringIO()
    saved = sys.stdin
    sys.stdin = io.StringIO(input)
    try:
        with redirect_stdout(out):
            code = main(["--state-dir", str(agent.state_dir), *args])
    finally:
        sys.stdin = saved
    assert code == expect, (code, out.getvalue())
    return json.loads(out.getvalue())


GOOD = "https://github.com/comfyanonymous/ComfyUI_examples"


def _node_cases(tmp_path: Path) -> list[tuple[str, Any, str, str]]:
    marker = tmp_path / "pwned"
    return [
        ("ftp scheme", "ftp://example.com/x.git", "nodes.0", "scheme 'ftp' is not allowed"),
        ("file scheme without the flag", "file:///srv/repo", "nodes.0", "not allowed"),
        ("remote helper", f"ext::sh -c touch% {marker}", "nodes.0", "whitespace"),
        ("remote helper without spaces", "ext::touch", "nodes.0", "remote-helper URLs"),
        ("leading dash", "--upload-pack=touch", "nodes.0", "must not start with '-'"),
        ("whitespace", "https://example.com/a b", "nodes.0", "whitespace"),
        ("control character", "https://example.com/a\x07b", "nodes.0", "control characters"),
        ("newline", "https://example.com/a\nb", "nodes.0", "control characters"),
        ("query string", "https://example.com/a?x=1", "nodes.0", "query"),
        ("name with slash", {"url": GOOD, "name": "a/b"}, "nodes.0.name", "one directory name"),
        ("name with backslash", {"url": GOOD, "name": "a\\b"}, "nodes.0.name", "directory"),
        ("name dot-dot", {"url": GOOD, "name": ".."}, "nodes.0.name", "directory"),
        ("hidden name", {"url": GOOD, "name": ".hidden"}, "nodes.0.name", "leading '.'"),
        ("name from url unsafe", "https://example.com/..", "nodes.0", "give 'name'"),
        (
            "ref like an option",
            {"url": GOOD, "ref": "--upload-pack=x"},
            "nodes.0.ref",
            "valid branch",
        ),
        ("ref with dot-dot", {"url": GOOD, "ref": "a..b"}, "nodes.0.ref", "valid branch"),
        ("unknown node field", {"url": GOOD, "post_install": "x"}, "nodes.0", "unknown"),
    ]


def _assert_untouched(agent: Agent, home: ComfyHome) -> None:
    tasks = agent.state_dir / "tasks"
    assert not tasks.exists() or list(tasks.iterdir()) == []
    assert home.node_dirs() == []


@pytest.mark.parametrize(
    "case", range(17), ids=[c[0].replace(" ", "-") for c in _node_cases(Path("/x"))]
)
def test_bad_node_is_refused(
    case: int, agent: Agent, bare_comfy: ComfyHome, tmp_path: Path
) -> None:
    label, node, field, fragment = _node_cases(tmp_path)[case]
    spec = agent.spec(bare_comfy.root, [GOOD, node])
    # The bad node is the second one: nothing is installed, not even the good first node.
    field = field.replace("nodes.0", "nodes.1")
    body = call(agent, "start", "--spec", "-", input=json.dumps(spec))
    assert body["error"] == "invalid_spec", label
    assert body["field"] == field, (label, body)
    assert fragment in body["message"], (label, body)
    _assert_untouched(agent, bare_comfy)
    assert not (tmp_path / "pwned").exists()


def test_file_urls_need_the_explicit_flag(
    agent: Agent, bare_comfy: ComfyHome, repos: Repos
) -> None:
    url = f"file://{repos.plain.bare}"
    spec = agent.spec(bare_comfy.root, [url])
    refused = agent.json("run", "--spec", "-", input=json.dumps(spec), expect=2)
    assert refused["field"] == "nodes.0"
    _assert_untouched(agent, bare_comfy)
    spec["allow_file_urls"] = True
    done = agent.json("run", "--spec", "-", input=json.dumps(spec), expect=0)
    assert done["nodes"][0]["status"] == "installed"
    assert done["nodes"][0]["commit"] == repos.plain.head


@pytest.mark.parametrize(
    ("change", "field", "fragment"),
    [
        ({"task_id": "not-a-uuid"}, "task_id", "UUID"),
        ({"task_id": "0b3c2f4e-8f1d-1c1a-9a53-2f1f8d7e6c5b"}, "task_id", "UUID4"),
        ({"ui_home": "relative/ComfyUI"}, "ui_home", "absolute"),
        ({"ui_home": "/nonexistent/ComfyUI"}, "ui_home", "does not exist"),
        ({"ui_home": "/tmp/$(touch x)"}, "ui_home", "no quotes"),
        ({"jobs": 0}, "jobs", "from 1"),
        ({"clone_jobs": 65}, "clone_jobs", "from 1 to 64"),
        ({"update": "yes"}, "update", "true or false"),
        ({"pip_args": ["--target", "/"]}, "pip_args.0", "not allowed"),
        ({"pip_args": ["--index-url"]}, "pip_args.0", "needs a value"),
        ({"python": "python3; rm -rf /"}, "python", "no quotes"),
        ({"python": "/nonexistent/bin/python"}, "python", "does not exist"),
        ({"python": "no-such-python-command"}, "python", "does not exist"),
        ({"nodes": []}, "nodes", "at least one"),
        ({"surprise": 1}, None, "unknown field"),
    ],
)
def test_bad_spec_is_refused(
    change: dict[str, Any], field: str | None, fragment: str, agent: Agent, bare_comfy: ComfyHome
) -> None:
    spec = agent.spec(bare_comfy.root, [GOOD])
    spec.update(change)
    for command in ("start", "run"):
        body = call(agent, command, "--spec", "-", input=json.dumps(spec))
        assert body["error"] == "invalid_spec"
        assert body["field"] == field, body
        assert fragment in body["message"], body
    _assert_untouched(agent, bare_comfy)


def test_comfy_home_must_look_like_comfyui(agent: Agent, tmp_path: Path) -> None:
    not_comfy = tmp_path / "Documents"
    not_comfy.mkdir()
    spec = agent.spec(not_comfy, [GOOD])
    body = agent.json("start", "--spec", "-", input=json.dumps(spec), expect=2)
    assert body["field"] == "ui_home"
    assert "does not look like ComfyUI" in body["message"]
    assert list(not_comfy.iterdir()) == []
    assert not (agent.state_dir / "tasks").exists()


def test_spec_that_is_not_json(agent: Agent, bare_comfy: ComfyHome) -> None:
    body = agent.json("start", "--spec", "-", input="{nope", expect=2)
    assert body["error"] == "invalid_spec"
    assert "not valid JSON" in body["message"]
    missing = agent.json("start", "--spec", "/nonexistent/spec.json", expect=2)
    assert "cannot read the spec" in missing["message"]
    _assert_untouched(agent, bare_comfy)


def test_reused_task_id_is_refused(agent: Agent, bare_comfy: ComfyHome, repos: Repos) -> None:
    spec = agent.spec(bare_comfy.root, [repos.plain.url])
    agent.json("run", "--spec", "-", input=json.dumps(spec), expect=0)
    again = agent.json("start", "--spec", "-", input=json.dumps(spec), expect=2)
    assert again["field"] == "task_id"
    assert "already exists" in again["message"]


def test_unknown_arguments_are_a_json_error(agent: Agent) -> None:
    body = agent.json("start", "--frobnicate", expect=2)
    assert body["error"] == "invalid_argument"
    assert agent.json("cleanup", "--older-than", "-5", expect=2)["error"] == "invalid_argument"
    assert agent.json(expect=2)["error"] == "invalid_argument"


def test_install_command_reports_bad_urls_readably(agent: Agent, bare_comfy: ComfyHome) -> None:
    result = agent.run("install", "--ui-home", str(bare_comfy.root), "ext::sh")
    assert result.returncode == 2
    assert result.stderr.startswith("error: NODE 1: ")  # counted as the command line does
    assert "remote-helper" in result.stderr
    assert "Traceback" not in result.stderr
    _assert_untouched(agent, bare_comfy)
