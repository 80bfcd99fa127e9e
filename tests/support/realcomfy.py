"""The real ComfyUI of ``../shared/realworld`` (0.3.64) and its venv, for the tiers that
need the real loader: verification (#21), restart and readiness (#22), plans (#30).

The venv is built once into the cache (torch 2.14.1 + torchvision 0.29.1, ComfyUI's
requirements, ``requests``; about 6 GB) from wheels kept beside it, and every test
gets a copy whose files are hard links (pip replaces files, it never rewrites one in
place, so a test's install cannot reach the template). ``python -m
tests.support.realcomfy`` builds it (``.ci/run`` does); the build needs the package
index once, later runs none.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.realworld.packs import shared_dir

TORCH = ("torch==2.14.1", "torchvision==0.29.1")
#: imported by ComfyUI's frontend manager, missing from its requirements.txt
EXTRA = ("requests",)
_READY = "ready"


def cache_root() -> Path:
    default = Path.home() / ".cache" / "nodeferry" / "comfyui"
    return Path(os.environ.get("NODEFERRY_COMFYUI_CACHE", default))


def bundle() -> Path | None:
    shared = shared_dir()
    if shared is None:
        return None
    found = shared / "bundles" / "ComfyUI.bundle"
    return found if found.is_file() else None


def checkout(dest: Path) -> Path:
    """A working tree of the real ComfyUI at ``dest`` (its ``custom_nodes`` empty)."""
    source = bundle()
    if source is None:
        raise FileNotFoundError("../shared/realworld/bundles/ComfyUI.bundle is not there")
    subprocess.run(["git", "clone", "-q", str(source), str(dest)], check=True, capture_output=True)
    return dest


def base_venv() -> Path | None:
    """The cached venv, or None when ``python -m tests.support.realcomfy`` never ran."""
    venv = cache_root() / "venv"
    if (venv / _READY).is_file() and (venv / "bin" / "python").exists():
        return venv
    return None


def copy_venv(template: Path, dest: Path) -> Path:
    """``template`` at ``dest``, every regular file a hard link; returns ``dest``."""

    def link(src: str, dst: str) -> str:
        os.link(src, dst)
        return dst

    shutil.copytree(template, dest, symlinks=True, copy_function=link)
    return dest


def _pip_env() -> dict[str, str]:
    # The machine's pip.conf (local indexes, a torch cap) stays: that is where the
    # torch 2.14.1 wheels live on these machines.
    return {k: v for k, v in os.environ.items() if not k.startswith(("PIP_REQUIRE", "UV_"))}


def build(root: Path | None = None) -> Path:
    """Fetch the wheels (once) and build the venv (once); returns the venv."""
    root = root or cache_root()
    venv = root / "venv"
    if (venv / _READY).is_file():
        return venv
    source = bundle()
    if source is None:
        raise SystemExit("../shared/realworld/bundles/ComfyUI.bundle not found")
    wheels = root / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    tree = root / "src"
    if not (tree / "requirements.txt").is_file():
        shutil.rmtree(tree, ignore_errors=True)
        checkout(tree)
    wanted = [*TORCH, "-r", str(tree / "requirements.txt"), *EXTRA]
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(
        [*pip, "download", "-q", "-d", str(wheels), "--find-links", str(wheels), *wanted],
        check=True,
        env=_pip_env(),
        timeout=3600,
    )
    if venv.exists():
        shutil.rmtree(venv)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [
            str(venv / "bin" / "python"),
            *("-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheels)),
            *wanted,
        ],
        check=True,
        env=_pip_env(),
        timeout=3600,
    )
    (venv / _READY).write_text("torch 2.14.1, torchvision 0.29.1, ComfyUI 0.3.64's requirements\n")
    return venv


# "   0.1 seconds (IMPORT FAILED): /home/ComfyUI/custom_nodes/Name" (nodes.py)
_LOADED = re.compile(r"^\s*\d+\.\d seconds( \(IMPORT FAILED\))?: (.+?)\s*$")


@dataclass
class Verdicts:
    """What ComfyUI's own loader made of a home's custom nodes: the test's oracle."""

    loaded: dict[str, bool]  # custom_nodes entry -> listed without IMPORT FAILED
    returncode: int
    output: str


def loader_verdicts(home: Path, *args: str, timeout: float = 300) -> Verdicts:
    """Run ``main.py --quick-test-for-ci --cpu`` in ``home`` with its own venv; read the block.

    Deliberately separate from the agent's parser: the oracle must not share the
    code it judges.
    """
    python = home / "venv" / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run = subprocess.run(
        [str(python), "main.py", "--quick-test-for-ci", "--cpu", *args],
        cwd=home,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    output = run.stdout + run.stderr
    lines = output.splitlines()
    loaded: dict[str, bool] = {}
    if "Import times for custom nodes:" in lines:
        block = lines[lines.index("Import times for custom nodes:") + 1 :]
        for line in block:
            match = _LOADED.match(line)
            if not match:
                break
            loaded[Path(match.group(2)).name] = match.group(1) is None
    return Verdicts(loaded, run.returncode, output)


if __name__ == "__main__":
    print(f"real ComfyUI venv: {build()}")
