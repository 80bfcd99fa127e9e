"""Fill the real-pack tier's wheelhouse before the tests: ``python -m tests.realworld.prefetch``.

The tier installs the packs into the real ComfyUI's venv (tests/support/realcomfy.py:
torch 2.14.1, torchvision 0.29.1 and ComfyUI's requirements, from their own cached
wheels). What the packs add to that venv is resolved *in* a copy of it, by pip's
dry run with the torch family held where it is, as nodeferry holds it; then
exactly those distributions are fetched (and built, for sdists) into
``~/.cache/nodeferry/realworld/wheels`` (or ``$NODEFERRY_REALWORLD_CACHE``), with
``--no-deps``. So no torch, CUDA or not, is ever downloaded here: the venv already
has it, and the dry run installs nothing it has. Plus uv, pip, setuptools and
wheel for the tests that bootstrap them. The tests then serve this wheelhouse and
the venv's own as a PEP 503 index on loopback and never touch the internet.
Running it again is cheap: pip finds what is already there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.realworld.packs import cache_dir, requirement_files, shared_dir
from tests.support import realcomfy

#: kept at the versions the venv has, as nodeferry keeps them
TORCH_FAMILY = ("torch", "torchvision", "torchaudio")
#: written last: what the packs add to the real ComfyUI's venv, one per line
MARKER = "resolved-for-realcomfy.txt"
#: tools the tier's bootstrap tests install from the index
TOOLS = ("uv", "pip", "setuptools", "wheel")


def _pip_env() -> dict[str, str]:
    # The machine's pip.conf adds local indexes and constraints; the wheelhouse must
    # hold what the real index serves, so ignore it. (Torch is never fetched: see above.)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _versions(python: Path, names: tuple[str, ...]) -> dict[str, str]:
    code = (
        "import json, sys\nfrom importlib import metadata\nout = {}\n"
        "for n in sys.argv[1:]:\n    try: out[n] = metadata.version(n)\n"
        "    except metadata.PackageNotFoundError: pass\nprint(json.dumps(out))\n"
    )
    out = subprocess.run(
        [str(python), "-c", code, *names], check=True, capture_output=True, text=True
    ).stdout
    found: dict[str, str] = json.loads(out)
    return found


def resolve(venv: Path, files: list[Path], work: Path) -> list[str]:
    """``name==version`` of every distribution the packs add to (a copy of) ``venv``."""
    copy = realcomfy.copy_venv(venv, work / "venv")
    python = copy / "bin" / "python"
    constraints = work / "constraints.txt"
    held = _versions(python, TORCH_FAMILY)
    constraints.write_text("".join(f"{n}=={v}\n" for n, v in held.items()))
    report = work / "report.json"
    argv = [str(python), "-m", "pip", "install", "--dry-run", "-q", "--report", str(report)]
    argv += ["--prefer-binary", "-c", str(constraints)]
    argv += ["--find-links", str(realcomfy.cache_root() / "wheels")]
    argv += [arg for f in files for arg in ("-r", str(f))]
    subprocess.run(argv, env=_pip_env(), check=True, timeout=3600)
    data = json.loads(report.read_text())
    wanted = []
    for item in data.get("install", []):
        meta = item["metadata"]
        if meta["name"].lower() in TORCH_FAMILY:
            raise SystemExit(f"prefetch: the packs would replace {meta['name']}; refusing")
        wanted.append(f"{meta['name']}=={meta['version']}")
    return sorted(wanted)


def prefetch(wheels: Path) -> None:
    shared = shared_dir()
    if shared is None:
        raise SystemExit("../shared/realworld not found next to the repository")
    venv = realcomfy.base_venv() or realcomfy.build()
    wheels.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="nodeferry-prefetch-"))
    try:
        wanted = resolve(venv, requirement_files(shared), work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"prefetch: the packs add {len(wanted)} distributions: {' '.join(wanted)}", flush=True)
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--prefer-binary"]
    pip += ["-w", str(wheels), "--find-links", str(wheels)]
    for step in (wanted, list(TOOLS)):
        subprocess.run([*pip, *step], env=_pip_env(), check=True, timeout=3600)
    (wheels / MARKER).write_text("".join(f"{w}\n" for w in wanted))
    count = sum(1 for _ in wheels.glob("*.whl"))
    print(f"prefetch: {count} wheels in {wheels}")


def main() -> None:
    prefetch(cache_dir() / "wheels")


if __name__ == "__main__":
    main()
