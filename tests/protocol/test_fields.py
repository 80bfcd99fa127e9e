import pytest

from protocol import ProtocolError, fields

pytestmark = pytest.mark.timeout(10)

TASK_ID = "3f2a5b8e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"


def test_task_id_accepts_canonical_uuid4() -> None:
    assert fields.task_id(TASK_ID) == TASK_ID
    assert fields.task_id(fields.new_task_id())


@pytest.mark.parametrize(
    "value",
    [
        "../../etc/passwd",
        "",
        TASK_ID.upper(),  # not canonical: ids name directories, one spelling only
        TASK_ID.replace("-", ""),
        "3f2a5b8e-1c2d-1e5f-8a9b-0c1d2e3f4a5b",  # version 1
        TASK_ID + "\n",
        "{" + TASK_ID + "}",
        42,
        None,
    ],
)
def test_task_id_rejects_everything_else(value: object) -> None:
    with pytest.raises(ProtocolError) as info:
        fields.task_id(value)
    assert info.value.field == "task_id"


@pytest.mark.parametrize(
    "url",
    [
        "https://github.com/ltdrdata/ComfyUI-Manager",
        "https://github.com/ltdrdata/ComfyUI-Manager.git",
        "http://127.0.0.1:8080/a/b",
        "git://127.0.0.1:9418/a",
        "ssh://git@github.com/a/b.git",
        "git@github.com:a/b.git",
        "https://user@example.com/a/b",
    ],
)
def test_git_url_accepts_clonable_urls(url: str) -> None:
    assert fields.git_url(url) == url


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ext::sh -c touch% /tmp/pwned", "whitespace"),
        ("ext::sh", "remote-helper"),
        ("fd::17", "remote-helper"),
        ("--upload-pack=touch /tmp/x", "whitespace"),
        ("--upload-pack=id", "'-'"),
        ("-oProxyCommand=id", "'-'"),
        ("file:///etc", "scheme 'file'"),
        ("ftp://example.com/a", "scheme 'ftp'"),
        ("https://github.com/a/b\nid", "control"),
        ("https://github.com/a/b c", "whitespace"),
        ("https:///a/b", "host"),
        ("https://exa mple.com/a", "whitespace"),
        ("https://github.com/a/b?x=1", "query"),
        ("https://gïthub.com/a/b", "ASCII"),
        ("/local/path", "https, http, ssh or git"),
        ("", "empty"),
        ("https://github.com:99999/a", "port"),
    ],
)
def test_git_url_rejects_hostile_or_unsupported(url: str, why: str) -> None:
    with pytest.raises(ProtocolError) as info:
        fields.git_url(url)
    assert why in str(info.value)


def test_file_urls_need_the_explicit_flag() -> None:
    assert fields.git_url("file:///srv/repos/a", allow_file=True) == "file:///srv/repos/a"
    with pytest.raises(ProtocolError):
        fields.git_url("file://otherhost/srv/a", allow_file=True)


@pytest.mark.parametrize("ref", ["main", "v1.2.3", "feature/x", "3f2a5b8e1c2d", "release-1_0+b"])
def test_git_ref_accepts_branches_tags_and_commits(ref: str) -> None:
    assert fields.git_ref(ref) == ref


@pytest.mark.parametrize(
    "ref", ["-b", "--orphan", "a..b", "a b", "x\n", "refs/heads/x.lock", "a//b", "/x", "~1"]
)
def test_git_ref_rejects_options_and_odd_syntax(ref: str) -> None:
    with pytest.raises(ProtocolError):
        fields.git_ref(ref)


@pytest.mark.parametrize("name", ["ComfyUI-Manager", "was_node_suite", "a.b", "x+y"])
def test_node_name_accepts_directory_names(name: str) -> None:
    assert fields.node_name(name) == name


