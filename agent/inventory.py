"""What a ComfyUI home holds right now, as a :class:`protocol.Lock`.

Nodes: every git clone directly under ``custom_nodes/`` (hidden and
``.disabled`` entries are skipped, as ComfyUI skips them), with its origin URL
and checked-out commit. Packages: every distribution ComfyUI's interpreter can
see, asked of that interpreter itself. Read-only: nothing here changes the home.
"""

import os
import subprocess
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from agent import interpreter
from protocol import Lock, LockedNode, mask_credentials, utc_now
from protocol.lock import TORCH_FAMILY

TIMEOUT_SECONDS = 120.0


def _git(directory: Path, *args: str) -> Optional[str]:
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0", LC_ALL="C")
    for name in ("GIT_DIR", "GIT_WORK_TREE"):
        env.pop(name, None)
    try:
        done = subprocess.run(
            ["git", "-C", str(directory), *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
            env=env,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.decode("utf-8", "replace").strip()


def _is_own_repo(directory: Path) -> bool:
    """``directory`` is the top of a git work tree (not a plain folder inside one)."""
    if not (directory / ".git").exists():
        return False
    top = _git(directory, "rev-parse", "--show-toplevel")
    return top is not None and os.path.realpath(top) == os.path.realpath(directory)


def installed_nodes(custom_nodes: Path) -> Tuple[List[LockedNode], List[str]]:
    """The git clones in ``custom_nodes``, and the entries that are not (by name)."""
    nodes: List[LockedNode] = []
    other: List[str] = []
    try:
        entries = sorted(custom_nodes.iterdir(), key=lambda p: p.name.lower())
    except OSError:
        return nodes, other
    for entry in entries:
        name = entry.name
        if name.startswith(".") or name.endswith(".disabled") or name == "__pycache__":
            continue
        if not entry.is_dir():
            if name.endswith(".py"):
                other.append(name)
            continue
        if not _is_own_repo(entry):
            other.append(name)
            continue
        url = _git(entry, "config", "--get", "remote.origin.url")
        commit = _git(entry, "rev-parse", "HEAD")
        if not url or not commit:
            other.append(name)
            continue
        # lock.json is meant to be shared: no credentials from the clone's remote.
        nodes.append(LockedNode(name=name, url=mask_credentials(url), commit=commit))
    return nodes, other


def environment(python: str, timeout: float = TIMEOUT_SECONDS) -> Dict[str, object]:
    """``{"version", "path", "packages": {normalised name: version}}`` of ``python``."""
    try:
        return interpreter.environment(python, timeout)
    except interpreter.AskFailed as exc:
        raise RuntimeError(f"{python} could not list its packages: {exc}") from None


def take(ui_home: Path, python: Optional[str]) -> Lock:
    """The lock of ``ui_home`` as it is now; without an interpreter, nodes only."""
    nodes, _other = installed_nodes(ui_home / "custom_nodes")
    comfyui = _git(ui_home, "rev-parse", "HEAD") if _is_own_repo(ui_home) else None
    packages: Dict[str, str] = {}
    version = path = None
    if python is not None:
        env = environment(python)
        packages = dict(env["packages"])  # type: ignore[call-overload]
        version, path = str(env["version"]), str(env["path"])
    return Lock(
        created_at=utc_now(),
        ui_home=str(ui_home),
        python_version=version,
        python_path=path,
        comfyui=comfyui if comfyui and len(comfyui) in (40, 64) else None,
        torch={name: packages[name] for name in TORCH_FAMILY if name in packages},
        nodes=nodes,
        packages=packages,
    )
