"""Where the real node packs are and how to serve them: shared by the tier and its prefetch.

The packs live in ``../shared/realworld`` next to the repository (bundles of real,
public ComfyUI node packs). They are test data: nothing here copies their code.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def shared_dir() -> Path | None:
    """``../shared/realworld`` beside the repository (or its main worktree), if present."""
    override = os.environ.get("NODEFERRY_REALWORLD_DIR")
    candidates = [Path(override)] if override else []
    candidates.append(REPO_ROOT.parent / "shared" / "realworld")
    # A git worktree lives elsewhere; its main checkout's sibling is the same place.
    candidates.append(REPO_ROOT.parent.parent / "shared" / "realworld")
    for candidate in candidates:
        if (candidate / "packs.tsv").is_file() and (candidate / "serve.sh").is_file():
            return candidate.resolve()
    return None


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "nodeferry" / "realworld"
    return Path(os.environ.get("NODEFERRY_REALWORLD_CACHE", default))


@dataclass(frozen=True)
class Pack:
    name: str
    upstream: str  # owner/name on github.com
    role: str

    @property
    def is_node_pack(self) -> bool:
        return self.role == "node pack"


def packs(shared: Path) -> list[Pack]:
    found = []
    for line in (shared / "packs.tsv").read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, upstream, role, *_rest = line.split("\t")
        found.append(Pack(name, upstream, role))
    return found


@dataclass
class PackServer:
    port: int
    pid: int
    env: dict[str, str]  # git config that points https://github.com/ at the server

    def url(self, pack: Pack) -> str:
        return f"https://github.com/{pack.upstream}"


@contextmanager
def serve(shared: Path, work: Path) -> Iterator[PackServer]:
    """Run the shared ``serve.sh`` on loopback; the daemon is killed on exit."""
    out = subprocess.run(
        ["bash", str(shared / "serve.sh"), str(work), "0"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout.split()
    port, pid = int(out[0]), int(out[1])
    env: dict[str, str] = {}
    for line in (work / "env.sh").read_text(encoding="utf-8").splitlines():
        if line.startswith("export "):
            key, _eq, value = line[len("export ") :].partition("=")
            env[key] = value
    try:
        yield PackServer(port, pid, env)
    finally:
        with suppress(ProcessLookupError):
            os.kill(pid, 15)


def requirement_files(shared: Path) -> list[Path]:
    """Every pack's requirements.txt, checked out once into a temp dir (for prefetch)."""
    tmp = Path(tempfile.mkdtemp(prefix="nodeferry-realworld-reqs-"))
    files = []
    for pack in packs(shared):
        bundle = shared / "bundles" / f"{pack.name}.bundle"
        tarball = shared / "bundles" / f"{pack.name}.git.tar.gz"
        dest = tmp / pack.name
        if bundle.is_file():
            source = str(bundle)
        else:
            bare = tmp / "bare" / pack.name
            bare.mkdir(parents=True)
            subprocess.run(["tar", "-C", str(bare), "-xzf", str(tarball)], check=True)
            source = str(next(bare.iterdir()))
        subprocess.run(["git", "clone", "-q", source, str(dest)], check=True, timeout=300)
        if (dest / "requirements.txt").is_file():
            files.append(dest / "requirements.txt")
    return files
