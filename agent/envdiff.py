"""What a task changed in ComfyUI's environment, and what forced each downgrade.

Resolving many packs together moves shared packages (numpy, OpenCV) up and down;
a user must be told. The installed distributions are read from ComfyUI's own
interpreter before and after, compared, and for every downgrade the
requirements that exclude the old version are named: the nodes' own lines and
the ``Requires-Dist`` of what is installed now (the resolver's reasons).
"""

import json
import re
from typing import Dict, List, Optional, Sequence, Tuple

from agent import interpreter

Versions = Dict[str, str]
Changes = Dict[str, Dict[str, List[Optional[str]]]]

# Run in ComfyUI's interpreter: which requirements (given lines, then installed
# distributions' Requires-Dist) exclude a package's old version.
_WHY = """
import json, sys
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
try:
    from importlib import metadata
except ImportError:
    import importlib_metadata as metadata
import re
def norm(n): return re.sub(r"[-_.]+", "-", n).lower()
query = json.loads(sys.stdin.read())
olds = {norm(k): v for k, v in query["downgraded"].items()}
why = {k: [] for k in olds}
def consider(origin, text):
    try:
        req = Requirement(text)
    except Exception:
        return
    name = norm(req.name)
    if name in olds and req.specifier and not req.specifier.contains(olds[name], prereleases=True):
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            why[name].append(origin + ": " + text.split(";")[0].strip())
for origin, text in query["lines"]:
    consider(origin, text)
for dist in metadata.distributions():
    for text in dist.requires or []:
        consider(dist.metadata["Name"] + " " + dist.version + " requires", text)
print(json.dumps(why))
"""


def snapshot(python: str, timeout: float = 120) -> Optional[Versions]:
    """Every installed distribution of ComfyUI's interpreter; None when unknown."""
    return interpreter.packages(python, timeout)


def _version_key(version: str) -> Tuple[Tuple[int, object], ...]:
    """Good enough ordering for release versions: numbers compare as numbers."""
    parts: List[Tuple[int, object]] = []
    for piece in re.split(r"[.+!-]", version):
        match = re.match(r"^(\d+)(.*)$", piece)
        if match:
            parts.append((1, int(match.group(1))))
            if match.group(2):
                parts.append((0, match.group(2)))  # 1.0rc1 < 1.0
        elif piece:
            parts.append((0, piece))
    return tuple(parts)


def diff(before: Versions, after: Versions) -> Changes:
    changes: Changes = {}
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name), after.get(name)
        if old == new:
            continue
        if old is None:
            kind = "added"
        elif new is None:
            kind = "removed"
        elif _version_key(new) < _version_key(old):
            kind = "downgraded"
        else:
            kind = "upgraded"
        changes.setdefault(kind, {})[name] = [old, new]
    return changes


def downgrade_reasons(
    python: str,
    downgraded: Dict[str, List[Optional[str]]],
    lines: Sequence[Tuple[str, str]],
    timeout: float = 120,
) -> Dict[str, List[str]]:
    """For each downgraded package, the requirements that rule out its old version.

    ``lines`` are (origin, requirement) pairs, e.g. ("ComfyUI-Impact-Pack", "numpy<2").
    """
    olds = {name: pair[0] for name, pair in downgraded.items() if pair[0]}
    if not olds:
        return {}
    query = json.dumps({"downgraded": olds, "lines": [list(pair) for pair in lines]})
    try:
        data = interpreter.ask(python, _WHY, stdin=query, timeout=timeout)
    except interpreter.AskFailed:
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): [str(x) for x in v][:5] for k, v in data.items() if v}


def describe_downgrades(changes: Changes, reasons: Dict[str, List[str]]) -> List[str]:
    out = []
    for name, (old, new) in sorted(changes.get("downgraded", {}).items()):
        text = f"{name} downgraded {old} -> {new}"
        why = reasons.get(name)
        if why:
            text += " (forced by " + "; ".join(why) + ")"
        out.append(text)
    return out
