"""The benchmark's world: generated node repositories served by a real ``git
daemon`` behind the latency proxy, a local wheelhouse, and fresh fake ComfyUI
homes made from one venv template.

Expensive parts (repositories, wheelhouse, venv template) are cached under the
work directory, keyed by what they were made from, so a second run with
``--workdir`` skips them; everything a measurement touches (a ComfyUI home, a
state dir, pip's and uv's caches) is fresh for every run.
"""

from __future__ import annotations

import itertools
import shutil
import zlib
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from controller.sandbox.comfy import (
    ComfyHome,
    build_venv_template,
    isolated_pip_env,
    make_comfy_home,
)
from controller.sandbox.gitserver import GitServer
from controller.sandbox.wheels import build_wheel
from tests.bench import repos
from tests.bench.latency_proxy import LatencyProxy
from tests.bench.sizes import BenchSize

# A small ecosystem in the shape of what node requirements pull in: a few
# leaves, a few packages with dependencies, some pinned with specifiers.
# (name, version, requires)
WHEELS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("nf-numpy", "1.26.4", ()),
    ("nf-pillow", "10.3.0", ()),
    ("nf-opencv", "4.9.0", ("nf-numpy>=1.20",)),
    ("nf-scipy", "1.13.0", ("nf-numpy>=1.22",)),
    ("nf-requests", "2.31.0", ("nf-urllib3", "nf-idna")),
    ("nf-urllib3", "2.2.1", ()),
    ("nf-idna", "3.7", ()),
    ("nf-tqdm", "4.66.2", ()),
    ("nf-safetensors", "0.4.3", ()),
    ("nf-hub", "0.23.0", ("nf-requests", "nf-tqdm")),
    ("nf-tokenizers", "0.19.1", ("nf-hub",)),
    ("nf-transformers", "4.40.1", ("nf-tokenizers", "nf-safetensors", "nf-numpy")),
    ("nf-einops", "0.8.0", ()),
    ("nf-matplotlib", "3.8.4", ("nf-numpy", "nf-pillow")),
    ("nf-piexif", "1.1.3", ()),
    ("nf-onnx", "1.16.0", ("nf-numpy",)),
)

#: What requirements.txt lines look like in the wild: bare names and specifiers.
REQUIREMENT_LINES = (
    "nf-numpy",
    "nf-pillow>=9.0",
    "nf-opencv",
    "nf-scipy",
    "nf-transformers>=4.30",
    "nf-einops",
    "nf-matplotlib",
    "nf-piexif",
    "nf-onnx",
    "nf-tqdm",
    "nf-safetensors",
    "nf-requests",
)

#: Each wheel carries this many modules of this many bytes, so installing one
#: writes files the way a real (if small) package does.
_MODULES_PER_WHEEL = 12
_MODULE_BYTES = 24 * 1024


@dataclass
class Lab:
    size: BenchSize
    workdir: Path

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.wheelhouse = self.workdir / "wheelhouse"
        self.runs = self.workdir / "runs"
        #: Cleanups of everything sections start (servers, processes), run at exit.
        self.stack = ExitStack()
        #: What sections share (the controller and its sshd), made by the first that needs it.
        self.shared: dict[str, object] = {}
        self._counter = itertools.count()
        self.git: GitServer | None = None
        self.proxy: LatencyProxy | None = None
        self.repo_set: repos.RepoSet | None = None
        self.venv_template: Path | None = None

    # -- set-up ---------------------------------------------------------------------

    def __enter__(self) -> Lab:
        try:
            self._build_wheelhouse()
            self.venv_template = self._venv_template()
            self.git = GitServer(self.workdir / "git")
            self.git.root.mkdir(parents=True, exist_ok=True)
            plans = repos.plan_repos(
                self.size.repos,
                requirement_pool=REQUIREMENT_LINES,
                history_mb=self.size.history_mb,
                install_scripts=self.size.install_scripts,
            )
            self.repo_set = repos.generate(self.git.root, plans)
            self.stack.enter_context(self.git)
            self.proxy = self.stack.enter_context(
                LatencyProxy("127.0.0.1", self.git.port, delay=self.size.proxy_delay)
            )
            if self.runs.exists():
                shutil.rmtree(self.runs)
            self.runs.mkdir()
        except BaseException:
            self.stack.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stack.close()

    def _build_wheelhouse(self) -> None:
        self.wheelhouse.mkdir(parents=True, exist_ok=True)
        for name, version, requires in WHEELS:
            dist = name.replace("-", "_")
            if (self.wheelhouse / f"{dist}-{version}-py3-none-any.whl").exists():
                continue
            modules = {f"{dist}/__init__.py": f'__version__ = "{version}"\n'}
            for index in range(_MODULES_PER_WHEEL):
                # Distinct, incompressible-ish text so each file costs a real write.
                line = f"TABLE_{index} = {zlib.crc32(f'{name}:{index}'.encode()):#x}\n"
                modules[f"{dist}/_part{index}.py"] = line * (_MODULE_BYTES // len(line))
            build_wheel(self.wheelhouse, name, version, requires=requires, modules=modules)

    def _venv_template(self) -> Path:
        template = self.workdir / "venv-template"
        marker = template / ".complete"
        if not marker.exists():
            if template.exists():
                shutil.rmtree(template)
            build_venv_template(template, self.wheelhouse)
            marker.touch()
        return template

    # -- what measurements use -------------------------------------------------------

    @property
    def pip_args(self) -> list[str]:
        return ["--no-index", "--find-links", str(self.wheelhouse)]

    def node_urls(self, *, via_proxy: bool = True, limit: int | None = None) -> list[str]:
        assert self.repo_set is not None and self.git is not None and self.proxy is not None
        port = self.proxy.port if via_proxy else self.git.port
        names = self.repo_set.names[:limit] if limit is not None else self.repo_set.names
        return [f"git://127.0.0.1:{port}/{name}" for name in names]

    def small_repo(self, name: str, files: dict[str, str]) -> str:
        """A one-commit repository served by the daemon (made anew each run); its URL."""
        assert self.git is not None
        for leftover in (self.git.root / f"{name}.git", self.git.work_root / name):
            shutil.rmtree(leftover, ignore_errors=True)
        return self.git.add_repo(name, files).url

    def fresh_dir(self, label: str) -> Path:
        path = self.runs / f"{next(self._counter):03d}-{label}"
        path.mkdir(parents=True)
        return path

    def fresh_home(self, label: str) -> ComfyHome:
        """A new ComfyUI home with its own copy of the venv: nothing installed yet."""
        assert self.venv_template is not None
        return make_comfy_home(self.fresh_dir(label) / "ComfyUI", venv_template=self.venv_template)

    def fresh_env(self, label: str) -> dict[str, str]:
        """pip/uv isolated from this machine's config, with caches no earlier run warmed."""
        env = isolated_pip_env()
        caches = self.fresh_dir(f"{label}-caches")
        env["PIP_CACHE_DIR"] = str(caches / "pip")
        env["UV_CACHE_DIR"] = str(caches / "uv")
        env["GIT_TERMINAL_PROMPT"] = "0"
        return env

    def discard(self, path: Path) -> None:
        """Remove a finished run's files so a long benchmark does not fill the disk."""
        shutil.rmtree(path, ignore_errors=True)
