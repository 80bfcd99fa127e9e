"""ComfyUI's interpreter and the one batched requirements install.

All new nodes' ``requirements.txt`` files are resolved together (one resolve is
faster and cannot leave two nodes with conflicting versions), with constraints
pinning the torch family already installed so no node can swap torch out. The
stage itself (culprits, what runs alone, package changes) is agent.reqstage;
choosing and setting up uv is agent.installer.
"""

import os
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from agent import interpreter, procs
from agent.tasklog import TaskLog

TORCH_FAMILY = ("torch", "torchvision", "torchaudio", "xformers")
INSTALLER_ENV = "NODEFERRY_AGENT_INSTALLER"  # "uv", "pip" or "auto" (default)

#: Where ComfyUI's interpreter usually is, after the spec's ``python``.
VENV_CANDIDATES = (
    ("{ui_home}/venv", "the ComfyUI home's venv"),
    ("{ui_home}/.venv", "the ComfyUI home's .venv"),
    ("/venv/main", "VastAI's ComfyUI image venv"),
    ("/opt/environments/python/comfyui", "ai-dock's ComfyUI environment"),
)

# uv spells some of pip's options differently.
_UV_OPTION = {
    "--trusted-host": "--allow-insecure-host",
    "--no-cache-dir": "--no-cache",
    "--pre": "--prerelease=allow",
    "--prefer-binary": None,  # uv prefers wheels anyway
}


def find_interpreter(spec_python: Optional[str], ui_home: Path) -> Tuple[Optional[str], str]:
    """ComfyUI's Python and why it was chosen (for the log)."""
    if spec_python:
        found = shutil.which(str(Path(spec_python).expanduser()))
        if found:
            return found, f"the spec's python ({spec_python})"
        return None, f"the spec's python {spec_python!r} does not exist or is not executable"
    for template, why in VENV_CANDIDATES:
        venv = Path(template.format(ui_home=ui_home))
        for name in ("python", "python3"):
            candidate = venv / "bin" / name
            if os.access(candidate, os.X_OK) and candidate.is_file():
                return str(candidate), f"{why} ({venv})"
    fallback = shutil.which("python3")
    if fallback:
        return fallback, "python3 on PATH (no ComfyUI venv found)"
    return None, "no ComfyUI venv and no python3 on PATH"


def installed_versions(python: str, names: Sequence[str], timeout: float = 60) -> Dict[str, str]:
    return interpreter.versions_of(python, names, timeout)


def write_constraints(path: Path, pins: Dict[str, str]) -> None:
    lines = [f"{name}=={version}" for name, version in sorted(pins.items())]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


# pip settings that decide where packages come from, and how to say them to uv,
# which does not read pip's configuration.
_PIP_SOURCES = ("index-url", "extra-index-url", "find-links", "trusted-host", "no-index")
_SECTION_RANK = {"global": 0, "install": 1, ":env:": 2}


def pip_config(python: str, timeout: float = 60) -> Dict[str, str]:
    """pip's effective settings (pip.conf files and PIP_* variables), name -> value."""
    try:
        out = subprocess.run(
            [python, "-m", "pip", "config", "list"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            env=pip_env(),
            check=False,
        ).stdout.decode("utf-8", "replace")
    except (OSError, subprocess.SubprocessError):
        return {}
    best: Dict[str, Tuple[int, str]] = {}
    for line in out.splitlines():
        key, eq, raw = line.partition("=")
        section, _dot, name = key.rpartition(".")
        if not eq or section not in _SECTION_RANK:
            continue
        rank = _SECTION_RANK[section]
        if name not in best or rank >= best[name][0]:
            best[name] = (rank, raw.strip().strip("'\""))
    return {name: value for name, (_rank, value) in best.items()}


def pip_config_as_args(
    python: str,
    given: Sequence[str],
    timeout: float = 60,
    config: Optional[Dict[str, str]] = None,
) -> List[str]:
    """pip's configured package sources (pip.conf, PIP_* variables) as options for uv.

    A machine set up with a mirror in pip.conf must not silently go to PyPI
    because uv was found. Options already in ``given`` (the spec's) win.
    """
    if config is None:
        config = pip_config(python, timeout)
    already = {arg.partition("=")[0] for arg in given}
    aliases = {"-i": "--index-url", "-f": "--find-links"}
    already |= {aliases[a] for a in already if a in aliases}
    args: List[str] = []
    for name, value in sorted(config.items()):
        if name not in _PIP_SOURCES:
            continue
        option = "--" + name
        if option in already:
            continue
        if name == "no-index":
            if value.lower() in ("1", "true", "yes", "on"):
                args.append(option)
            continue
        for item in value.split():
            args += [option, item]
    return args


def pip_env(base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = dict(os.environ if base is None else base)
    env["PIP_NO_INPUT"] = "1"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("VIRTUAL_ENV", None)  # the target is --python / the interpreter, not ours
    env.pop("PYTHONPATH", None)  # ours points at the agent; never leak it into ComfyUI's
    return env


def install_command(
    installer: str,
    python: str,
    requirement_files: Sequence[Path],
    constraints: Optional[Path],
    pip_args: Sequence[str],
) -> List[str]:
    if installer == "uv":
        argv = ["uv", "pip", "install", "--python", python]
        for arg in pip_args:
            option, eq, value = arg.partition("=")
            if option in _UV_OPTION:
                replacement = _UV_OPTION[option]
                if replacement is None:
                    continue
                arg = replacement + (eq + value if eq else "")
            argv.append(arg)
    else:
        argv = [python, "-m", "pip", "install", *pip_args]
    if constraints is not None:
        argv += ["-c", str(constraints)]
    for path in requirement_files:
        argv += ["-r", str(path)]
    return argv


def run_install(
    argv: Sequence[str],
    *,
    log: TaskLog,
    prefix: str,
    children: procs.Children,
    timeout: float,
) -> procs.Result:
    return procs.run(
        argv, log=log, prefix=prefix, children=children, timeout=timeout, env=pip_env()
    )
