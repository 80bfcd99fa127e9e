"""Units of what real packs need: requirement files as written, culprit bisection,
package diffs, install.py warnings, installer choice, completion records, folder modes."""

import os
import stat
from collections.abc import Sequence
from pathlib import Path

import pytest

from agent import bisect, envdiff, install_script, installer, procs, reqfile, requirements
from agent import git as gitmod
from agent.completion import Completion, records_path
from agent.tasklog import TaskLog
from protocol import InstallSpec, Progress, ProtocolError
from protocol.fields import new_task_id
from tests.agent.conftest import Repos

pytestmark = pytest.mark.timeout(60)


# -- requirements as packs write them ----------------------------------------------------


def _node(tmp_path: Path, files: dict[str, bytes | str]) -> Path:
    node = tmp_path / "node"
    for name, content in files.items():
        path = node / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            content = content.encode()
        path.write_bytes(content)
    return node


def test_bom_crlf_comments_markers_and_urls_are_batched(tmp_path: Path) -> None:
    text = (
        "\ufeff# a comment line\r\n"
        "numpy<2  # trailing comment\r\n"
        "\r\n"
        'pywin32; sys_platform == "win32"\r\n'
        "gguf>=0.13.0 \\\r\n"
        "  ; python_version >= '3.8'\r\n"
        "mylib @ git+https://github.com/a/mylib@v1\r\n"
        "git+https://github.com/a/other.git#egg=other\r\n"
    )
    node = _node(tmp_path, {"requirements.txt": text.encode("utf-8")})
    reqs = reqfile.read_node(node)
    assert reqs is not None
    assert reqs.lines == [
        "numpy<2",
        'pywin32; sys_platform == "win32"',
        "gguf>=0.13.0   ; python_version >= '3.8'",
        "mylib @ git+https://github.com/a/mylib@v1",
        "git+https://github.com/a/other.git#egg=other",
    ]
    assert reqs.alone == [] and reqs.options == []
    assert "\ufeff" not in reqs.batch_text() and "\r" not in reqs.batch_text()


def test_index_options_join_the_batch_and_paths_are_made_absolute(tmp_path: Path) -> None:
    node = _node(
        tmp_path,
        {
            "requirements.txt": (
                "--extra-index-url https://download.pytorch.org/whl/cu121\n"
                "--find-links=./wheels\n"
                "-i https://mirror.example/simple\n"
                "-c constraints.txt\n"
                "--pre\n"
                "-r more/extra.txt\n"
                "./wheels/tinydep-1.0-py3-none-any.whl\n"
            ),
            "more/extra.txt": "otherdep\n",
            "wheels/tinydep-1.0-py3-none-any.whl": b"",
            "constraints.txt": "",
        },
    )
    reqs = reqfile.read_node(node)
    assert reqs is not None
    root = node.resolve()
    assert reqs.options == [
        ["--extra-index-url", "https://download.pytorch.org/whl/cu121"],
        ["--find-links", str(root / "wheels")],
        ["--extra-index-url", "https://mirror.example/simple"],  # never replaces the batch's
        ["-c", str(root / "constraints.txt")],
        ["--pre"],
    ]
    assert reqs.lines == ["otherdep", str(root / "wheels" / "tinydep-1.0-py3-none-any.whl")]
    assert any("extra index" in note for note in reqs.notes)


def test_editable_and_local_projects_are_installed_alone(tmp_path: Path) -> None:
    node = _node(
        tmp_path,
        {
            "requirements.txt": "-e .\n./vendor/lib\ntinydep\n",
            "vendor/lib/setup.py": "",
        },
    )
    reqs = reqfile.read_node(node)
    assert reqs is not None
    root = node.resolve()
    assert reqs.lines == ["tinydep"]
    assert reqs.alone == [["-e", str(root)], [str(root / "vendor" / "lib")]]
    assert sum(note.startswith("installed alone") for note in reqs.notes) == 2


def test_an_option_that_changes_every_build_sends_the_file_alone(tmp_path: Path) -> None:
    node = _node(tmp_path, {"requirements.txt": "--no-binary :all:\ntinydep\n"})
    reqs = reqfile.read_node(node)
    assert reqs is not None
    assert reqs.lines == [] and reqs.options == []
    assert reqs.alone == [["-r", str(node / "requirements.txt")]]
    assert "cannot be batched" in reqs.notes[-1]


