"""Asking ComfyUI's own interpreter about its environment.

Each question is a small program run with ``python -c`` in that interpreter
(any Python 3), whose last line of output is JSON. What it sees is what ComfyUI
sees at start: without the agent's ``PYTHONPATH``, and without the working
directory ``-c`` would put first on ``sys.path`` (a checkout there with an
editable install's egg-info would count as installed).
"""

import json
import os
import subprocess
from typing import Dict, Optional, Sequence

from protocol.lock import normalize_package

# Prepended to every question.
_PRELUDE = 'import sys\nsys.path = [p for p in sys.path if p not in ("", ".")]\n'

_ENVIRONMENT = """
import json
out = {"version": "%d.%d.%d" % sys.version_info[:3], "path": sys.executable, "packages": {}}
try:
    from importlib import metadata
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            out["packages"][name] = dist.version
except ImportError:
    import pkg_resources
    for dist in pkg_resources.working_set:
        out["packages"][dist.project_name] = dist.version
print(json.dumps(out))
"""

_VERSIONS_OF = """
import json
names = sys.argv[1:]
found = {}
try:
    from importlib import metadata
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
except ImportError:
    import pkg_resources
    for name in names:
        try:
            found[name] = pkg_resources.get_distribution(name).version
        except pkg_resources.DistributionNotFound:
            pass
print(json.dumps(found))
"""


class AskFailed(RuntimeError):
    """The interpreter could not answer (missing, crashed, timed out, no JSON)."""


def ask(
    python: str,
    code: str,
    args: Sequence[str] = (),
    *,
    stdin: Optional[str] = None,
    timeout: float = 120.0,
) -> object:
    """Run ``code`` in ``python`` and return the JSON of its last output line."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the agent's, not ComfyUI's
    try:
        done = subprocess.run(
            [python, "-c", _PRELUDE + code, *args],
            input=(stdin or "").encode("utf-8"),
            capture_output=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise AskFailed(f"{python} could not be asked: {exc}") from None
    if done.returncode != 0:
        tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:]
        raise AskFailed(f"{python} failed (exit {done.returncode}): {' '.join(tail)}")
    try:
        return json.loads(done.stdout.decode("utf-8", "replace").strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise AskFailed(f"{python} gave no answer") from None


def environment(python: str, timeout: float = 120.0) -> Dict[str, object]:
    """``{"version", "path", "packages": {normalised name: version}}``; raises AskFailed."""
    data = ask(python, _ENVIRONMENT, timeout=timeout)
    if not isinstance(data, dict) or not isinstance(data.get("packages"), dict):
        raise AskFailed(f"{python} gave no package list")
    packages = {normalize_package(str(k)): str(v) for k, v in data["packages"].items()}
    return {"version": data.get("version"), "path": data.get("path"), "packages": packages}


def packages(python: str, timeout: float = 120.0) -> Optional[Dict[str, str]]:
    """Every installed distribution, normalised name to version; None when unknown."""
    try:
        found = environment(python, timeout)["packages"]
    except AskFailed:
        return None
    return found if isinstance(found, dict) else None


def versions_of(python: str, names: Sequence[str], timeout: float = 60.0) -> Dict[str, str]:
    """The installed versions of ``names`` (as given); {} when unknown."""
    try:
        data = ask(python, _VERSIONS_OF, names, timeout=timeout)
    except AskFailed:
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
