"""Real packs: the ComfyUI node packs in ``shared/realworld`` (served on loopback by its
``serve.sh``) installed into a ComfyUI venv with ``torch==2.13.0`` by every contender,
side by side in one run, each from cold package caches (an empty cache dir each).

Contenders: the naive loop (clone --recursive, pip install -r, install.py, per pack),
VastAI's provisioning loop (4 clones at a time, then pip per node), ComfyUI-Manager's
``cm-cli`` in its own copy of the environment, and nodeferry's agent with pip and uv.

The packs come only from the loopback git server. Their requirements come from the
package index configured for pip (the real one, unless the machine's pip points
elsewhere): this is a benchmark, not a test. The smoke size installs only the packs
that have no requirements, so it needs no network.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.sandbox.comfy import isolated_pip_env
from tests.bench.baselines import _timed, sequential_install
from tests.bench.install_bench import AgentInstall, _watch_states, write_bundle
from tests.bench.lab import Lab
from tests.bench.report import Report, Row

SECTION = "realpacks"
REPO_ROOT = Path(__file__).resolve().parents[2]
TORCH = "torch==2.13.0"
#: ComfyUI's own requirements.txt less what is not on this machine's disk as a CPU
#: build (torchvision, torchaudio) and its frontend package (large, unused here).
COMFY_BASE = (
    "torchsde",
    "numpy>=1.25.0",
    "einops",
    "transformers>=4.37.2",
    "tokenizers>=0.13.3",
    "sentencepiece",
    "safetensors>=0.4.2",
    "aiohttp>=3.11.8",
    "yarl>=1.18.0",
    "pyyaml",
    "Pillow",
    "scipy",
    "tqdm",
    "psutil",
)
CM_CLI = "comfyui-manager==4.3"
STEP_TIMEOUT = 900.0
CM_TIMEOUT = 420.0
#: Distribution name -> import name, where they differ and the metadata does not say.
IMPORT_NAMES = {
    "opencv-python": "cv2",
    "opencv-python-headless": "cv2",
    "pillow": "PIL",
    "scikit-image": "skimage",
    "gitpython": "git",
    "protobuf": "google.protobuf",
    "colour-science": "colour",
    "segment-anything": "segment_anything",
    "huggingface-hub": "huggingface_hub",
}
OPENCV_DISTS = (
    "opencv-python",
    "opencv-python-headless",
    "opencv-contrib-python",
    "opencv-contrib-python-headless",
)


def find_realworld() -> Path | None:
    """``shared/realworld`` beside the clone (CI) or beside the worktrees' parent."""
    override = os.environ.get("NODEFERRY_REALWORLD")
    candidates = [Path(override)] if override else []
    candidates += [p / "shared" / "realworld" for p in REPO_ROOT.parents[:3]]
    for candidate in candidates:
        if (candidate / "serve.sh").is_file() and (candidate / "packs.tsv").is_file():
            return candidate
    return None


def torch_wheels() -> Path | None:
    where = Path(os.environ.get("NODEFERRY_TORCH_WHEELS", "/opt/wheels"))
    return where if any(where.glob("torch-2.13.0*.whl")) else None


@dataclass
class Pack:
    name: str
    url: str
    requirements: list[str] = field(default_factory=list)


@dataclass
class Outcome:
    contender: str
    wall: float = 0.0
    clone: float = 0.0
    resolve_download: float = 0.0
    install_scripts: float = 0.0
    ran: bool = True
    error: str = ""
    checks: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def correct(self) -> bool:
        return (
            bool(self.checks)
            and all(
                self.checks.get(key) for key in ("pip_check_ok", "torch_unchanged", "cv2_coherent")
            )
            and not self.checks.get("missing_imports")
        )


class Server:
    """``serve.sh`` in a directory of ours; its git daemon is stopped by pid."""

    def __init__(self, realworld: Path, root: Path) -> None:
        self.realworld = realworld
        self.root = root
        self.port = 0
        self.pid = 0
        self.git_env: dict[str, str] = {}

    def __enter__(self) -> Server:
        out = subprocess.run(
            ["bash", str(self.realworld / "serve.sh"), str(self.root), "0"],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        ).stdout.split()
        self.port, self.pid = int(out[0]), int(out[1])
        for line in (self.root / "env.sh").read_text().splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            if key:
                self.git_env[key] = value
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, 15)

    def packs(self, with_requirements: bool) -> list[Pack]:
        out = []
        for line in (self.realworld / "packs.tsv").read_text().splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            name, _upstream, role, *_ = [*line.split("\t"), "", ""]
            if role != "node pack":
                continue
            reqs = _requirements_of(self.root / f"{name}.git")
            if reqs and not with_requirements:
                continue
            out.append(Pack(name, f"git://127.0.0.1:{self.port}/{name}.git", reqs))
        return out