@pytest.mark.parametrize("name", ["..", ".hidden", "a/b", "a\\b", "a..b", "", "a b", "-x"])
def test_node_name_rejects_paths_and_hidden_names(name: str) -> None:
    with pytest.raises(ProtocolError):
        fields.node_name(name)


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("https://github.com/a/ComfyUI-Manager", "ComfyUI-Manager"),
        ("https://github.com/a/b.git", "b"),
        ("https://github.com/a/b/", "b"),
        ("git@github.com:a/c.git", "c"),
    ],
)
def test_name_from_url_is_what_git_would_make(url: str, name: str) -> None:
    assert fields.name_from_url(url) == name


@pytest.mark.parametrize(
    "path", ["/workspace/ComfyUI", "~/ComfyUI", "/opt/My ComfyUI", "/a/b-c_d.e/f+g@h,i=j:k"]
)
def test_remote_path_accepts_plain_absolute_paths(path: str) -> None:
    assert fields.remote_path(path, "ui_home") == path


@pytest.mark.parametrize(
    "path",
    [
        "/workspace/ComfyUI; rm -rf /",
        "/workspace/$(id)",
        "/workspace/`id`",
        "/workspace/ComfyUI\n",
        "/workspace/Com'fy",
        '/workspace/Com"fy',
        "/workspace/../etc",
        "..",
        "relative/path",
        "/a/~/b",
        " /leading-space",
        "/trailing-space ",
        "/wörkspace",
        "/a|b",
        "/a&b",
    ],
)
def test_remote_path_rejects_shell_syntax_and_traversal(path: str) -> None:
    with pytest.raises(ProtocolError) as info:
        fields.remote_path(path, "ui_home")
    assert info.value.field == "ui_home"


def test_python_command_is_a_bare_name_or_a_path() -> None:
    assert fields.python_command("python3") == "python3"
    assert fields.python_command("/venv/main/bin/python") == "/venv/main/bin/python"
    with pytest.raises(ProtocolError):
        fields.python_command("python3 -c 'import os'")
    with pytest.raises(ProtocolError):
        fields.python_command("-c")


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--index-url", "https://download.pytorch.org/whl/cu121"],
        ["--index-url=https://x/simple", "--no-index", "--find-links", "/wheels"],
        ["-i", "https://x/simple", "--trusted-host", "x", "--pre"],
    ],
)
def test_pip_args_accepts_the_allow_list(args: list[str]) -> None:
    assert fields.pip_args(args) == args


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--target", "/"], "pip_args.0"),
        (["--index-url"], "pip_args.0"),
        (["--index-url", "--no-index"], "pip_args.1"),
        (["--no-index=1"], "pip_args.0"),
        (["--index-url=", "x"], "pip_args.0"),
        (["-r", "/etc/passwd"], "pip_args.0"),
        (["--find-links", "a b"], "pip_args.1"),
        ("--no-index", "pip_args"),
        ([1], "pip_args.0"),
    ],
)
def test_pip_args_rejects_the_rest_naming_the_item(args: object, field: str) -> None:
    with pytest.raises(ProtocolError) as info:
        fields.pip_args(args)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("//workspace/ComfyUI", "/workspace/ComfyUI"),
        ("/./workspace/ComfyUI/", "/workspace/ComfyUI"),
        ("/workspace//ComfyUI/.", "/workspace/ComfyUI"),
        ("/workspace/ComfyUI", "/workspace/ComfyUI"),
        ("/", "/"),
        ("///", "/"),
        ("~/", "~"),
        ("~/./ComfyUI//", "~/ComfyUI"),
    ],
)
def test_remote_paths_are_canonical(given: str, canonical: str) -> None:
    assert fields.remote_path(given, "ui_home") == canonical


@pytest.mark.parametrize(
    "url",
    [
        "ssh://-oProxyCommand=touch%20x@github.com/a/b",
        "ssh://%2DoProxyCommand=x@github.com/a/b",
        "ssh://-u:pw@github.com/a/b",
        "git://-x@github.com/a/b",
    ],
)
def test_url_users_never_start_with_a_dash(url: str) -> None:
    with pytest.raises(ProtocolError, match="user name"):
        fields.git_url(url)
