"""ComfyUI-Manager's real node database, from the ``comfyui-manager`` 4.3 wheel.

``python -m tests.support.nodedb`` downloads the wheel once into
``~/.cache/nodeferry/`` (``.ci/run`` calls it: setup may use the package index,
tests may not). :func:`extract` unpacks the three JSON files from the cached
wheel; tests never import comfyui-manager itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

VERSION = "4.3"
CACHE = Path(os.environ.get("NODEFERRY_TEST_CACHE", Path.home() / ".cache" / "nodeferry"))
WHEEL = CACHE / f"comfyui_manager-{VERSION}-py3-none-any.whl"
FILES = ("extension-node-map.json", "custom-node-list.json", "github-stats.json")


def prefetch() -> Path:
    """The cached wheel, downloaded (without dependencies) when missing."""
    if not WHEEL.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
             f"comfyui-manager=={VERSION}", "-d", str(CACHE)],
            check=True,
        )  # fmt: skip
    return WHEEL


def extract(directory: Path) -> Path:
    """The three database files of the cached wheel, written into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(WHEEL) as wheel:
        for name in FILES:
            (directory / name).write_bytes(wheel.read(f"comfyui_manager/{name}"))
    return directory


def ready(directory: Path) -> Path:
    """The files extracted into ``directory``. A missing cache fails the test under
    CI=true (.ci/run prefetches it) and skips it elsewhere: a test never reaches the
    package index itself."""
    if not WHEEL.exists():
        import pytest

        message = f"{WHEEL} is missing: run `python -m tests.support.nodedb` first"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return extract(directory)


if __name__ == "__main__":
    print(prefetch())
