"""Did it load? Import each node the way ComfyUI's loader does, in ComfyUI's interpreter.

ComfyUI (``nodes.py``, ``load_custom_node``) imports a node folder as a package
named after its path (dots replaced by ``_x_``), from ``<folder>/__init__.py``
with the folder as the package path, registered in ``sys.modules`` before it
runs; the node counts only when it then has ``NODE_CLASS_MAPPINGS`` (or a V3
``comfy_entrypoint``), otherwise ComfyUI lists it as "IMPORT FAILED". Here each
node is imported that way in its own subprocess, with the ComfyUI home first on
``sys.path`` and as the working directory, under a timeout. This runs the
node's code, exactly as starting ComfyUI would.

That bare import is the check only for a home that is not a ComfyUI (a
stand-in). Where the home is one (main.py and the ``comfy`` package), the check
is ComfyUI's own start (``main.py --quick-test-for-ci --cpu``, with the
arguments the instance's running ComfyUI has): it reads the "Import times for
custom nodes" block and, for a node that failed, the traceback ComfyUI printed
for it. Outside this module the check leaves no trace: ``--quick-test-for-ci``
exits before the server listens, ``--cpu`` keeps it off the GPU, the temp
directory (which ComfyUI's start empties) is a scratch one and the database
(which it migrates) is in memory, and directories it created empty are removed.
"""

import concurrent.futures
import contextlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from agent import procs, requirements
from agent.comfyargs import ComfyArgs
from agent.tasklog import TaskLog
from protocol import ImportResult

#: ComfyUI's own start without custom nodes (torch and all of ComfyUI); each node
#: it loads adds the spec's ``verify_timeout``.
COMFYUI_TIMEOUT_ENV = "NODEFERRY_AGENT_COMFYUI_TIMEOUT"
COMFYUI_TIMEOUT_SECONDS = 300.0
#: Which check judged a node (protocol.IMPORT_CHECKS).
CHECK_COMFYUI = "comfyui"
CHECK_ALONE = "comfyui_alone"
CHECK_IMPORT = "import"
#: Directories ComfyUI's start creates when they are missing; the check removes
#: the ones it created that are still empty.
_CREATED_DIRS = ("user", "input", "output", "models", "temp")

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
_NOT_WHITELISTED = re.compile(r"Skipping (.+?) due to disable_all_custom_nodes")
_TRACEBACK = "Traceback (most recent call last):"
_CHAINED = (
    "During handling of the above exception, another exception occurred:",
    "The above exception was the direct cause of the following exception:",
)


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
                check=CHECK_IMPORT,
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
                check=CHECK_IMPORT,
            )
        return ImportResult(
            str(data.get("status")) if data.get("status") in ("ok", "failed") else "failed",
            seconds=float(data.get("seconds") or 0.0),
            error=data.get("error"),
            node_classes=data.get("node_classes"),
            check=CHECK_IMPORT,
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

    for_each(names, one, jobs=jobs)


def for_each(names: Sequence[str], one: Callable[[str], None], *, jobs: int) -> None:
    """``one(name)`` for every name, ``jobs`` at a time; re-raises the first error."""
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


def is_comfyui(ui_home: Path) -> bool:
    """A real ComfyUI home: its main.py and its ``comfy`` package (a stand-in has not both)."""
    return (ui_home / "main.py").is_file() and (ui_home / "comfy" / "cli_args.py").is_file()


def loadable(ui_home: Path, args: ComfyArgs) -> List[str]:
    """The entries of custom_nodes ComfyUI's start would try to load, as it picks them."""
    try:
        names = [p.name for p in Path(os.path.realpath(ui_home / "custom_nodes")).iterdir()]
    except OSError:
        return []
    found = []
    for name in names:
        path = ui_home / "custom_nodes" / name
        if name == "__pycache__" or name.endswith(".disabled"):
            continue
        if path.is_file() and not name.endswith(".py"):
            continue
        if args.loads(name):
            found.append(name)
    return sorted(found)


def comfyui_timeout(nodes: int, per_node: float) -> float:
    """ComfyUI's own start (``NODEFERRY_AGENT_COMFYUI_TIMEOUT``) plus ``per_node`` each."""
    raw = os.environ.get(COMFYUI_TIMEOUT_ENV)
    base = COMFYUI_TIMEOUT_SECONDS
    if raw:
        with contextlib.suppress(ValueError):
            base = max(1.0, float(raw))
    return base + per_node * max(0, nodes)


def _folder(path: str) -> str:
    # ComfyUI may run on Windows paths too; the node is the last component.
    return path.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]


def _traceback_before(output: Sequence[str], end: int, floor: int) -> Optional[List[str]]:
    """The traceback ComfyUI logged just before line ``end`` (not above ``floor``)."""
    i = end - 1
    start = None
    while i >= floor:
        if _TRACEBACK in output[i]:
            start = i
            j = i - 1  # a chained exception: its first part is above
            while j >= floor and not output[j].strip():
                j -= 1
            if j >= floor and any(c in output[j] for c in _CHAINED):
                i = j - 1
                continue
            break
        i -= 1
    if start is None:
        return None
    lines = [line.rstrip() for line in output[start:end]]
    while lines and not lines[-1].strip():
        lines.pop()
    return lines or None