def test_pyproject_dependencies_when_there_is_no_requirements_txt(tmp_path: Path) -> None:
    node = _node(
        tmp_path,
        {
            "pyproject.toml": (
                '[build-system]\nrequires = ["setuptools"]\n\n'
                "[project]\nname = 'x'\n"
                "dependencies = [\n"
                '  "gguf>=0.13.0",  # main\n'
                "  'sentencepiece',\n"
                '  "numpy; python_version >= \\"3.9\\"",\n'
                "]\n\n[project.optional-dependencies]\ntest = ['pytest']\n"
            )
        },
    )
    reqs = reqfile.read_node(node)
    assert reqs is not None
    assert reqs.lines == ["gguf>=0.13.0", "sentencepiece", 'numpy; python_version >= "3.9"']
    assert reqs.source.name == "pyproject.toml"


def test_requirements_txt_wins_and_empty_declarations_mean_none(tmp_path: Path) -> None:
    both = _node(tmp_path, {"requirements.txt": "a\n", "pyproject.toml": "[project]\n"})
    assert reqfile.source_of(both) == both / "requirements.txt"
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "pyproject.toml").write_text("[project]\ndependencies = []\n")
    assert reqfile.source_of(empty) is None
    (empty / "requirements.txt").write_text("# nothing\n\n")
    assert reqfile.read_node(empty) is None


# -- culprit bisection ---------------------------------------------------------------------


def test_bisection_drops_only_the_culprits() -> None:
    # Node 3 conflicts with node 1; node 6 cannot be resolved at all.
    calls: list[list[int]] = []

    def resolve(nodes: object) -> tuple[bool, str]:
        chosen = list(nodes)  # type: ignore[call-overload]
        calls.append(chosen)
        bad = 6 in chosen or (1 in chosen and 3 in chosen)
        return (not bad, f"conflict in {chosen}")

    culprits = bisect.find_culprits(list(range(8)), resolve)
    assert sorted(culprits) == [3, 6]
    assert "conflict" in culprits[3]
    assert len(calls) <= 2 * 4 + 1  # log2(8) per culprit plus the final check


def test_bisection_with_nothing_wrong_asks_once() -> None:
    calls: list[Sequence[int]] = []

    def dry_run(nodes: Sequence[int]) -> tuple[bool, str]:
        calls.append(nodes)
        return True, ""

    culprits = bisect.find_culprits([0, 1, 2], dry_run)
    assert culprits == {} and len(calls) == 1


# -- package changes -----------------------------------------------------------------------


def test_environment_diff_kinds_and_version_order() -> None:
    before = {"numpy": "2.4.6", "opencv-python": "4.12.0.88", "gone": "1.0", "pillow": "10.9"}
    after = {"numpy": "1.26.4", "opencv-python": "4.11.0.86", "gguf": "0.19.0", "pillow": "10.10"}
    changes = envdiff.diff(before, after)
    assert changes == {
        "added": {"gguf": [None, "0.19.0"]},
        "downgraded": {"numpy": ["2.4.6", "1.26.4"], "opencv-python": ["4.12.0.88", "4.11.0.86"]},
        "removed": {"gone": ["1.0", None]},
        "upgraded": {"pillow": ["10.9", "10.10"]},
    }
    text = envdiff.describe_downgrades(changes, {"numpy": ["Impact-Pack: numpy<2"]})
    assert text[0] == "numpy downgraded 2.4.6 -> 1.26.4 (forced by Impact-Pack: numpy<2)"


# -- install.py warnings -------------------------------------------------------------------


def test_install_script_warnings_quote_errors_and_tracebacks() -> None:
    heard = install_script.WarningCollector()
    output = [
        "### Checking dependencies",
        "[ERROR] ComfyUI-Impact-Pack: Dependency installation has failed. Please install manually.",
        "Traceback (most recent call last):",
        '  File "install.py", line 3, in <module>',
        "    import folder_paths",
        "ModuleNotFoundError: No module named 'folder_paths'",
        "no errors found in 3 files",
        "done",
    ]
    for line in output:
        heard.feed(line)
    assert heard.warnings == [
        "[ERROR] ComfyUI-Impact-Pack: Dependency installation has failed. Please install manually.",
        "install.py printed a traceback: ModuleNotFoundError: No module named 'folder_paths'",
    ]


def test_install_script_env_is_comfyui_managers(tmp_path: Path) -> None:
    env = install_script.script_env(tmp_path)
    assert env["COMFYUI_PATH"] == str(tmp_path)
    assert env["COMFYUI_MODEL_PATH"] == str(tmp_path / "models")
    assert env["PIP_NO_INPUT"] == "1" and "PYTHONPATH" not in env