def _requirements_of(bare: Path) -> list[str]:
    shown = subprocess.run(
        ["git", "-C", str(bare), "show", "HEAD:requirements.txt"],
        capture_output=True,
        text=True,
        check=False,
    )
    if shown.returncode != 0:
        return []
    lines = [line.split("#", 1)[0].strip() for line in shown.stdout.splitlines()]
    return [line for line in lines if line and not line.startswith("-")]


def _dist_name(requirement: str) -> str:
    name = requirement
    for stop in "<>=!~[; @":
        name = name.split(stop, 1)[0]
    return name.strip().lower().replace("_", "-")


# -- the environment ------------------------------------------------------------------


def build_template(lab: Lab, log: Callable[[str], None]) -> Path:
    """A venv with torch 2.13.0 (CPU, from disk) and ComfyUI's base packages; kept in
    the workdir between runs. Its build uses its own cache, never a contender's."""
    template = lab.workdir / "realpacks-venv"
    marker = template / "nodeferry-template-ok"
    if marker.exists():
        return template
    shutil.rmtree(template, ignore_errors=True)
    env = isolated_pip_env()
    env["PIP_CACHE_DIR"] = str(lab.workdir / "realpacks-template-cache")
    subprocess.run([sys.executable, "-m", "venv", str(template)], check=True, timeout=300)
    python = str(template / "bin" / "python")
    if lab.size.name == "full":
        wheels = torch_wheels()
        if wheels is None:
            raise RuntimeError("no torch 2.13.0 wheel on disk (set NODEFERRY_TORCH_WHEELS)")
        log("  real packs: building the ComfyUI venv (torch 2.13.0 + base packages)")
        argv = [python, "-m", "pip", "install", "-q", "--find-links", str(wheels), TORCH]
        subprocess.run([*argv, *COMFY_BASE], env=env, check=True, timeout=900)
    marker.write_text("ok\n")
    return template


def fresh_home(lab: Lab, template: Path, label: str) -> tuple[Path, str]:
    root = lab.fresh_dir(label) / "ComfyUI"
    (root / "custom_nodes").mkdir(parents=True)
    (root / "main.py").write_text("# ComfyUI stand-in for the benchmark\n")
    shutil.copytree(template, root / "venv", symlinks=True)
    return root, str(root / "venv" / "bin" / "python")


def contender_env(lab: Lab, server: Server, label: str, python: str) -> dict[str, str]:
    env = isolated_pip_env()
    caches = lab.fresh_dir(f"{label}-caches")
    env["PIP_CACHE_DIR"] = str(caches / "pip")
    env["UV_CACHE_DIR"] = str(caches / "uv")
    env["GIT_TERMINAL_PROMPT"] = "0"
    env["PATH"] = str(Path(python).parent) + os.pathsep + env.get("PATH", "")
    env.update(server.git_env)  # github.com -> the loopback server, for submodules too
    return env


CHECK_SCRIPT = r"""
import importlib, importlib.metadata as md, json, sys
wanted = json.loads(sys.argv[1]); names = json.loads(sys.argv[2])
out = {"imports": {}, "versions": {}}
def top_level(dist):
    try:
        d = md.distribution(dist)
    except md.PackageNotFoundError:
        return None
    text = d.read_text("top_level.txt")
    if text:
        return text.split()[0]
    for f in d.files or []:
        parts = f.parts
        if len(parts) > 1 and parts[1] == "__init__.py" and not parts[0].endswith(".dist-info"):
            return parts[0]
    return dist.replace("-", "_")
for dist in wanted:
    module = names.get(dist) or top_level(dist)
    if module is None:
        out["imports"][dist] = "not installed"; continue
    try:
        importlib.import_module(module); out["imports"][dist] = "ok"
    except BaseException as exc:
        out["imports"][dist] = f"{type(exc).__name__}: {exc}"[:300]
for dist in md.distributions():
    out["versions"][dist.metadata["Name"].lower()] = dist.version
print(json.dumps(out))
"""


