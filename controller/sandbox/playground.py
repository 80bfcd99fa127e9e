"""A self-contained playground for ``nodeferry demo``.

It builds, under one directory: a ComfyUI-like folder with its own venv, a small
wheelhouse of hand-made wheels (so requirements install without any index), and
a few sample custom-node repositories served by ``git daemon`` on 127.0.0.1.
Nothing here touches the network beyond loopback.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from controller.sandbox.comfy import make_comfy_home, make_venv
from controller.sandbox.errors import SandboxError
from controller.sandbox.gitserver import GitServer, git
from controller.sandbox.wheels import build_wheel

#: A file that marks a directory as a sandbox this module built (and may rebuild).
MARKER = ".nodeferry-demo"

MAIN_PY = '"""Stands in for ComfyUI in the nodeferry demo."""\n'


@dataclass(frozen=True)
class Wheel:
    """A tiny pure-Python distribution: one module that knows its own version."""

    name: str
    version: str
    requires: tuple[str, ...] = ()

    @property
    def module(self) -> str:
        return self.name.replace("-", "_")


@dataclass(frozen=True)
class SampleNode:
    """A sample custom node: its repository content and the ref to ask for."""

    name: str
    description: str
    requirements: tuple[str, ...] = ()
    install_script: bool = False
    #: How long its install.py works (printing as it goes), like one that downloads a model.
    install_seconds: float = 0.0
    tag: str | None = None


WHEELS = (
    Wheel("nodeferry-demo-palette", "1.2.0"),
    Wheel("nodeferry-demo-tiles", "0.4.1", requires=("nodeferry-demo-palette>=1.0",)),
    Wheel("nodeferry-demo-prompts", "2.0.0"),
)

SAMPLE_NODES = (
    SampleNode("ComfyUI-Demo-Basics", "plain nodes, nothing to install"),
    SampleNode(
        "ComfyUI-Demo-Palette",
        "needs a package from the wheelhouse",
        requirements=("nodeferry-demo-palette>=1.0",),
    ),
    SampleNode(
        "ComfyUI-Demo-Tiles",
        "a requirement with a dependency, and an install.py",
        requirements=("nodeferry-demo-tiles==0.4.1",),
        install_script=True,
        install_seconds=2.0,
    ),
    SampleNode(
        "ComfyUI-Demo-Prompts",
        "pinned to a tag",
        requirements=("nodeferry-demo-prompts",),
        tag="v1.0",
    ),
)


@dataclass
class Sandbox:
    root: Path
    ui_home: Path
    python: Path
    wheelhouse: Path
    repos: Path
    data_dir: Path
    state_dir: Path
    nodes: list[SampleNode] = field(default_factory=list)

    @property
    def pip_args(self) -> list[str]:
        """Requirements come from the sandbox's wheelhouse and nowhere else."""
        return ["--no-index", "--find-links", str(self.wheelhouse)]

    def node_refs(self, git_url: str) -> list[str]:
        """``URL[@REF]`` for every sample node, served from ``git_url``."""
        return [
            f"{git_url}/{node.name}.git" + (f"@{node.tag}" if node.tag else "")
            for node in self.nodes
        ]


# -- wheels and repositories ---------------------------------------------------------


def build_sample_wheel(wheel: Wheel, directory: Path) -> Path:
    """Write ``wheel`` into ``directory``: one module that knows its version."""
    return build_wheel(
        directory,
        wheel.name,
        wheel.version,
        requires=wheel.requires,
        modules={
            f"{wheel.module}/__init__.py": f'"""{wheel.name} (nodeferry demo)."""\n\n'
            f'__version__ = "{wheel.version}"\n'
        },
    )


