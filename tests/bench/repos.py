"""Generated custom-node repositories with realistic weight.

Real ComfyUI node repositories carry megabytes of history (rebuilt JS bundles,
example images, re-exported workflows) while their current tree is a fraction of
that, a few Python modules, often a ``requirements.txt`` and sometimes an
``install.py``. The benchmark needs that shape, because it is what makes a full
``git clone --recursive`` slower than a shallow one, and what makes one ``pip``
per node slower than one resolve.

Repositories are written with ``git fast-import`` from a seeded random source,
so the same parameters always give byte-identical history, and are cached on
disk under a stamp of those parameters.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

_EPOCH = 1_700_000_000  # fixed commit times keep the history reproducible
_AUTHOR = b"Node Author <author@example.invalid>"

# Names in the style of the ecosystem; numbered so 30 of them never collide.
_STEMS = (
    "ComfyUI-Impact-Pack",
    "ComfyUI-VideoHelperSuite",
    "ComfyUI_essentials",
    "rgthree-comfy",
    "ComfyUI-KJNodes",
    "was-node-suite-comfyui",
    "ComfyUI-Custom-Scripts",
    "ComfyUI_IPAdapter_plus",
    "comfyui_controlnet_aux",
    "ComfyUI-Advanced-ControlNet",
    "ComfyUI-AnimateDiff-Evolved",
    "ComfyUI_UltimateSDUpscale",
    "ComfyUI-Inspire-Pack",
    "efficiency-nodes-comfyui",
    "ComfyUI_Comfyroll_CustomNodes",
)


@dataclass(frozen=True)
class RepoPlan:
    """One repository to generate."""

    name: str
    commits: int
    #: Bytes of the regenerated assets per commit (they do not delta or compress).
    asset_bytes: int
    requirements: tuple[str, ...] = ()
    install_script: bool = False


@dataclass(frozen=True)
class RepoSet:
    """The generated repositories, as bare ``<root>/<name>.git`` directories."""

    root: Path
    plans: tuple[RepoPlan, ...]
    history_bytes: dict[str, int] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [plan.name for plan in self.plans]

    @property
    def total_history_bytes(self) -> int:
        return sum(self.history_bytes.values())


def plan_repos(
    count: int,
    *,
    requirement_pool: Sequence[str],
    history_mb: tuple[float, float] = (1.5, 5.0),
    with_requirements: float = 2 / 3,
    install_scripts: int = 2,
    seed: int = 5,
) -> tuple[RepoPlan, ...]:
    """A deterministic mix: about two thirds with requirements, ``install_scripts`` with install.py.

    Each repository's history lies between ``history_mb`` megabytes (spread evenly
    over the set), most of it in assets that later commits replace, so a shallow
    clone fetches a fraction of what a full clone does.
    """
    if count < 1:
        raise ValueError("count must be at least 1")
    if install_scripts > count:
        raise ValueError("more install scripts than repositories")
    rng = random.Random(seed)
    plans = []
    with_reqs = round(count * with_requirements) if requirement_pool else 0
    for index in range(count):
        stem = _STEMS[index % len(_STEMS)]
        name = stem if index < len(_STEMS) else f"{stem}-{index // len(_STEMS) + 1}"
        low, high = history_mb
        mb = low + (high - low) * (index / max(count - 1, 1))
        commits = rng.randint(20, 40)
        asset_bytes = int(mb * 1024 * 1024 / commits)
        requirements: tuple[str, ...] = ()
        if index < with_reqs:
            picks = rng.sample(list(requirement_pool), k=min(len(requirement_pool), 1 + index % 3))
            requirements = tuple(sorted(picks))
        plans.append(
            RepoPlan(
                name=name,
                commits=commits,
                asset_bytes=asset_bytes,
                requirements=requirements,
                # The last ones, so install.py nodes are not all also requirement nodes.
                install_script=index >= count - install_scripts,
            )
        )
    return tuple(plans)


def generate(root: Path, plans: Sequence[RepoPlan], *, seed: int = 5) -> RepoSet:
    """Write the bare repositories under ``root`` (reusing them when already made alike)."""
    root.mkdir(parents=True, exist_ok=True)
    stamp = root / "repos.json"
    # Through JSON both ways, so tuples and lists compare alike.
    wanted = json.loads(json.dumps({"seed": seed, "plans": [asdict(plan) for plan in plans]}))
    if stamp.exists():
        recorded = json.loads(stamp.read_text())
        if recorded.get("plans_key") == wanted:
            return RepoSet(root, tuple(plans), dict(recorded["history_bytes"]))
    for child in root.iterdir():
        if child.is_dir() and child.name.endswith(".git"):
            shutil.rmtree(child)
    history: dict[str, int] = {}
    for index, plan in enumerate(plans):
        history[plan.name] = _write_repo(root / f"{plan.name}.git", plan, seed * 1000 + index)
    stamp.write_text(json.dumps({"plans_key": wanted, "history_bytes": history}, indent=1))
    return RepoSet(root, tuple(plans), history)


def _write_repo(path: Path, plan: RepoPlan, seed: int) -> int:
    subprocess.run(
        ["git", "init", "--bare", "--quiet", "--initial-branch=main", str(path)], check=True
    )
    stream = _fast_import_stream(plan, random.Random(seed))
    subprocess.run(
        ["git", "fast-import", "--quiet", "--date-format=raw"],
        cwd=path,
        input=stream,
        check=True,
    )
    (path / "git-daemon-export-ok").touch()
    return sum(p.stat().st_size for p in (path / "objects" / "pack").glob("*.pack"))


def _fast_import_stream(plan: RepoPlan, rng: random.Random) -> bytes:
    out = bytearray()
    mark = 0

    def blob(data: bytes) -> int:
        nonlocal mark
        mark += 1
        out.extend(b"blob\nmark :%d\ndata %d\n" % (mark, len(data)))
        out.extend(data)
        out.extend(b"\n")
        return mark

    previous = 0
    for number in range(plan.commits):
        files: dict[str, int] = {}
        if number == 0:
            files["__init__.py"] = blob(_init_py(plan.name))
            files["README.md"] = blob(f"# {plan.name}\n\nCustom nodes for ComfyUI.\n".encode())
            files["pyproject.toml"] = blob(_pyproject(plan.name))
            if plan.requirements:
                files["requirements.txt"] = blob(("\n".join(plan.requirements) + "\n").encode())
            if plan.install_script:
                files["install.py"] = blob(_INSTALL_PY)
        # Every commit rebuilds the web bundle and one example image: the weight that
        # piles up in history and that a shallow clone leaves behind.
        half = plan.asset_bytes // 2
        files["web/js/extension.js"] = blob(_js_like(rng, half))
        files[f"examples/example_{number % 3}.png"] = blob(rng.randbytes(plan.asset_bytes - half))
        files["nodes.py"] = blob(_nodes_py(plan.name, number))
        mark += 1
        message = f"Update nodes ({number + 1})\n".encode()
        when = b"%d +0000" % (_EPOCH + number * 3600)
        out.extend(b"commit refs/heads/main\nmark :%d\n" % mark)
        out.extend(b"author " + _AUTHOR + b" " + when + b"\n")
        out.extend(b"committer " + _AUTHOR + b" " + when + b"\n")
        out.extend(b"data %d\n" % len(message) + message)
        if previous:
            out.extend(b"from :%d\n" % previous)
        for path, blob_mark in sorted(files.items()):
            out.extend(b"M 100644 :%d %s\n" % (blob_mark, path.encode()))
        out.extend(b"\n")
        previous = mark
    out.extend(b"done\n")
    return bytes(out)


def _js_like(rng: random.Random, size: int) -> bytes:
    # Minified bundles are dense: random hex text compresses only about 2:1.
    return rng.randbytes(size // 2).hex().encode()[:size]


def _init_py(name: str) -> bytes:
    return (
        f'"""{name}: custom nodes for ComfyUI."""\n'
        "from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS\n\n"
        'WEB_DIRECTORY = "./web/js"\n'
        '__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]\n'
    ).encode()


def _nodes_py(name: str, revision: int) -> bytes:
    ident = "".join(ch if ch.isalnum() else "_" for ch in name)
    return (
        f"class {ident}Node:\n"
        "    @classmethod\n"
        "    def INPUT_TYPES(cls):\n"
        '        return {"required": {"image": ("IMAGE",)}}\n\n'
        '    RETURN_TYPES = ("IMAGE",)\n'
        '    FUNCTION = "run"\n'
        f"    REVISION = {revision}\n\n"
        "    def run(self, image):\n"
        "        return (image,)\n\n\n"
        f'NODE_CLASS_MAPPINGS = {{"{ident}": {ident}Node}}\n'
        f'NODE_DISPLAY_NAME_MAPPINGS = {{"{ident}": "{name}"}}\n'
    ).encode()


def _pyproject(name: str) -> bytes:
    return f'[project]\nname = "{name.lower()}"\nversion = "1.0.0"\n'.encode()


# What install.py scripts typically do: check the interpreter, fetch or prepare
# something, leave a mark. It runs with ComfyUI's interpreter in the node's directory.
_INSTALL_PY = b"""import pathlib
import sys

pathlib.Path("install_done.txt").write_text(sys.executable + "\\n")
print("install.py finished with", sys.executable)
"""
