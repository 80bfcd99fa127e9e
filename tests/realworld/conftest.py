"""Fixtures of the real-pack tier: the shared packs over git, the prefetched wheels over
HTTP (a PEP 503 index on loopback), and the real ComfyUI 0.3.64 (a fresh checkout of
the bundle per test, with a hard-linked copy of its cached venv: torch 2.14.1).

Nothing here touches the internet: ``python -m tests.realworld.prefetch`` filled
the wheelhouse beforehand and ``python -m tests.support.realcomfy`` the venv.
Missing packs, wheels or venv skip the tier, or fail it under ``CI=true``, where a
skipped tier would be a silent pass.
"""

from __future__ import annotations

import functools
import html
import http.server
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from controller.sandbox.comfy import ComfyHome
from tests.realworld.packs import Pack, PackServer, cache_dir, packs, serve, shared_dir
from tests.realworld.prefetch import MARKER, TORCH_FAMILY
from tests.support import realcomfy

# The numpy a fresh image has; an extra index serving only it is what made uv
# (first-index strategy) call Impact-Pack's numpy<2 unsatisfiable.
_EXTRA_INDEX_ONLY = re.compile(r"^numpy-2\.")


def _missing(what: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"real-pack tier: {what}", pytrace=False)
    pytest.skip(f"real-pack tier: {what}")


@pytest.fixture(scope="session")
def shared() -> Path:
    found = shared_dir()
    if found is None:
        _missing("../shared/realworld is not next to the repository")
    assert found is not None
    return found


@pytest.fixture(scope="session")
def wheels() -> Path:
    found = cache_dir() / "wheels"
    if not (found / MARKER).is_file() or not any(found.glob("uv-*.whl")):
        _missing(f"no prefetched wheels in {found}: run `python -m tests.realworld.prefetch`")
    return found


@pytest.fixture(scope="session")
def comfyui_venv() -> Path:
    """The real ComfyUI's cached venv (torch 2.14.1); tests only ever copy it."""
    found = realcomfy.base_venv()
    if found is None or realcomfy.bundle() is None:
        _missing("no real ComfyUI venv: run `python -m tests.support.realcomfy`")
    assert found is not None
    return found


def _project(filename: str) -> str:
    return re.sub(r"[-_.]+", "-", filename.split("-", 1)[0]).lower()


def _write_index(root: Path, files: list[Path]) -> None:
    """A PEP 503 simple index: root/<project>/index.html linking to the wheels."""
    by_project: dict[str, list[Path]] = {}
    for path in files:
        by_project.setdefault(_project(path.name), []).append(path)
    root.mkdir(parents=True)
    for project, paths in by_project.items():
        (root / project).mkdir()
        links = []
        for path in paths:
            (root / project / path.name).symlink_to(path)
            links.append(f'<a href="{html.escape(path.name)}">{html.escape(path.name)}</a>')
        (root / project / "index.html").write_text("<html><body>" + "".join(links) + "</body>")
    (root / "index.html").write_text(
        "<html><body>" + "".join(f'<a href="{p}/">{p}</a>' for p in by_project) + "</body>"
    )


@dataclass
class Index:
    url: str  # the main index: every prefetched wheel
    extra_url: str  # a second index with only numpy 2.x, like a GPU image's torch index

    @property
    def pip_args(self) -> list[str]:
        return ["--index-url", self.url, "--extra-index-url", self.extra_url]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # pip and uv drop connections they no longer need (BrokenPipeError)


def _served(wheels: Path) -> list[Path]:
    """The prefetched wheels and the ComfyUI venv's own; torch and co. only from the latter."""
    own = sorted((realcomfy.cache_root() / "wheels").glob("*.whl"))
    by_name = {p.name: p for p in own}
    for path in sorted(wheels.glob("*.whl")):
        if _project(path.name) not in TORCH_FAMILY:
            by_name.setdefault(path.name, path)
    return sorted(by_name.values(), key=lambda p: p.name)


@pytest.fixture(scope="session")
def index(wheels: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Index]:
    root = tmp_path_factory.mktemp("index")
    files = _served(wheels)
    _write_index(root / "simple", files)
    _write_index(root / "extra" / "simple", [f for f in files if _EXTRA_INDEX_ONLY.match(f.name)])
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = _QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield Index(base + "/simple/", base + "/extra/simple/")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def pack_server(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PackServer]:
    with serve(shared, tmp_path_factory.mktemp("packs")) as server:
        yield server


@pytest.fixture(scope="session")
def node_packs(shared: Path) -> list[Pack]:
    """The eight packs packs.tsv calls node packs; the other two arrive another way
    (a submodule; a clone by Impact-Pack's install.py). Installed directly, the
    Subpack's install.py imports torchvision, and PyPI's torchvision (built for the
    CUDA torch) does not load against this CPU torch: nodeferry fails that node,
    quoting the RuntimeError, which is right but not what this tier is about."""
    return [p for p in packs(shared) if p.is_node_pack]


def real_comfyui(root: Path, venv: Path) -> ComfyHome:
    """A fresh checkout of the real ComfyUI at ``root``, with a copy of ``venv`` in it."""
    realcomfy.checkout(root)
    realcomfy.copy_venv(venv, root / "venv")
    return ComfyHome(root)


@pytest.fixture
def real_comfy(tmp_path: Path, comfyui_venv: Path) -> ComfyHome:
    return real_comfyui(tmp_path / "ComfyUI", comfyui_venv)


def path_without_uv() -> str:
    """PATH minus every directory holding a ``uv``: an instance that lacks it."""
    dirs = os.environ.get("PATH", "").split(os.pathsep)
    return os.pathsep.join(d for d in dirs if d and not (Path(d) / "uv").exists())