def parse_import_times(output: Sequence[str]) -> Optional[Dict[str, ImportResult]]:
    """ComfyUI's "Import times for custom nodes" block, by node folder name.

    None when the output has no such block (ComfyUI did not get that far, or
    loaded no node at all). A failed node's ``traceback`` is what ComfyUI logged
    for it, its ``error`` that traceback's last line (the exception), or the
    "Cannot import … module for custom nodes: …" line when there was none.
    """
    errors: Dict[str, str] = {}
    tracebacks: Dict[str, List[str]] = {}
    floor = 0
    for i, line in enumerate(output):
        match = _CANNOT_IMPORT.search(line) or _SKIPPED.search(line)
        if match:
            name = _folder(match.group(1))
            errors[name] = match.group(2).strip()
            found_tb = _traceback_before(output, i, floor) if _CANNOT_IMPORT.search(line) else None
            if found_tb:
                tracebacks[name] = found_tb
            floor = i + 1
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
            lines = tracebacks.get(name)
            error = errors.get(name, "ComfyUI reported IMPORT FAILED (see the log)")
            if lines:
                error = lines[-1].strip()
            found[name] = ImportResult(
                "failed",
                seconds=float(match.group(1)),
                error=error,
                check=CHECK_COMFYUI,
                traceback="\n".join(lines) if lines else None,
            )
        else:
            found[name] = ImportResult("ok", seconds=float(match.group(1)), check=CHECK_COMFYUI)
    return found


def not_whitelisted(output: Sequence[str]) -> List[str]:
    """The nodes ComfyUI skipped for ``--disable-all-custom-nodes``."""
    return [_folder(m.group(1)) for m in map(_NOT_WHITELISTED.search, output) if m]


@dataclass
class Start:
    """One ``main.py --quick-test-for-ci`` run: its report, how it ended, its output."""

    report: Optional[Dict[str, ImportResult]]
    result: procs.Result
    lines: List[str]

    def why_not(self, what: str) -> str:
        """Why there is no report, first line only (the output is in the log)."""
        if self.result.timed_out:
            return f"{what} timed out after {self.result.seconds:.0f}s"
        if self.result.returncode == 0:
            return f"{what} ended (exit code 0) before listing its custom nodes"
        return f"{what} failed with exit code {self.result.returncode}"

    def tail(self, count: int = 30) -> str:
        return "\n".join(line.rstrip() for line in self.lines[-count:])


def check_argv(
    python: str, scratch: Path, args: ComfyArgs, only: Optional[Sequence[str]] = None
) -> List[str]:
    """main.py's argv for the check; ``only``: load just these nodes (may be empty)."""
    argv = [python, "main.py", "--quick-test-for-ci", "--cpu"]
    if only is None:
        argv += args.argv
    else:
        argv += args.without_node_selection()
        argv.append("--disable-all-custom-nodes")
        if len(only) == 1:  # one value with "=": a name starting with "-" stays a value
            argv.append("--whitelist-custom-nodes=" + only[0])
        elif only:
            argv += ["--whitelist-custom-nodes", *only]
    # ComfyUI's start empties its temp directory and migrates its database: a
    # running ComfyUI's must stay as they are.
    argv += ["--temp-directory", str(scratch), "--database-url", "sqlite:///:memory:"]
    return argv


def _created_dirs_guard(ui_home: Path, args: ComfyArgs) -> List[Path]:
    roots = [ui_home]
    argv = args.argv
    if "--base-directory" in argv:
        roots.append(Path(argv[argv.index("--base-directory") + 1]))
    return [root / name for root in roots for name in _CREATED_DIRS if not (root / name).exists()]


def _remove_if_empty(missing: List[Path]) -> None:
    for top in missing:
        if not top.is_dir():
            continue
        for dirpath, _dirs, _files in sorted(os.walk(str(top)), reverse=True):
            with contextlib.suppress(OSError):
                Path(dirpath).rmdir()  # only ever succeeds on an empty directory


def run_comfyui(
    python: str,
    ui_home: Path,
    args: ComfyArgs,
    *,
    log: TaskLog,
    children: procs.Children,
    timeout: float,
    scratch: Path,
    transcript: Path,
    only: Optional[Sequence[str]] = None,
    expect_block: bool = True,
) -> Start:
    """Start this ComfyUI on the CPU to its import report, and leave nothing behind.

    ``only``: start it with just that node (``--whitelist-custom-nodes``), or none.
    ``expect_block``: False when the start may load no node at all, so that an
    ended start without an import block is a complete, empty report.
    """
    temp = Path(tempfile.mkdtemp(prefix=".comfyui-check-", dir=str(scratch)))
    argv = check_argv(python, temp, args, only)
    missing = _created_dirs_guard(ui_home, args)
    lines: List[str] = []
    label = "comfyui" if only is None else "comfyui:" + (only[0] if only else "-")
    try:
        result = procs.run(
            argv,
            log=log,
            prefix=label,
            children=children,
            timeout=timeout,
            cwd=str(ui_home),
            env=requirements.pip_env(),
            collect=lines,
        )
    finally:
        shutil.rmtree(str(temp), ignore_errors=True)
        _remove_if_empty(missing)
        with contextlib.suppress(OSError), open(str(transcript), "a", encoding="utf-8") as out:
            out.write("$ " + " ".join(argv) + "\n")
            out.writelines(line.rstrip("\n") + "\n" for line in lines)
            out.write("\n")
    report = parse_import_times(lines)
    if report is None and result.ok and not expect_block:
        report = {}
    return Start(report, result, lines)
