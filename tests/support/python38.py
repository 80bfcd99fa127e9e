"""Finding a Python 3.8 interpreter: the agent and protocol promise to run on it.

No pytest here. Looked for, in order: ``$NODEFERRY_PYTHON38``; ``python3.8`` on
PATH; ``uv python find 3.8`` (never downloads); pyenv's versions. Each candidate
must run and say it is 3.8.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

ENV = "NODEFERRY_PYTHON38"


def _candidates() -> Iterator[str]:
    explicit = os.environ.get(ENV)
    if explicit:
        yield explicit
    on_path = shutil.which("python3.8")
    if on_path:
        yield on_path
    uv = shutil.which("uv")
    if uv:
        env = dict(os.environ, UV_PYTHON_DOWNLOADS="never", UV_OFFLINE="1")
        try:
            found = subprocess.run(
                [uv, "python", "find", "3.8"],
                capture_output=True,
                text=True,
                timeout=60,
                env=env,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            found = None
        if found is not None and found.returncode == 0 and found.stdout.strip():
            yield found.stdout.strip()
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    for version in sorted((pyenv_root / "versions").glob("3.8*"), reverse=True):
        yield str(version / "bin" / "python3.8")


def _is_38(python: str) -> bool:
    try:
        result = subprocess.run(
            [python, "-c", "import sys; print(sys.version_info[:2] == (3, 8))"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and result.stdout.strip() == "True"


def find_python38() -> Path | None:
    """The first working Python 3.8 found, or None."""
    for candidate in _candidates():
        if _is_38(candidate):
            return Path(candidate)
    return None


if __name__ == "__main__":  # .ci/run: print the interpreter, or fail
    import sys

    found = find_python38()
    if found is None:
        sys.exit("no Python 3.8 found")
    print(found)
