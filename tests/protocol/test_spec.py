from typing import Any

import pytest

from protocol import InstallSpec, NodeSpec, ProtocolError, parse_node

pytestmark = pytest.mark.timeout(10)

TASK_ID = "3f2a5b8e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"


def spec(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "task_id": TASK_ID,
        "ui_home": "/workspace/ComfyUI",
        "nodes": ["https://github.com/ltdrdata/ComfyUI-Manager"],
    }
    base.update(overrides)
    return base


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://github.com/a/b", NodeSpec("https://github.com/a/b")),
        ("https://github.com/a/b@v1.2", NodeSpec("https://github.com/a/b", "v1.2")),
        ("https://github.com/a/b@feature/x", NodeSpec("https://github.com/a/b", "feature/x")),
        ("https://user@host.org/a/b", NodeSpec("https://user@host.org/a/b")),
        ("https://user@host.org/a/b@main", NodeSpec("https://user@host.org/a/b", "main")),
        ("git@github.com:a/b.git", NodeSpec("git@github.com:a/b.git")),
        ("git@github.com:a/b.git@3f2a5b8", NodeSpec("git@github.com:a/b.git", "3f2a5b8")),
    ],
)
def test_url_at_ref_shorthand(text: str, expected: NodeSpec) -> None:
    assert parse_node(text) == expected


def test_node_object_form_and_derived_directory() -> None:
    node = parse_node({"url": "https://github.com/c/d.git", "ref": "3f2a5b8", "name": "D"})
    assert node == NodeSpec("https://github.com/c/d.git", "3f2a5b8", "D")
    assert node.dir_name == "D"
    assert parse_node("https://github.com/c/d.git").dir_name == "d"


@pytest.mark.parametrize(
    ("node", "field"),
    [
        ({"url": "https://github.com/a/b", "extra": 1}, "nodes.0"),
        ({"ref": "main"}, "nodes.0.url"),
        ({"url": "https://github.com/a/b", "ref": "--orphan"}, "nodes.0.ref"),
        ({"url": "https://github.com/a/b", "name": "../x"}, "nodes.0.name"),
        ("https://github.com/a/..", "nodes.0"),
        ("ext::sh -c id", "nodes.0"),
        (7, "nodes.0"),
    ],
)
def test_bad_nodes_name_the_field(node: object, field: str) -> None:
    with pytest.raises(ProtocolError) as info:
        InstallSpec.from_dict(spec(nodes=[node]))
    assert info.value.field == field


def test_full_spec_round_trips_through_json() -> None:
    original = InstallSpec.from_dict(
        spec(
            nodes=["https://github.com/a/b@v1", {"url": "https://github.com/c/d", "name": "dd"}],
            python="/venv/main/bin/python",
            pip_args=["--no-index", "--find-links", "/wheels"],
            jobs=8,
            clone_jobs=24,
            update=True,
        )
    )
    again = InstallSpec.from_json(original.to_json())
    assert again == original
    assert again.nodes[0].ref == "v1"
    assert again.jobs == 8
    assert again.clone_jobs == 24


def test_defaults() -> None:
    parsed = InstallSpec.from_dict(spec())
    assert (parsed.jobs, parsed.update, parsed.pip_args, parsed.python) == (4, False, [], None)
    assert parsed.allow_file_urls is False
    assert parsed.clone_jobs == 16


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"jobs": 0}, "jobs"),
        ({"jobs": 33}, "jobs"),
        ({"jobs": True}, "jobs"),
        ({"jobs": "4"}, "jobs"),
        ({"clone_jobs": 0}, "clone_jobs"),
        ({"clone_jobs": 65}, "clone_jobs"),
        ({"clone_jobs": True}, "clone_jobs"),
        ({"clone_jobs": 8.0}, "clone_jobs"),
        ({"update": "yes"}, "update"),
        ({"nodes": []}, "nodes"),
        ({"nodes": "https://github.com/a/b"}, "nodes"),
        ({"ui_home": "/w/$(id)"}, "ui_home"),
        ({"task_id": "../../etc/passwd"}, "task_id"),
        ({"python": "python; id"}, "python"),
        ({"pip_args": ["--target", "/"]}, "pip_args.0"),
        ({"surprise": 1}, ""),
    ],
)
def test_bad_fields_are_named(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ProtocolError) as info:
        InstallSpec.from_dict(spec(**overrides))
    assert info.value.field == field


def test_missing_required_fields() -> None:
    for required in ("task_id", "ui_home", "nodes"):
        data = spec()
        del data[required]
        with pytest.raises(ProtocolError) as info:
            InstallSpec.from_dict(data)
        assert info.value.field == required


def test_two_nodes_into_one_directory_are_refused() -> None:
    with pytest.raises(ProtocolError) as info:
        InstallSpec.from_dict(spec(nodes=["https://github.com/a/x", "https://gitlab.com/b/X.git"]))
    assert info.value.field == "nodes.1"
    assert "give one of them a 'name'" in info.value.message


def test_file_urls_only_with_the_flag() -> None:
    with pytest.raises(ProtocolError):
        InstallSpec.from_dict(spec(nodes=["file:///srv/a"]))
    parsed = InstallSpec.from_dict(spec(nodes=["file:///srv/a"], allow_file_urls=True))
    assert parsed.nodes[0].url == "file:///srv/a"


def test_invalid_json_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="not valid JSON"):
        InstallSpec.from_json("{nope")
    with pytest.raises(ProtocolError, match="JSON object"):
        InstallSpec.from_json("[]")
