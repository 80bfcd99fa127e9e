"""Did it load? Import each node the way ComfyUI's loader does, in ComfyUI's interpreter.

ComfyUI (``nodes.py``, ``load_custom_node``) imports a node folder as a package
named after its path (dots replaced by ``_x_``), from ``<folder>/__init__.py``
with the folder as the package path, registered in ``sys.modules`` before it
runs; the node counts only when it then has ``NODE_CLASS_MAPPINGS`` (or a V3
``comfy_entrypoint``), otherwise ComfyUI lists it as "IMPORT FAILED". Here each
node is imported that way in its own subprocess, with the ComfyUI home first on
``sys.path`` and as the working directory, under a timeout. This runs the
node's code, exactly as starting ComfyUI would.

``verify: "comfyui"`` instead starts ComfyUI once (``main.py
--quick-test-for-ci --cpu``) and reads its "Import times for custom nodes" block.
"""

import concurrent.futures
import contextlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from agent import procs, requirements
from agent.tasklog import TaskLog
from protocol import ImportResult

#: ComfyUI's own start, for ``verify: "comfyui"``: it imports every node and all
#: of ComfyUI, so it gets longer than one node's import.
COMFYUI_TIMEOUT_ENV = "NODEFERRY_AGENT_COMFYUI_TIMEOUT"
COMFYUI_TIMEOUT_SECONDS = 900.0

# Runs in ComfyUI's interpreter (any Python 3): argv is home, node dir, result file.
# Mirrors ComfyUI's nodes.py load_custom_node for a directory.
_IMPORT_NODE = r"""
import importlib.util, inspect, json, os, sys, time, traceback
home, module_path, result_file = sys.argv[1:4]
os.chdir(home)
sys.path.insert(0, home)
sys.path.insert(0, os.path.join(home, "comfy"))  # nodes.py does this before loading nodes
result = {"status": "failed", "error": None, "node_classes": None}
started = time.perf_counter()
try:
    init = os.path.join(module_path, "__init__.py")
    if not os.path.isfile(init):
        raise ImportError("no __init__.py in %s (ComfyUI cannot import it)" % module_path)
    sys_module_name = module_path.replace(".", "_x_")
    spec = importlib.util.spec_from_file_location(
        sys_module_name, init, submodule_search_locations=[module_path]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[sys_module_name] = module
    spec.loader.exec_module(module)
    mappings = getattr(module, "NODE_CLASS_MAPPINGS", None)
    entrypoint = getattr(module, "comfy_entrypoint", None)
    if mappings is not None:
        result["node_classes"] = len(mappings)
    elif entrypoint is not None:
        import asyncio
        loop = asyncio.new_event_loop()
        extension = entrypoint()
        if inspect.isawaitable(extension):
            extension = loop.run_until_complete(extension)
        on_load = getattr(extension, "on_load", None)
        if on_load is not None:
            done = on_load()
            if inspect.isawaitable(done):
                loop.run_until_complete(done)
        nodes = extension.get_node_list()
        if inspect.isawaitable(nodes):
            nodes = loop.run_until_complete(nodes)
        if not isinstance(nodes, list):
            raise TypeError("comfy_entrypoint's get_node_list() did not return a list")
        result["node_classes"] = len(nodes)
    else:
        raise ImportError(
            "the module has no NODE_CLASS_MAPPINGS or comfy_entrypoint "
            "(ComfyUI skips it as IMPORT FAILED)"
        )
    result["status"] = "ok"
except BaseException as exc:
    traceback.print_exc()
    lines = traceback.format_exception_only(type(exc), exc)
    result["error"] = lines[-1].strip() if lines else type(exc).__name__
result["seconds"] = round(time.perf_counter() - started, 3)
with open(result_file, "w") as handle:
    json.dump(result, handle)
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)  # threads a node started must not keep this process alive
"""

# "   0.1 seconds (IMPORT FAILED): /path/custom_nodes/Name" (ComfyUI's nodes.py),
# possibly after a logging prefix.
_IMPORT_LINE = re.compile(r"(\d+(?:\.\d+)?) seconds( \(IMPORT FAILED\))?: (.+?)\s*$")
_CANNOT_IMPORT = re.compile(r"Cannot import (.+?) module for custom nodes: (.*)$")
_SKIPPED = re.compile(r"Skip (.+?) module for custom nodes due to (.*)$")


