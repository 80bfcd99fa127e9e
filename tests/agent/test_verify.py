"""Import verification end to end: real clones from the git daemon, imported in the
fake ComfyUI's own venv the way ComfyUI's loader imports them."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent import comfyargs
from agent.verify import parse_import_times
from controller.sandbox.comfy import ComfyHome
from controller.sandbox.gitserver import GitServer
from protocol import Progress
from tests.agent.conftest import Agent, Repos

pytestmark = pytest.mark.timeout(150)

GOOD_INIT = """\
from .nodes import NODE_CLASS_MAPPINGS  # a relative import: needs the package path
import folder_paths  # ComfyUI's own module: needs the home first on sys.path
"""
GOOD_NODES = """\
class A: pass
class B: pass
class C: pass
NODE_CLASS_MAPPINGS = {"A": A, "B": B, "C": C}
"""
FOLDER_PATHS = "BASE = 'fake ComfyUI'\n"
BROKEN_INIT = "import nodeferry_missing_module\nNODE_CLASS_MAPPINGS = {}\n"
SLOW_INIT = "import time\ntime.sleep(60)\nNODE_CLASS_MAPPINGS = {}\n"
NO_MAPPINGS_INIT = "VALUE = 1\n"
V3_INIT = """\
class _Ext:
    async def on_load(self):
        pass
    async def get_node_list(self):
        return [int, str]
async def comfy_entrypoint():
    return _Ext()
"""


def run_spec(agent: Agent, spec: dict[str, object], expect: int) -> Progress:
    return Progress.from_dict(
        agent.json("run", "--spec", "-", input=json.dumps(spec), expect=expect)
    )


@pytest.fixture
def verify_repos(git_server: GitServer, tmp_path: Path) -> dict[str, str]:
    tag = tmp_path.name
    return {
        "good": git_server.add_repo(
            f"good-{tag}", {"__init__.py": GOOD_INIT, "nodes.py": GOOD_NODES}
        ).url,
        "broken": git_server.add_repo(f"broken-{tag}", {"__init__.py": BROKEN_INIT}).url,
        "slow": git_server.add_repo(f"slow-{tag}", {"__init__.py": SLOW_INIT}).url,
        "bare": git_server.add_repo(f"bare-{tag}", {"__init__.py": NO_MAPPINGS_INIT}).url,
        "v3": git_server.add_repo(f"v3-{tag}", {"__init__.py": V3_INIT}).url,
    }


def test_import_results_per_node(
    agent: Agent, comfy: ComfyHome, verify_repos: dict[str, str], tmp_path: Path
) -> None:
    (comfy.root / "folder_paths.py").write_text(FOLDER_PATHS)
    tag = tmp_path.name
    spec = agent.spec(
        comfy.root,
        [verify_repos[k] for k in ("good", "broken", "slow", "bare", "v3")],
        verify_timeout=3,
        jobs=2,
    )
    final = run_spec(agent, spec, expect=1)
    assert final.state == "completed" and final.exit_code == 1
    by_name = {n.name.rsplit("-", 1)[0] if n.name.endswith(tag) else n.name: n for n in final.nodes}
    good = by_name["good"]
    assert good.status == "installed"
    assert good.import_result is not None
    assert good.import_result.status == "ok" and good.import_result.node_classes == 3
    assert good.import_result.error is None
    broken = by_name["broken"]
    assert broken.status == "failed" and broken.import_result is not None
    assert broken.import_result.status == "failed"
    expected = "ModuleNotFoundError: No module named 'nodeferry_missing_module'"
    assert broken.import_result.error == expected
    assert expected in (broken.error or "")
    slow = by_name["slow"]
    assert slow.status == "failed" and slow.import_result is not None
    assert slow.import_result.status == "timeout"
    assert "timed out" in (slow.error or "")
    bare = by_name["bare"]
    assert bare.status == "failed" and bare.import_result is not None
    assert "NODE_CLASS_MAPPINGS" in (bare.import_result.error or "")
    v3 = by_name["v3"]
    assert v3.status == "installed" and v3.import_result is not None
    assert v3.import_result.node_classes == 2
    assert (final.successful, final.failed) == (2, 3)
    # The traceback of the failed import is in the log, under the node's name.
    log = Path(final.log_file or "").read_text()
    assert f"[broken-{tag}] ModuleNotFoundError" in log
    # The result files the imports wrote are gone.
    task_dir = Path(final.log_file or "").parent
    assert not list(task_dir.glob(".import-*"))


def test_verification_is_a_live_phase(
    agent: Agent, comfy: ComfyHome, git_server: GitServer, tmp_path: Path
) -> None:
    url = git_server.add_repo(
        f"slowish-{tmp_path.name}",
        {"__init__.py": "import time\ntime.sleep(3)\nNODE_CLASS_MAPPINGS = {'X': object}\n"},
    ).url
    spec = agent.spec(comfy.root, [url])
    agent.start(spec)
    during = agent.wait_for(spec["task_id"], lambda p: p.nodes[0].status == "verifying")
    assert during.state == "verifying" and during.current_node == during.nodes[0].name
    assert not during.is_final and during.processed == 0
    final = agent.wait_final(spec["task_id"])
    assert final.state == "completed" and final.nodes[0].status == "installed"
    assert final.nodes[0].import_result is not None
    assert final.nodes[0].import_result.node_classes == 1


def test_no_verify_skips_the_import(
    agent: Agent, comfy: ComfyHome, verify_repos: dict[str, str]
) -> None:
    spec = agent.spec(comfy.root, [verify_repos["broken"]], verify=False)
    final = run_spec(agent, spec, expect=0)
    node = final.nodes[0]
    assert node.status == "installed"
    assert node.import_result is not None and node.import_result.status == "skipped"


def test_install_command_flags(
    agent: Agent, comfy: ComfyHome, verify_repos: dict[str, str]
) -> None:
    failed = agent.run(
        "install", "--ui-home", str(comfy.root), *agent_pip(agent), verify_repos["broken"]
    )
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "No module named 'nodeferry_missing_module'" in failed.stdout
    assert "checking each node loads as ComfyUI loads it" in failed.stdout
    clash = agent.run(
        "install", "--ui-home", str(comfy.root), "--no-verify", "--verify-comfyui", "x"
    )
    assert clash.returncode == 2 and "contradict" in clash.stderr


def agent_pip(agent: Agent) -> list[str]:
    return [f"--pip-arg={arg}" for arg in agent.pip_args]


FAKE_MAIN = """\
import os, sys
assert sys.argv[1:3] == ["--quick-test-for-ci", "--cpu"], sys.argv
assert "--temp-directory" in sys.argv and "sqlite:///:memory:" in sys.argv, sys.argv
home = os.path.dirname(os.path.abspath(__file__))
nodes = os.path.join(home, "custom_nodes")
print("Cannot import %s module for custom nodes: No module named 'x'"
      % os.path.join(nodes, os.environ.get("FAIL_NODE", "")))
