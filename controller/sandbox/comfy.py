"""A fake ComfyUI home: ``main.py``, ``custom_nodes/`` and its own venv with a fake torch.

Used by ``nodeferry demo`` (through ``playground``), the tests and the benchmark.

    wheelhouse = Path("wh"); build_wheel(wheelhouse, "torch", "1.0.0")
    template = build_venv_template(Path("tpl"), wheelhouse)       # slow part, once
    home = make_comfy_home(Path("ComfyUI"), venv_template=template)   # fast, per test
    home.installed("torch")   # "1.0.0"

Creating a venv (with pip) takes seconds; a template is made once and copied.
pip is always run isolated from the machine's pip config (``isolated_pip_env``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from controller.sandbox.wheels import build_wheel

FAKE_TORCH_VERSION = "1.0.0"
#: The smallest ``__init__.py`` ComfyUI loads (it lists a node without mappings as
#: IMPORT FAILED, and so does the agent's import check).
NODE_INIT = "NODE_CLASS_MAPPINGS = {}\n"

MAIN_PY = '''"""Stand-in for ComfyUI's main.py (nodeferry sandbox)."""
print("this is not ComfyUI")
'''

_VERSIONS = (
    "import json, sys\n"
    "from importlib import metadata\n"
    "out = {}\n"
    "for dist in metadata.distributions():\n"
    "    out[dist.metadata['Name'].lower()] = dist.version\n"
    "print(json.dumps(out))\n"
)


def isolated_pip_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment minus pip's and uv's config: no global constraints, no indexes."""
    env = dict(os.environ if base is None else base)
    for name in list(env):
        if name.startswith(("PIP_", "UV_")):
            del env[name]
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    env["UV_NO_CONFIG"] = "1"
    return env


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def make_venv(venv: Path, *, with_pip: bool = True, python: str = sys.executable) -> Path:
    """``python -m venv`` (with pip unless asked not to); returns the venv's python."""
    argv = [python, "-m", "venv"]
    if not with_pip:
        argv.append("--without-pip")
    subprocess.run([*argv, str(venv)], check=True, capture_output=True, env=isolated_pip_env())
    return venv_python(venv)


def pip_install(python: Path, wheelhouse: Path, *requirements: str) -> None:
    """Install from the wheelhouse only (no index)."""
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--find-links",
            str(wheelhouse),
            *requirements,
        ],
        check=True,
        capture_output=True,
        env=isolated_pip_env(),
    )


def build_venv_template(
    target: Path,
    wheelhouse: Path,
    torch_version: str = FAKE_TORCH_VERSION,
    with_pip: bool = True,
) -> Path:
    """A venv with a fake ``torch==torch_version`` installed; returns the venv dir.

    The torch wheel is built into ``wheelhouse`` if it is not there yet.
    """
    wheelhouse = Path(wheelhouse)
    if not list(wheelhouse.glob(f"torch-{torch_version}-*.whl")):
        build_wheel(wheelhouse, "torch", torch_version)
    python = make_venv(target, with_pip=True)
    pip_install(python, wheelhouse, f"torch=={torch_version}")
    if not with_pip:
        subprocess.run(
            [str(python), "-m", "pip", "uninstall", "-q", "-y", "pip"],
            check=True,
            capture_output=True,
            env=isolated_pip_env(),
        )
    return target


class ComfyHome:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.custom_nodes = root / "custom_nodes"
        self.venv = root / "venv"

    @property
    def python(self) -> Path:
        return venv_python(self.venv)

    def node_dirs(self) -> list[str]:
        """Everything in custom_nodes/, hidden entries (temp clones) included."""
        return sorted(p.name for p in self.custom_nodes.iterdir())

    def installed_versions(self) -> dict[str, str]:
        """Every distribution in the venv: ``{"torch": "1.0.0", ...}`` (names lowercased)."""
        out = subprocess.run(
            [str(self.python), "-c", _VERSIONS], check=True, capture_output=True, text=True
        ).stdout
        data: dict[str, str] = json.loads(out)
        return data

    def installed(self, dist: str) -> str | None:
        return self.installed_versions().get(dist.lower())


def make_comfy_home(
    root: str | Path,
    *,
    venv_template: Path | None = None,
    with_venv: bool = True,
    with_main_py: bool = True,
    with_custom_nodes: bool = True,
    main_py: str = MAIN_PY,
) -> ComfyHome:
    """A fake ComfyUI at ``root`` with ``venv/`` holding pip and a fake torch 1.0.0.

    With ``venv_template`` (see :func:`build_venv_template`) the venv is a copy
    of it, which is fast; without, a new venv is made, which takes seconds.
    """
    home = ComfyHome(Path(root))
    home.root.mkdir(parents=True, exist_ok=True)
    if with_main_py:
        (home.root / "main.py").write_text(main_py)
    if with_custom_nodes:
        home.custom_nodes.mkdir(exist_ok=True)
    if with_venv:
        if venv_template is not None:
            shutil.copytree(venv_template, home.venv, symlinks=True)
        else:
            wheelhouse = Path(tempfile.mkdtemp(prefix="fake-torch-"))
            try:
                build_venv_template(home.venv, wheelhouse)
            finally:
                shutil.rmtree(wheelhouse, ignore_errors=True)
    return home
