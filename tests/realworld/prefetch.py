"""Fill the real-pack tier's wheelhouse before the tests: ``python -m tests.realworld.prefetch``.

Downloads (and builds, for sdists) every wheel the ten packs' requirements need
when resolved together with ``torch==2.13.0``, plus the base ComfyUI packages
and uv itself, into ``~/.cache/nodeferry/realworld/wheels`` (or
``$NODEFERRY_REALWORLD_CACHE``). The tests then serve that directory as a PEP 503
index on loopback and never touch the internet. Running it again is cheap: pip
finds what is already there. This is the only place the tier downloads anything.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.realworld.packs import (
    BASE_PACKAGES,
    base_venv_cache,
    cache_dir,
    requirement_files,
    shared_dir,
)


def _pip_env() -> dict[str, str]:
    # The machine's pip.conf adds local indexes and constraints; the wheelhouse must
    # hold what the real index serves, so ignore it and name the torch wheel's home.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def prefetch(wheels: Path) -> None:
    shared = shared_dir()
    if shared is None:
        raise SystemExit("../shared/realworld not found next to the repository")
    wheels.mkdir(parents=True, exist_ok=True)
    local = ["--find-links", "/opt/wheels"] if Path("/opt/wheels").is_dir() else []
    files = requirement_files(shared)
    pip = [sys.executable, "-m", "pip", "wheel", "--prefer-binary", "-w", str(wheels), *local]
    pip += ["--find-links", str(wheels)]
    steps = [
        # What a fresh ComfyUI venv holds, then everything the packs ask for at once
        # (the resolve the tests repeat), then uv for the bootstrap test.
        [*BASE_PACKAGES, "pip", "setuptools", "wheel"],
        [BASE_PACKAGES[0], *(arg for f in files for arg in ("-r", str(f)))],
        ["uv"],
    ]
    for step in steps:
        print("prefetch:", " ".join(step), flush=True)
        subprocess.run([*pip, *step], env=_pip_env(), check=True, timeout=3600)
    count = sum(1 for _ in wheels.glob("*.whl"))
    print(f"prefetch: {count} wheels in {wheels}")


def build_base_venv(wheels: Path, venv: Path) -> None:
    """The tier's ComfyUI venv, made once (installing torch is the slow part)."""
    if (venv / "ready").is_file():
        return
    if venv.exists():
        shutil.rmtree(venv)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=_pip_env())
    python = str(venv / "bin" / "python")
    pip = [python, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheels)]
    subprocess.run([*pip, *BASE_PACKAGES], check=True, env=_pip_env(), timeout=1800)
    (venv / "ready").write_text("torch 2.13.0 and numpy 2.x from the prefetched wheels\n")
    print(f"prefetch: ComfyUI venv in {venv}")


def main() -> None:
    prefetch(cache_dir() / "wheels")
    build_base_venv(cache_dir() / "wheels", base_venv_cache())


if __name__ == "__main__":
    main()