print("")
print("Import times for custom nodes:")
for name in sorted(os.listdir(nodes)):
    flag = " (IMPORT FAILED)" if name == os.environ.get("FAIL_NODE") else ""
    print("{:6.1f} seconds{}: {}".format(0.2, flag, os.path.join(nodes, name)))
print("")
"""


def test_verify_comfyui_reads_comfyuis_report(
    agent: Agent, comfy: ComfyHome, verify_repos: dict[str, str], repos: Repos
) -> None:
    (comfy.root / "main.py").write_text(FAKE_MAIN)
    broken_name = verify_repos["broken"].rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")
    spec = agent.spec(comfy.root, [repos.plain.url, verify_repos["broken"]], verify="comfyui")
    env = dict(agent.env, FAIL_NODE=broken_name)
    result = agent.run("run", "--spec", "-", input=json.dumps(spec), env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    doc = Progress.from_json(result.stdout)
    by_name = {n.name: n for n in doc.nodes}
    assert by_name["plain"].status == "installed"
    assert by_name["plain"].import_result is not None
    assert by_name["plain"].import_result.status == "ok"
    assert by_name["plain"].import_result.seconds == 0.2
    bad = by_name[broken_name]
    assert bad.status == "failed" and bad.import_result is not None
    assert bad.import_result.error == "No module named 'x'"


def test_verify_comfyui_falls_back_when_comfyui_says_nothing(
    agent: Agent, comfy: ComfyHome, repos: Repos
) -> None:
    # The test home's main.py prints no import report: the agent imports each node.
    spec = agent.spec(comfy.root, [repos.plain.url], verify="comfyui")
    final = run_spec(agent, spec, expect=0)
    assert final.nodes[0].import_result is not None
    assert final.nodes[0].import_result.node_classes == 0
    assert any("imported each node instead" in w for w in final.warnings)


def test_parse_import_times_with_a_logging_prefix() -> None:
    lines = [
        "[INFO] Cannot import /w/ComfyUI/custom_nodes/Bad module for custom nodes: boom",
        "[INFO] ",
        "[INFO] Import times for custom nodes:",
        "[INFO]    0.0 seconds: /w/ComfyUI/custom_nodes/websocket_image_save.py",
        "[INFO]    1.6 seconds (IMPORT FAILED): /w/ComfyUI/custom_nodes/Bad",
        "[INFO]   12.3 seconds: /w/ComfyUI/custom_nodes/Good",
        "[INFO] ",
        "[INFO]    9.9 seconds: /not/part/of/the/block",
    ]
    found = parse_import_times(lines)
    assert found is not None
    assert set(found) == {"websocket_image_save.py", "Bad", "Good"}
    assert found["Bad"].status == "failed" and found["Bad"].error == "boom"
    assert found["Good"].status == "ok" and found["Good"].seconds == 12.3
    assert parse_import_times(["no block here"]) is None


def test_parse_import_times_quotes_comfyuis_traceback_for_the_node() -> None:
    lines = [
        "Traceback (most recent call last):",
        '  File "/w/ComfyUI/nodes.py", line 2131, in load_custom_node',
        "    module_spec.loader.exec_module(module)",
        "ModuleNotFoundError: No module named 'first'",
        "Cannot import /w/ComfyUI/custom_nodes/First module for custom nodes: no 'first'",
        "some node printing on its own",
        "Traceback (most recent call last):",
        '  File "/w/ComfyUI/custom_nodes/Chained/__init__.py", line 2, in <module>',
        "KeyError: 'a'",
        "",
        "During handling of the above exception, another exception occurred:",
        "",
        "Traceback (most recent call last):",
        '  File "/w/ComfyUI/custom_nodes/Chained/__init__.py", line 4, in <module>',
        "RuntimeError: Found no NVIDIA driver on your system",
        "",
        "Cannot import /w/ComfyUI/custom_nodes/Chained module for custom nodes: Found no",
        "",
        "Import times for custom nodes:",
        "   0.0 seconds (IMPORT FAILED): /w/ComfyUI/custom_nodes/First",
        "   0.1 seconds (IMPORT FAILED): /w/ComfyUI/custom_nodes/Chained",
        "   0.1 seconds (IMPORT FAILED): /w/ComfyUI/custom_nodes/NoTrace",
        "",
    ]
    found = parse_import_times(lines)
    assert found is not None
    first, chained, bare = found["First"], found["Chained"], found["NoTrace"]
    assert first.error == "ModuleNotFoundError: No module named 'first'"
    assert first.traceback == "\n".join(lines[:4]) and first.check == "comfyui"
    assert chained.error == "RuntimeError: Found no NVIDIA driver on your system"
    assert chained.traceback is not None
    assert chained.traceback.startswith("Traceback") and "KeyError: 'a'" in chained.traceback
    assert "some node printing" not in chained.traceback  # the node before it is not its
    assert bare.traceback is None and bare.error == "ComfyUI reported IMPORT FAILED (see the log)"


def test_comfyargs_carries_what_changes_loading_and_nothing_else() -> None:
    argv = [
        *("--listen", "0.0.0.0", "--port", "8188", "--cuda-device", "1"),
        *("--extra-model-paths-config", "a.yaml", "/etc/b.yaml", "--base-directory=/data"),
        *("--verbose", "WARNING", "--temp-directory", "/t", "--database-url", "sqlite:///x"),
        *("--disable-all-custom-nodes", "--whitelist-custom-nodes", "x", "y", "--highvram"),
    ]
    args = comfyargs.parse(argv, cwd="/srv")
    assert args.argv == [
        *("--extra-model-paths-config", "/srv/a.yaml", "/etc/b.yaml"),
        *("--base-directory", "/data", "--disable-all-custom-nodes"),
        *("--whitelist-custom-nodes", "x", "y"),
    ]
    assert args.loads("x") and args.loads("y") and not args.loads("z")
    assert args.without_node_selection() == args.argv[:5]
    assert comfyargs.parse(["--port", "1"]).loads("z")


def test_comfyargs_learns_the_running_comfyuis_command_line(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text("import time\ntime.sleep(120)\n")
    proc = subprocess.Popen(
        [sys.executable, "main.py", "--port", "9", "--output-directory", "out"], cwd=tmp_path
    )
    try:
        deadline = time.monotonic() + 30
        while comfyargs.running(tmp_path) is None:  # until /proc shows its cmdline
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        args = comfyargs.learn(tmp_path)
        assert args.argv == ["--output-directory", str(tmp_path / "out")]
        assert args.source is not None and args.source.startswith(f"pid {proc.pid}: ")
        assert comfyargs.learn(tmp_path / "elsewhere").source is None
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_the_home_chooses_the_check_unless_the_spec_does(
    agent: Agent, comfy: ComfyHome, verify_repos: dict[str, str], repos: Repos
) -> None:
    # main.py and the comfy package: a ComfyUI, so ComfyUI's start judges by default.
    (comfy.root / "main.py").write_text(FAKE_MAIN)
    (comfy.root / "comfy").mkdir()
    (comfy.root / "comfy" / "cli_args.py").write_text("")
    first = run_spec(agent, agent.spec(comfy.root, [repos.plain.url]), expect=0)
    result = first.nodes[0].import_result
    assert result is not None and result.check == "comfyui" and result.seconds == 0.2
    # verify: "import" asks for the bare import there all the same.
    spec = agent.spec(comfy.root, [verify_repos["bare"]], verify="import")
    second = run_spec(agent, spec, expect=1)
    bare = second.nodes[0].import_result
    assert bare is not None and bare.check == "import", bare
    assert bare.error is not None and "NODE_CLASS_MAPPINGS" in bare.error
    # Without the comfy package it is a stand-in: the bare import, by default.
    (comfy.root / "comfy" / "cli_args.py").unlink()
    third = run_spec(agent, agent.spec(comfy.root, [verify_repos["v3"]]), expect=0)
    v3 = third.nodes[0].import_result
    assert v3 is not None and v3.check == "import" and v3.node_classes == 2