# -- installer choice and uv's options -----------------------------------------------------


@pytest.mark.parametrize(
    ("args", "count"),
    [
        ([], 1),
        (["--index-url", "https://m/simple"], 1),
        (["--extra-index-url", "https://x/simple"], 2),
        (["--index-url=https://m", "--extra-index-url=https://x", "--extra-index-url=y"], 3),
        (["--no-index", "--find-links", "/w", "--extra-index-url", "x"], 0),
    ],
)
def test_index_count_and_strategy(args: list[str], count: int) -> None:
    assert installer.index_count(args) == count
    strategy = installer.with_index_strategy(list(args))
    assert ("unsafe-best-match" in strategy) == (count > 1)


def test_installer_setting_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODEFERRY_AGENT_INSTALLER", "pip")
    assert installer.wanted("auto") == "pip"
    assert installer.wanted("uv") == "uv"  # the spec's explicit choice wins
    monkeypatch.setenv("NODEFERRY_AGENT_INSTALLER", "nonsense")
    assert installer.wanted("auto") == "auto"


def test_pip_constraints_and_indexes_reach_uv(
    venv_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    python = str(venv_template / "bin" / "python")
    conf = tmp_path / "pip.conf"
    conf.write_text(
        "[global]\nconstraint = /etc/c.txt\nextra-index-url = https://a.example/simple\n"
        "pre = true\n"
    )
    for name in list(os.environ):
        if name.startswith("PIP_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    args = installer.uv_source_args(python, [])
    assert args == [
        "--extra-index-url",
        "https://a.example/simple",
        "--constraint",
        "/etc/c.txt",
        "--prerelease=allow",
    ]
    argv = requirements.install_command("uv", python, [], None, args)
    assert "unsafe-best-match" in installer.with_index_strategy(argv)  # PyPI + a.example


def test_spec_installer_field() -> None:
    base = {"task_id": new_task_id(), "ui_home": "/w/ComfyUI", "nodes": ["https://h/a/b"]}
    assert InstallSpec.from_dict(base).installer == "auto"
    assert InstallSpec.from_dict({**base, "installer": "pip"}).to_dict()["installer"] == "pip"
    with pytest.raises(ProtocolError) as caught:
        InstallSpec.from_dict({**base, "installer": "conda"})
    assert caught.value.field == "installer"


def test_older_progress_documents_still_parse() -> None:
    old = {
        "schema": 1,
        "task_id": new_task_id(),
        "ui_home": "/x",
        "state": "completed",
        "started_at": "2026-11-29T03:40:00.123Z",
        "updated_at": "2026-11-29T03:40:00.123Z",
        "nodes": [{"name": "a", "url": "https://h/a", "status": "installed"}],
    }
    doc = Progress.from_dict(old)
    assert doc.warnings == [] and doc.packages == {} and doc.installer is None
    assert doc.nodes[0].warnings == [] and doc.nodes[0].install_script_status == "none"


# -- completion records --------------------------------------------------------------------


def test_completion_records_need_every_step_at_the_current_commit(tmp_path: Path) -> None:
    home = tmp_path / "ComfyUI"
    path = records_path(tmp_path / "state", home)
    done = Completion(path, home)
    needs = {"requirements": True, "install_script": False}
    assert not done.is_complete("n", "c1", needs)
    done.record("n", "https://h/n", "clone", "c1")
    assert done.missing("n", "c1", needs) == ["requirements"]
    done.record("n", "https://h/n", "requirements", "c1")
    # Written at once and read back by the next task.
    again = Completion(path, home)
    assert again.is_complete("n", "c1", needs)
    assert not again.is_complete("n", "c2", needs)  # another commit: nothing known
    again.record("n", "https://h/n", "clone", "c2")
    assert again.missing("n", "c2", needs) == ["requirements"]
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


# -- folder modes --------------------------------------------------------------------------


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_clones_get_the_umasks_mode(mask: int, tmp_path: Path, repos: Repos) -> None:
    log = TaskLog.open(str(tmp_path / "log"))
    old = os.umask(mask)
    try:
        git = gitmod.Git(log, procs.Children(), 120)
        dest = tmp_path / "plain"
        git.clone(repos.plain.url, None, dest, "plain", ".nodeferry-x-")
    finally:
        os.umask(old)
        log.close()
    assert stat.S_IMODE(dest.stat().st_mode) == 0o777 & ~mask