def import_node(
    python: str,
    ui_home: Path,
    node_dir: Path,
    *,
    log: TaskLog,
    children: procs.Children,
    timeout: float,
    scratch: Path,
) -> ImportResult:
    """Import one node as ComfyUI would; the result says how it went."""
    fd, result_name = tempfile.mkstemp(prefix=".import-", suffix=".json", dir=scratch)
    os.close(fd)
    result_file = Path(result_name)
    home = os.path.realpath(ui_home)
    # ComfyUI names the module after custom_nodes/<name> under its real home.
    module_path = str(Path(home) / "custom_nodes" / node_dir.name)
    try:
        run = procs.run(
            [python, "-c", _IMPORT_NODE, home, module_path, str(result_file)],
            log=log,
            prefix=node_dir.name,
            children=children,
            timeout=timeout,
            cwd=home,
            env=requirements.pip_env(),
        )
        if run.timed_out:
            return ImportResult(
                "timeout",
                seconds=round(run.seconds, 3),
                error=f"the import took longer than {timeout:g}s",
            )
        try:
            data = json.loads(result_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = None
        if not isinstance(data, dict):
            last = run.tail[-1].strip() if run.tail else ""
            return ImportResult(
                "failed",
                seconds=round(run.seconds, 3),
                error=last or f"the import process exited with status {run.returncode}",
            )
        return ImportResult(
            str(data.get("status")) if data.get("status") in ("ok", "failed") else "failed",
            seconds=float(data.get("seconds") or 0.0),
            error=data.get("error"),
            node_classes=data.get("node_classes"),
        )
    finally:
        with contextlib.suppress(OSError):
            result_file.unlink()


def import_all(
    python: str,
    ui_home: Path,
    names: Sequence[str],
    *,
    jobs: int,
    log: TaskLog,
    children: procs.Children,
    timeout: float,
    scratch: Path,
    on_start: Callable[[str], None],
    on_done: Callable[[str, ImportResult], None],
) -> None:
    """Import ``names`` (folders under custom_nodes) ``jobs`` at a time."""

    def one(name: str) -> None:
        children.check()
        on_start(name)
        result = import_node(
            python,
            ui_home,
            ui_home / "custom_nodes" / name,
            log=log,
            children=children,
            timeout=timeout,
            scratch=scratch,
        )
        on_done(name, result)

    pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=max(1, jobs), thread_name_prefix="verify"
    )
    try:
        futures = [pool.submit(one, name) for name in names]
        pending = set(futures)
        while pending:  # short waits keep the main thread responsive to signals
            _done, pending = concurrent.futures.wait(pending, timeout=0.2)
        for future in futures:
            future.result()  # re-raises Cancelled or a bug
    finally:
        pool.shutdown(wait=True)


def comfyui_timeout() -> float:
    raw = os.environ.get(COMFYUI_TIMEOUT_ENV)
    try:
        return max(1.0, float(raw)) if raw else COMFYUI_TIMEOUT_SECONDS
    except ValueError:
        return COMFYUI_TIMEOUT_SECONDS


def _folder(path: str) -> str:
    # ComfyUI may run on Windows paths too; the node is the last component.
    return path.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]


def parse_import_times(output: Sequence[str]) -> Optional[Dict[str, ImportResult]]:
    """ComfyUI's "Import times for custom nodes" block, by node folder name.

    None when the output has no such block (ComfyUI did not get that far).
    Errors come from the "Cannot import … module for custom nodes: …" lines.
    """
    errors: Dict[str, str] = {}
    for line in output:
        match = _CANNOT_IMPORT.search(line) or _SKIPPED.search(line)
        if match:
            errors[_folder(match.group(1))] = match.group(2).strip()
    start = None
    for i, line in enumerate(output):
        if "Import times for custom nodes:" in line:
            start = i  # the last block wins, as ComfyUI prints it once per start
    if start is None:
        return None
    found: Dict[str, ImportResult] = {}
    for line in output[start + 1 :]:
        match = _IMPORT_LINE.search(line)
        if not match:
            if found:
                break
            continue
        name = _folder(match.group(3))
        if match.group(2):
            found[name] = ImportResult(
                "failed",
                seconds=float(match.group(1)),
                error=errors.get(name, "ComfyUI reported IMPORT FAILED (see the log)"),
            )
        else:
            found[name] = ImportResult("ok", seconds=float(match.group(1)))
    return found


def run_comfyui(
    python: str,
    ui_home: Path,
    *,
    log: TaskLog,
    children: procs.Children,
    timeout: float,
) -> Tuple[Optional[Dict[str, ImportResult]], str]:
    """Start ComfyUI once on the CPU and read its import report; (results, why not)."""
    argv = [python, "main.py", "--quick-test-for-ci", "--cpu"]
    lines: List[str] = []
    result = procs.run(
        argv,
        log=log,
        prefix="comfyui",
        children=children,
        timeout=timeout,
        cwd=str(ui_home),
        env=requirements.pip_env(),
        collect=lines,
    )
    report = parse_import_times(lines)
    if report is None:
        return None, result.describe("ComfyUI's start") + " (no 'Import times' block)"
    return report, ""