def _node_files(node: SampleNode) -> dict[str, str]:
    class_name = node.name.replace("ComfyUI-", "").replace("-", "")
    files = {
        "__init__.py": f'"""{node.name}: {node.description}."""\n\n'
        f"class {class_name}:\n"
        '    CATEGORY = "nodeferry demo"\n'
        '    RETURN_TYPES = ("STRING",)\n'
        '    FUNCTION = "run"\n\n'
        "    @classmethod\n"
        "    def INPUT_TYPES(cls):\n"
        '        return {"required": {}}\n\n'
        "    def run(self):\n"
        f'        return ("{node.name}",)\n\n\n'
        f'NODE_CLASS_MAPPINGS = {{"{class_name}": {class_name}}}\n',
        "README.md": f"# {node.name}\n\nA sample custom node for the nodeferry demo: "
        f"{node.description}.\n",
    }
    if node.requirements:
        files["requirements.txt"] = "\n".join(node.requirements) + "\n"
    if node.install_script:
        # What real install.py files do: fetch or prepare something next to the node.
        steps = max(1, int(node.install_seconds * 2))
        files["install.py"] = (
            "import time\n"
            "from pathlib import Path\n\n"
            f"for step in range(1, {steps + 1}):\n"
            f"    print(f'install.py: preparing assets {{step}}/{steps}', flush=True)\n"
            f"    time.sleep({node.install_seconds / steps!r})\n"
            "Path(__file__).with_name('.installed').write_text('ok')\n"
            "print('install.py: prepared the node', flush=True)\n"
        )
    return files


def build_repo(node: SampleNode, work: Path, repos: Path) -> Path:
    """A bare repository ``repos/<name>.git`` with one commit (and the node's tag)."""
    source = work / node.name
    source.mkdir(parents=True)
    for name, text in _node_files(node).items():
        (source / name).write_text(text, encoding="utf-8")
    git("init", "-q", cwd=source)
    git("add", "-A", cwd=source)
    git("commit", "-q", "-m", f"{node.name}: first version", cwd=source)
    if node.tag:
        git("tag", node.tag, cwd=source)
        # A commit after the tag, so pinning the tag visibly matters.
        (source / "CHANGES.md").write_text("unreleased work\n", encoding="utf-8")
        git("add", "-A", cwd=source)
        git("commit", "-q", "-m", "work after the release", cwd=source)
    bare = repos / f"{node.name}.git"
    git("clone", "-q", "--bare", str(source), str(bare), cwd=work)
    return bare


# -- ComfyUI -------------------------------------------------------------------------


def build_comfyui(ui_home: Path, python: str = sys.executable) -> Path:
    """A ComfyUI-like folder (``main.py``, ``custom_nodes/``) with its own venv; its python."""
    make_comfy_home(ui_home, with_venv=False, main_py=MAIN_PY)
    try:
        return make_venv(ui_home / "venv", python=python)
    except subprocess.CalledProcessError as exc:
        stderr = exc.stderr.decode("utf-8", "replace") if exc.stderr else ""
        raise SandboxError(f"could not create a venv: {stderr.strip()}") from None


def build(root: Path, *, python: str = sys.executable) -> Sandbox:
    """Build a fresh sandbox in ``root`` (replacing an earlier one there)."""
    root = root.resolve()
    if root.exists() and any(root.iterdir()):
        if not (root / MARKER).exists():
            raise SandboxError(
                f"{root} is not empty and is not a nodeferry demo sandbox; "
                "choose an empty or new directory"
            )
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("built by nodeferry demo; safe to delete\n", encoding="utf-8")
    sandbox = Sandbox(
        root=root,
        ui_home=root / "ComfyUI",
        python=root / "ComfyUI" / "venv" / "bin" / "python",
        wheelhouse=root / "wheels",
        repos=root / "repos",
        data_dir=root / "controller",
        state_dir=root / "agent-state",
        nodes=list(SAMPLE_NODES),
    )
    for directory in (sandbox.wheelhouse, sandbox.repos, sandbox.data_dir, sandbox.state_dir):
        directory.mkdir()
    for wheel in WHEELS:
        build_sample_wheel(wheel, sandbox.wheelhouse)
    work = root / "work"
    for node in sandbox.nodes:
        build_repo(node, work, sandbox.repos)
    shutil.rmtree(work)
    sandbox.python = build_comfyui(sandbox.ui_home, python)
    return sandbox


# -- git daemon ----------------------------------------------------------------------


@contextlib.contextmanager
def git_daemon(repos: Path) -> Iterator[str]:
    """Serve ``repos`` read-only with ``git daemon`` on 127.0.0.1; yields ``git://127.0.0.1:PORT``."""
    with GitServer(repos.parent, served=repos) as server:
        yield server.base_url
