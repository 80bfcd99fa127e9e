"""How this instance starts ComfyUI: the arguments learned from its running process.

The import check starts ComfyUI the way the instance does, so a node that needs
``--base-directory``, ``--extra-model-paths-config`` or ``--disable-all-custom-nodes``
is judged as it would load there. Only options that change what ComfyUI loads or
where it looks are carried over; the ones that open a port, pick a GPU, set the
log level (the check reads ComfyUI's INFO lines) or touch the temp directory and
the database (the check must leave them alone) are not.
"""

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

from agent import comfyproc

#: option -> how many values it takes: 0, 1 or "+" (one or more).
CARRIED: Dict[str, object] = {
    "--base-directory": 1,
    "--extra-model-paths-config": "+",
    "--output-directory": 1,
    "--input-directory": 1,
    "--user-directory": 1,
    "--disable-all-custom-nodes": 0,
    "--whitelist-custom-nodes": "+",
    "--disable-api-nodes": 0,
    "--front-end-version": 1,
    "--front-end-root": 1,
    "--multi-user": 0,
}


@dataclass
class ComfyArgs:
    """What the check passes on: ``argv`` for main.py, and where it came from."""

    argv: List[str] = field(default_factory=list)
    #: "pid 1234: python main.py --listen ..." or None when nothing was running
    source: Optional[str] = None
    disable_all: bool = False
    whitelist: List[str] = field(default_factory=list)

    def loads(self, name: str) -> bool:
        """Whether this ComfyUI would load custom node folder ``name`` at all."""
        return not self.disable_all or name in self.whitelist

    def without_node_selection(self) -> List[str]:
        """``argv`` minus the custom-node selection (the per-node check sets its own)."""
        out: List[str] = []
        for option, values in _options(self.argv):
            if option not in ("--disable-all-custom-nodes", "--whitelist-custom-nodes"):
                out.append(option)
                out.extend(values)
        return out


def _options(argv: List[str]) -> Iterator[Tuple[str, List[str]]]:
    """(option, values) for each carried option in ``argv``, in order."""
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        name, eq, inline = token.partition("=")
        arity = CARRIED.get(name)
        if arity is None:
            continue
        if eq:
            yield name, [inline]
            continue
        if arity == 0:
            yield name, []
            continue
        values: List[str] = []
        while i < len(argv) and not argv[i].startswith("-"):
            values.append(argv[i])
            i += 1
            if arity == 1:
                break
        if values:
            yield name, values


#: carried options whose values are not paths
_NOT_PATHS = ("--whitelist-custom-nodes", "--front-end-version")


def parse(argv: List[str], source: Optional[str] = None, cwd: Optional[str] = None) -> ComfyArgs:
    """The carried part of main.py's arguments ``argv`` (those after main.py).

    Relative paths are made absolute against ``cwd``, the running process's
    directory, since the check runs in the ComfyUI home.
    """
    args = ComfyArgs(source=source)
    for option, values in _options(argv):
        if cwd is not None and option not in _NOT_PATHS:
            values = [str(Path(cwd) / v) for v in values]
        if option == "--disable-all-custom-nodes":
            args.disable_all = True
        elif option == "--whitelist-custom-nodes":
            args.whitelist = list(values)  # argparse: the last one wins
        args.argv.append(option)
        args.argv.extend(values)
    return args


def running(ui_home: Path) -> Optional[Tuple[int, List[str], str]]:
    """(pid, argv after main.py, cwd) of a ComfyUI running from ``ui_home``, if any."""
    main_py = os.path.realpath(ui_home / "main.py")
    for process in comfyproc.find(ui_home, with_env=False):
        for i, token in enumerate(process.argv[1:], start=1):
            if token.endswith("main.py") and (
                os.path.realpath(Path(process.cwd) / token) == main_py
            ):
                return process.pid, process.argv[i + 1 :], process.cwd
    return None


def learn(ui_home: Path) -> ComfyArgs:
    """The carried arguments of the ComfyUI running from ``ui_home``, or none."""
    found = running(ui_home)
    if found is None:
        return ComfyArgs()
    pid, argv, cwd = found
    return parse(argv, source=f"pid {pid}: main.py " + " ".join(argv), cwd=cwd)
