"""Which program installs requirements, and uv set up to resolve what pip would.

``installer`` is ``auto`` (uv when found or installable, else pip), ``uv`` or
``pip``; the spec's setting, or ``NODEFERRY_AGENT_INSTALLER`` when the spec says
``auto``. Where the instance has no uv, it is installed once into the agent's
state dir with ComfyUI's own pip (so the instance's pip settings apply) and
reused by later tasks; when that fails the install goes on with pip, and says so.

uv does not read pip's configuration and, with several indexes, takes each
package from the first index that has it; pip picks the best version across all
of them. The options built here close both gaps.
"""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

from agent import requirements

CHOICES = ("auto", "uv", "pip")
BOOTSTRAP_TIMEOUT = 600.0


def wanted(spec_installer: str) -> str:
    if spec_installer != "auto":
        return spec_installer
    env = os.environ.get(requirements.INSTALLER_ENV, "auto")
    return env if env in CHOICES else "auto"


def cached_uv(tools: Path) -> Optional[str]:
    candidate = tools / "uv" / "bin" / "uv"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return None


def bootstrap_uv(
    python: str, tools: Path, pip_args: Sequence[str], timeout: float = BOOTSTRAP_TIMEOUT
) -> Tuple[Optional[str], str]:
    """Install uv into ``tools/uv`` with ``python -m pip``; returns (path, what happened)."""
    tools.mkdir(mode=0o700, parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".uv-", dir=str(tools)))
    argv = [python, "-m", "pip", "install", "--quiet", "--target", str(staging)]
    argv += [*pip_args, "uv"]
    try:
        result = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            env=requirements.pip_env(),
            check=False,
        )
        uv = staging / "bin" / "uv"
        if result.returncode != 0 or not uv.is_file():
            tail = result.stdout.decode("utf-8", "replace").strip().splitlines()[-3:]
            tail += result.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
            return None, "pip could not install uv: " + (" | ".join(tail) or "no output")
        check = subprocess.run([str(uv), "--version"], capture_output=True, timeout=60, check=False)
        if check.returncode != 0:
            return None, "the installed uv does not run"
        final = tools / "uv"
        if final.exists():
            shutil.rmtree(str(final), ignore_errors=True)
        staging.replace(final)
        version = check.stdout.decode("utf-8", "replace").strip()
        return str(final / "bin" / "uv"), f"installed {version} into {final}"
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"could not install uv: {exc}"
    finally:
        if staging.exists():
            shutil.rmtree(str(staging), ignore_errors=True)


def choose(
    spec_installer: str,
    python: str,
    tools: Path,
    pip_args: Sequence[str],
    say: Callable[[str], None],
) -> Tuple[str, Optional[str]]:
    """("uv", path) or ("pip", None), saying in one line why when it is not what was asked."""
    want = wanted(spec_installer)
    if want == "pip":
        return "pip", None
    found = shutil.which("uv") or cached_uv(tools)
    if found:
        return "uv", found
    uv, what = bootstrap_uv(python, tools, pip_args)
    if uv:
        say(f"uv was not on this instance: {what}")
        return "uv", uv
    say(f"uv unavailable ({what}); installing requirements with pip instead")
    return "pip", None


# pip settings uv needs as options: where packages come from and what limits them.
_VALUE_SETTINGS = ("index-url", "extra-index-url", "find-links", "trusted-host", "constraint")


def uv_source_args(python: str, given: Sequence[str]) -> List[str]:
    """pip's configured sources and constraints, as uv options (the spec's own win)."""
    config = requirements.pip_config(python)
    args = requirements.pip_config_as_args(python, given, config=config)
    already = {arg.partition("=")[0] for arg in given}
    if "constraint" in config and not ({"-c", "--constraint"} & already):
        for item in config["constraint"].split():
            args += ["--constraint", item]
    if config.get("pre", "").lower() in ("1", "true", "yes", "on") and "--pre" not in already:
        args.append("--prerelease=allow")
    return args


def index_count(args: Sequence[str]) -> int:
    """How many package indexes a pip/uv argv names (PyPI counts unless replaced)."""
    count = 0
    has_index_url = False
    no_index = False
    items = list(args)
    for i, arg in enumerate(items):
        option = arg.partition("=")[0]
        if option in ("--index-url", "-i", "--default-index"):
            has_index_url = True
        elif option in ("--extra-index-url", "--index"):
            count += 1 if "=" in arg or i + 1 < len(items) else 0
        elif option == "--no-index":
            no_index = True
    if no_index:
        return 0
    del has_index_url  # the default index or its replacement: one either way
    return count + 1


def with_index_strategy(uv_args: List[str]) -> List[str]:
    """Add ``--index-strategy unsafe-best-match`` when more than one index is in play."""
    if any(a.startswith("--index-strategy") for a in uv_args):
        return uv_args
    if index_count(uv_args) > 1:
        return [*uv_args, "--index-strategy", "unsafe-best-match"]
    return uv_args
