"""The ``install`` subcommand's live display: one line per node change, then a summary."""

import time
from typing import IO, Dict, Optional, Tuple

from protocol import Progress

_STATE_TITLES = {
    "cloning": "cloning",
    "installing_requirements": "installing requirements",
    "running_install_scripts": "running install.py scripts",
    "verifying": "checking each node loads as ComfyUI loads it",
    "restarting": "restarting ComfyUI and asking it for its node classes",
}
_COLOURS = {"installed": "32", "skipped": "36", "failed": "31", "cancelled": "33"}


class Display:
    def __init__(self, stream: IO[str], colour: Optional[bool] = None) -> None:
        self.stream = stream
        self.colour = stream.isatty() if colour is None else colour
        self.started = time.monotonic()
        self._seen: Dict[str, Tuple[str, str]] = {}
        self._state: Optional[str] = None
        self._requirements: Optional[str] = None

    def _paint(self, text: str, status: str) -> str:
        code = _COLOURS.get(status)
        return f"\x1b[{code}m{text}\x1b[0m" if self.colour and code else text

    def _print(self, text: str) -> None:
        elapsed = time.monotonic() - self.started
        self.stream.write(f"{elapsed:6.1f}s  {text}\n")
        self.stream.flush()

    def update(self, progress: Progress) -> None:
        if progress.state != self._state and progress.state in _STATE_TITLES:
            self._print(f"== {_STATE_TITLES[progress.state]}")
        self._state = progress.state
        width = max((len(n.name) for n in progress.nodes), default=0)
        total = len(progress.nodes)
        for index, node in enumerate(progress.nodes, 1):
            key = (node.status, node.requirements_status)
            if self._seen.get(node.name) == key:
                continue
            first = node.name not in self._seen
            self._seen[node.name] = key
            if first and node.status == "pending":
                continue
            detail = node.status.replace("_", " ")
            if node.requirements_status not in ("none", "pending") and node.status in (
                "installing_requirements",
            ):
                detail += f" ({node.requirements_status})"
            if node.commit and node.status in ("cloned", "skipped", "installed"):
                detail += f"  {node.commit[:10]}"
            check = node.import_result
            if check is not None and node.status == "installed" and check.status == "ok":
                judged = {"comfyui": "ComfyUI loads it", "comfyui_alone": "ComfyUI loads it alone"}
                parts = []
                if check.node_classes is not None:
                    parts.append(f"{check.node_classes} node class(es)")
                parts.append(f"{check.seconds or 0.0:.1f}s")
                detail += f"  {judged.get(check.check or '', 'import ok')} ({', '.join(parts)})"
            line = f"[{index:>{len(str(total))}}/{total}] {node.name:<{width}}  {detail}"
            self._print(self._paint(line, node.status))
            if node.status == "failed" and node.error:
                for err_line in node.error.splitlines()[-8:]:
                    self.stream.write("           | " + err_line + "\n")
        if progress.requirements_status != self._requirements and progress.requirements_status in (
            "done",
            "failed",
        ):
            self._print(f"requirements: {progress.requirements_status}")
        self._requirements = progress.requirements_status

    def summary(self, progress: Progress) -> None:
        elapsed = time.monotonic() - self.started
        verdict = progress.state
        if progress.state == "completed" and not progress.succeeded:
            verdict = "completed with failures"
        self.stream.write(
            f"\n{verdict}: {progress.total_nodes} node(s), {progress.successful} installed, "
            f"{progress.skipped} skipped, {progress.failed} failed in {elapsed:.1f}s\n"
        )
        for node in progress.nodes:
            for text in node.warnings:
                self.stream.write(self._paint(f"warning: {node.name}: {text}", "cancelled") + "\n")
        for text in progress.warnings:
            self.stream.write(self._paint(f"warning: {text}", "cancelled") + "\n")
        changes = progress.packages
        if changes:
            counts = ", ".join(f"{len(v)} {k}" for k, v in sorted(changes.items()))
            self.stream.write(f"packages: {counts}\n")
        if progress.error:
            self.stream.write(f"error: {progress.error}\n")
        if progress.log_file:
            self.stream.write(f"log: {progress.log_file}\n")
        self.stream.flush()