def check_env(
    python: str, env: dict[str, str], packs: Sequence[Pack], torch_before: str | None
) -> dict[str, Any]:
    """pip check, torch unchanged, one coherent cv2, each pack's requirements importable."""
    checks: dict[str, Any] = {}
    # What ComfyUI would see: not the benchmark's own PYTHONPATH (this checkout).
    env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    # cwd "/": ``-m`` puts the working directory on sys.path, and a checkout there
    # (this one, installed editable) would count as installed in that venv.
    pip_check = subprocess.run(
        [python, "-m", "pip", "check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd="/",
    )
    checks["pip_check_ok"] = pip_check.returncode == 0
    checks["pip_check"] = pip_check.stdout.strip().splitlines()[:10]
    wanted = sorted({_dist_name(r) for p in packs for r in p.requirements})
    done = subprocess.run(
        [python, "-c", CHECK_SCRIPT, json.dumps(wanted), json.dumps(IMPORT_NAMES)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd="/",
    )
    try:
        seen = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        checks["error"] = (done.stderr or done.stdout)[-500:]
        return checks
    versions = seen["versions"]
    checks["torch"] = versions.get("torch")
    checks["torch_unchanged"] = versions.get("torch") == torch_before
    opencv = {d: versions[d] for d in OPENCV_DISTS if d in versions}
    checks["opencv_dists"] = opencv
    cv2_import = seen["imports"].get("opencv-python") or seen["imports"].get(
        "opencv-python-headless"
    )
    checks["cv2_coherent"] = len(opencv) <= 1 and cv2_import in (None, "ok")
    checks["numpy"] = versions.get("numpy")
    checks["missing_imports"] = {d: why for d, why in seen["imports"].items() if why != "ok"}
    checks["packs_importable"] = {
        p.name: all(seen["imports"].get(_dist_name(r)) == "ok" for r in p.requirements)
        for p in packs
    }
    checks["nvidia_dists"] = sorted(d for d in versions if d.startswith(("nvidia-", "cuda-")))
    return checks


def torch_version(python: str, env: dict[str, str]) -> str | None:
    code = (
        "import importlib.metadata as m\n"
        "try: print(m.version('torch'))\nexcept Exception: print('')"
    )
    out = subprocess.run(
        [python, "-c", code], env=env, capture_output=True, text=True, timeout=60, cwd="/"
    )
    return out.stdout.strip() or None


# -- the contenders ----------------------------------------------------------------------


def run_naive(home: Path, python: str, env: dict[str, str], packs: Sequence[Pack]) -> Outcome:
    result = sequential_install([p.url for p in packs], home, python, [], env=env)
    out = Outcome(
        "naive loop",
        wall=result.wall,
        clone=result.clone,
        resolve_download=result.requirements,
        install_scripts=result.install_script,
    )
    out.notes += [f"{n.name}: {n.error}" for n in result.nodes if not n.ok]
    return out


def run_vast(home: Path, python: str, env: dict[str, str], packs: Sequence[Pack]) -> Outcome:
    """VastAI's provisioning loop: clones 4 at a time, then ``pip install -r`` per node.
    It does not run install.py."""
    out = Outcome("VastAI provisioning loop")
    custom = home / "custom_nodes"
    started = time.perf_counter()

    def clone(pack: Pack) -> tuple[str, bool, str]:
        argv = ["git", "clone", "--recursive", "--quiet", pack.url, str(custom / pack.name)]
        _elapsed, ok, error = _timed(argv, custom, env, STEP_TIMEOUT)
        return pack.name, ok, error

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for name, ok, error in pool.map(clone, packs):
            if not ok:
                out.notes.append(f"{name}: clone: {error}")
    out.clone = time.perf_counter() - started
    for pack in packs:
        reqs = custom / pack.name / "requirements.txt"
        if reqs.is_file():
            argv = [python, "-m", "pip", "install", "--no-cache-dir", "-r", str(reqs)]
            elapsed, ok, error = _timed(argv, reqs.parent, env, STEP_TIMEOUT)
            out.resolve_download += elapsed
            if not ok:
                out.notes.append(f"{pack.name}: pip: {error}")
    out.wall = time.perf_counter() - started
    return out


def run_nodeferry(
    lab: Lab,
    home: Path,
    python: str,
    env: dict[str, str],
    packs: Sequence[Pack],
    installer: str,
    mode: str = "install",
) -> Outcome:
    bundle_path, _ = write_bundle(lab)
    env = dict(env, NODEFERRY_AGENT_INSTALLER=installer)
    state_dir = home.parent / "state"
    task_id = str(uuid.uuid4())
    spec = {"task_id": task_id, "ui_home": str(home), "nodes": [p.url for p in packs]}
    spec["python"] = python
    spec["mode"] = mode  # "plan": the same packs resolved dry-run, nothing installed
    progress_file = state_dir / "tasks" / task_id / "progress.json"
    states: dict[str, float] = {}
    done = threading.Event()
    started = time.perf_counter()
    watcher = threading.Thread(
        target=_watch_states, args=(progress_file, states, started, done), daemon=True
    )
    watcher.start()
    proc = subprocess.run(
        [sys.executable, str(bundle_path), "--state-dir", str(state_dir), "run", "--spec", "-"],
        input=json.dumps(spec).encode(),
        capture_output=True,
        env=env,
        cwd=home.parent,
        timeout=STEP_TIMEOUT,
        check=False,
    )
    wall = time.perf_counter() - started
    done.set()
    watcher.join(5)
    label = installer if mode == "install" else f"{installer}, plan only"
    out = Outcome(f"nodeferry ({label})", wall=wall)
    try:
        final = json.loads(proc.stdout)
    except ValueError:
        out.ran = False
        out.error = f"no final document (exit {proc.returncode}): {proc.stderr.decode()[-500:]}"
        return out
    phases = AgentInstall(wall, final["state"], 0, 0, 0, states).phases()
    out.clone = phases["startup"] + phases["clone"]
    out.resolve_download = phases["requirements"]
    out.install_scripts = phases["install_scripts"]
    out.notes += [
        f"{n['name']}: {n.get('error') or n.get('requirements_error')}"
        for n in final["nodes"]
        if n.get("error") or n.get("requirements_error")
    ]
    out.notes.append(f"agent final state {final['state']}, exit {final.get('exit_code')}")
    return out


COMFY_STUBS = {
    "folder_paths.py": "# the part of ComfyUI's folder_paths cm-cli imports\n"
    "import os\nbase_path = os.path.dirname(os.path.realpath(__file__))\n"
    "models_dir = os.path.join(base_path, 'models')\nfolder_names_and_paths = {}\n"
    "def get_user_directory():\n    return os.path.join(base_path, 'user')\n",
    "utils/__init__.py": "",
    "utils/extra_config.py": "def load_extra_path_config(path):\n    pass\n",
}


def run_cm_cli(
    lab: Lab, home: Path, python: str, env: dict[str, str], packs: Sequence[Pack]
) -> Outcome:
    """``cm-cli install URL ...`` in its own copy of the env. Its own install (pip,
    cold cache) is timed apart and not counted in the wall time."""
    out = Outcome("ComfyUI-Manager cm-cli 4.3")
    setup_started = time.perf_counter()
    argv = [python, "-m", "pip", "install", "-q", CM_CLI]
    elapsed, ok, error = _timed(argv, home, env, STEP_TIMEOUT)
    out.notes.append(f"pip install {CM_CLI} took {elapsed:.1f} s (not counted)")
    if not ok:
        out.ran, out.error = False, f"installing {CM_CLI}: {error}"
        return out
    # cm-cli refuses to start without a ComfyUI checkout (folder_paths.py, utils/);
    # this stand-in has only what it imports.
    for rel, text in COMFY_STUBS.items():
        (home / rel).parent.mkdir(parents=True, exist_ok=True)
        (home / rel).write_text(text)
    run_env = dict(env, COMFYUI_PATH=str(home))
    cm = str(Path(python).parent / "cm-cli")
    started = time.perf_counter()
    done = subprocess.run(
        [python, cm, "install", *[p.url for p in packs]],
        env=run_env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=CM_TIMEOUT,
        check=False,
    )
    out.wall = time.perf_counter() - started
    out.notes.append(f"setup {time.perf_counter() - setup_started - out.wall:.1f} s")
    text = (done.stdout + done.stderr).strip()
    (home.parent / "cm-cli.log").write_text(text)
    installed = [p.name for p in packs if (home / "custom_nodes" / p.name).is_dir()]
    out.notes.append(f"cm-cli exit {done.returncode}; packs present afterwards: {installed}")
    out.notes.append("output tail: " + " | ".join(text.splitlines()[-6:]))
    if done.returncode != 0 or len(installed) < len(packs):
        out.ran = False
        out.error = f"cm-cli exit {done.returncode}, {len(installed)}/{len(packs)} packs installed"
    return out


# -- the section ---------------------------------------------------------------------------


def run(lab: Lab, report: Report, log: Callable[[str], None]) -> None:
    realworld = find_realworld()
    if realworld is None:
        if os.environ.get("CI"):
            raise RuntimeError("shared/realworld not found beside the clone (CI is set)")
        report.detail(SECTION, "skipped", "shared/realworld not found (set NODEFERRY_REALWORLD)")
        log("  real packs: skipped, shared/realworld not found")
        return
    full = lab.size.name == "full"
    with Server(realworld, lab.workdir / "realpacks-served") as server:
        packs = server.packs(with_requirements=full)
        report.detail(SECTION, "realworld", str(realworld))
        report.detail(SECTION, "packs", {p.name: p.requirements for p in packs})
        report.detail(
            SECTION,
            "package_index",
            "the real package index (pip's default), cold caches; packs from loopback git only"
            if full
            else "none (smoke: packs without requirements)",
        )
        template = build_template(lab, log)
        contenders: list[tuple[str, Callable[..., Outcome]]] = [
            ("naive", lambda h, p, e: run_naive(h, p, e, packs)),
            ("vast", lambda h, p, e: run_vast(h, p, e, packs)),
            ("nodeferry_pip", lambda h, p, e: run_nodeferry(lab, h, p, e, packs, "pip")),
            ("nodeferry_uv", lambda h, p, e: run_nodeferry(lab, h, p, e, packs, "uv")),
            # The plan of the same packs from the same cold caches (#30): metadata, not wheels.
            (
                "nodeferry_uv_plan",
                lambda h, p, e: run_nodeferry(lab, h, p, e, packs, "uv", mode="plan"),
            ),
        ]
        if full:
            contenders.append(("cm_cli", lambda h, p, e: run_cm_cli(lab, h, p, e, packs)))
        outcomes: dict[str, Outcome] = {}
        for key, runner in contenders:
            home, python = fresh_home(lab, template, f"realpacks-{key}")
            env = contender_env(lab, server, f"realpacks-{key}", python)
            torch_before = torch_version(python, env)
            log(f"  real packs: {key}")
            try:
                outcome = runner(home, python, env)
            except Exception as exc:  # one contender's failure is a figure, not a crash
                outcome = Outcome(key, ran=False, error=f"{type(exc).__name__}: {exc}")
            if key == "nodeferry_uv_plan":
                pass  # a plan installs nothing: the packs' imports are not its to pass
            elif outcome.ran or key == "cm_cli":
                outcome.checks = check_env(python, env, packs, torch_before)
            outcomes[key] = outcome
            log(
                f"    {outcome.wall:.1f} s (clone {outcome.clone:.1f}, resolve+download "
                f"{outcome.resolve_download:.1f}, scripts {outcome.install_scripts:.1f}); "
                f"correct env: {outcome.correct}"
            )
            report.detail(SECTION, key, outcome.__dict__ | {"correct": outcome.correct})
            lab.discard(home.parent)
    naive = outcomes["naive"]
    plan, install = outcomes.get("nodeferry_uv_plan"), outcomes.get("nodeferry_uv")
    if plan is not None and install is not None:
        report.add(
            Row(
                SECTION,
                f"{len(packs)} real packs, plan beside install: nodeferry (uv)",
                plan.wall,
                "s",
                baseline=install.wall,
                baseline_name="the install (uv)",
                target="< 0.5x the install",
                met=plan.ran and plan.wall < 0.5 * install.wall,
                note="plan: clones + dry-run resolve, nothing installed",
            )
        )
    for key, outcome in outcomes.items():
        if key == "nodeferry_uv_plan":
            continue  # its row is the one beside the install, above
        headline = key == "nodeferry_uv"
        met = None
        if headline:
            met = outcome.ran and outcome.correct and naive.wall / max(outcome.wall, 1e-9) >= 5
        report.add(
            Row(
                SECTION,
                f"{len(packs)} real packs, wall: {outcome.contender}"
                + ("" if outcome.ran else " (did not complete)"),
                outcome.wall,
                "s",
                baseline=naive.wall if key != "naive" else None,
                baseline_name="naive loop" if key != "naive" else "",
                target=">= 5x naive, correct env" if headline else None,
                met=met,
                note=f"env correct: {'yes' if outcome.correct else 'no'}",
            )
        )
