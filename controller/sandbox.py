"""A self-contained playground for ``nodeferry demo``.

It builds, under one directory: a ComfyUI-like folder with its own venv, a small
wheelhouse of hand-made wheels (so requirements install without any index), and
a few sample custom-node repositories served by ``git daemon`` on 127.0.0.1.
Nothing here touches the network beyond loopback.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

#: A file that marks a directory as a sandbox this module built (and may rebuild).
MARKER = ".nodeferry-demo"

_GIT = ("git", "-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false")
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "nodeferry demo",
    "GIT_AUTHOR_EMAIL": "demo@nodeferry.invalid",
    "GIT_COMMITTER_NAME": "nodeferry demo",
    "GIT_COMMITTER_EMAIL": "demo@nodeferry.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}


class SandboxError(Exception):
    """The sandbox could not be built or served."""


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


# -- wheels ----------------------------------------------------------------------


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode("ascii")


def build_wheel(wheel: Wheel, directory: Path) -> Path:
    """Write ``wheel`` as a valid ``.whl`` (zip + METADATA/WHEEL/RECORD), no build backend."""
    dist_info = f"{wheel.module}-{wheel.version}.dist-info"
    metadata = "".join(
        [
            "Metadata-Version: 2.1\n",
            f"Name: {wheel.name}\n",
            f"Version: {wheel.version}\n",
            "Summary: a sample package for the nodeferry demo\n",
            *(f"Requires-Dist: {req}\n" for req in wheel.requires),
        ]
    )
    files = {
        f"{wheel.module}/__init__.py": f'"""{wheel.name} (nodeferry demo)."""\n\n'
        f'__version__ = "{wheel.version}"\n',
        f"{dist_info}/METADATA": metadata,
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: nodeferry-demo\n"
        "Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record_lines = [
        f"{path},{_record_hash(text.encode())},{len(text.encode())}" for path, text in files.items()
    ]
    record_lines.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = "\n".join(record_lines) + "\n"
    path = directory / f"{wheel.module}-{wheel.version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, text in files.items():
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            archive.writestr(info, text)
    return path


# -- repositories ----------------------------------------------------------------


def _git(args: list[str], cwd: Path) -> None:
    env = {**os.environ, **_GIT_ENV}
    result = subprocess.run(
        [*_GIT, *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SandboxError(f"git {' '.join(args)} failed: {result.stderr.strip()}")


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
    _git(["init", "-q"], source)
    _git(["add", "-A"], source)
    _git(["commit", "-q", "-m", f"{node.name}: first version"], source)
    if node.tag:
        _git(["tag", node.tag], source)
        # A commit after the tag, so pinning the tag visibly matters.
        (source / "CHANGES.md").write_text("unreleased work\n", encoding="utf-8")
        _git(["add", "-A"], source)
        _git(["commit", "-q", "-m", "work after the release"], source)
    bare = repos / f"{node.name}.git"
    _git(["clone", "-q", "--bare", str(source), str(bare)], work)
    return bare


# -- ComfyUI -------------------------------------------------------------------------


def build_comfyui(ui_home: Path, python: str = sys.executable) -> Path:
    """A ComfyUI-like folder (``main.py``, ``custom_nodes/``) with its own venv; its python."""
    (ui_home / "custom_nodes").mkdir(parents=True)
    (ui_home / "main.py").write_text(
        '"""Stands in for ComfyUI in the nodeferry demo."""\n', encoding="utf-8"
    )
    venv = ui_home / "venv"
    result = subprocess.run(
        [python, "-m", "venv", str(venv)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SandboxError(f"could not create a venv: {result.stderr.strip()}")
    return venv / "bin" / "python"


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
        build_wheel(wheel, sandbox.wheelhouse)
    work = root / "work"
    for node in sandbox.nodes:
        build_repo(node, work, sandbox.repos)
    shutil.rmtree(work)
    sandbox.python = build_comfyui(sandbox.ui_home, python)
    return sandbox


# -- git daemon ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def git_daemon(repos: Path, *, timeout: float = 10.0) -> Iterator[str]:
    """Serve ``repos`` read-only with ``git daemon`` on 127.0.0.1; yields ``git://127.0.0.1:PORT``."""
    port = free_port()
    log = open(repos.parent / "git-daemon.log", "ab")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [
            "git",
            "daemon",
            "--reuseaddr",
            "--listen=127.0.0.1",
            f"--port={port}",
            f"--base-path={repos}",
            "--export-all",
            "--informative-errors",
            str(repos),
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                error = (repos.parent / "git-daemon.log").read_text(errors="replace")
                raise SandboxError(f"git daemon exited: {error.strip()}")
            with socket.socket() as sock:
                sock.settimeout(0.5)
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise SandboxError(f"git daemon did not listen on 127.0.0.1:{port}")
            time.sleep(0.05)
        yield f"git://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
