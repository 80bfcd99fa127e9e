"""The terminal view of an install: an overall bar, one row per node (with its import
check), the requirements phase, the task's warnings.

Pure functions of a progress document (the :func:`protocol.api.progress_response`
shape) to rich renderables, plus a plain line-per-change log for terminals that
are not interactive (CI logs, pipes).
"""

from __future__ import annotations

import datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from protocol.progress import parse_time

Document = dict[str, Any]

#: How each node status and task state is drawn.
STATUS_STYLES = {
    "pending": "dim",
    "cloning": "cyan",
    "cloned": "cyan",
    "installing_requirements": "magenta",
    "waiting": "dim",
    "running_install_script": "magenta",
    "verifying": "magenta",
    "installed": "green",
    "skipped": "yellow",
    "failed": "bold red",
    "cancelled": "red",
    "starting": "dim",
    "queued": "dim",
    "installing": "magenta",
    "running_install_scripts": "magenta",
    "restarting": "magenta",
    "planning": "cyan",
    "planned": "green",
    "completed": "green",
    "lost": "bold red",
    "none": "dim",
    "running": "magenta",
    "done": "green",
}
STATUS_MARKS = {
    "installed": "✓",
    "planned": "✓",
    "skipped": "-",
    "failed": "✗",
    "cancelled": "✗",
    "completed": "✓",
    "lost": "✗",
    "done": "✓",
}


def _time(value: object) -> datetime.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return parse_time(value)
    except ValueError:
        return None


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def elapsed(started: object, finished: object, now: datetime.datetime) -> str:
    """``m:ss`` from ``started`` to ``finished`` (or to ``now`` while running); '' if unknown."""
    start = _time(started)
    if start is None:
        return ""
    end = _time(finished) or now
    return format_duration((end - start).total_seconds())


def status_text(status: object) -> Text:
    name = str(status or "")
    mark = STATUS_MARKS.get(name)
    label = f"{mark} {name}" if mark else name
    return Text(label.replace("_", " "), style=STATUS_STYLES.get(name, ""))


#: How a node's ``import`` result (the check that it loads as ComfyUI loads it) is drawn.
IMPORT_STYLES = {"ok": "green", "failed": "bold red", "timeout": "bold red", "skipped": "dim"}
IMPORT_MARKS = {"ok": "✓", "failed": "✗", "timeout": "✗", "skipped": "-"}


def import_text(result: object) -> Text:
    """``✓ ok · 3 classes``, ``✗ failed``, ``✗ timeout``, ``- skipped``; '' before the check."""
    if not isinstance(result, dict) or not result.get("status"):
        return Text("")
    status = str(result["status"])
    label = f"{IMPORT_MARKS.get(status, '?')} {status}"
    classes = result.get("node_classes")
    if status == "ok" and isinstance(classes, int):
        label += f" · {classes} class" + ("" if classes == 1 else "es")
    return Text(label, style=IMPORT_STYLES.get(status, ""))


def import_summary(result: object) -> str:
    """The import result for a plain line: ``import ok, 3 classes``; '' when none."""
    if not isinstance(result, dict) or not result.get("status"):
        return ""
    text = f"import {result['status']}"
    classes = result.get("node_classes")
    if isinstance(classes, int):
        text += f", {classes} class" + ("" if classes == 1 else "es")
    return text


def node_status(node: Document) -> str:
    """What a node is doing, as the person reads it.

    The agent keeps a node "installing_requirements" until its install.py step
    starts, so once its requirements are done it is waiting for that step, not
    installing anything.
    """
    status = str(node.get("status") or "")
    if status == "installing_requirements" and node.get("requirements_status") == "done":
        return "waiting"
    return status


def short_error(error: object, limit: int = 160) -> str:
    """The last non-empty line of an error (where the cause usually is), shortened."""
    lines = [line.strip() for line in str(error or "").splitlines() if line.strip()]
    if not lines:
        return ""
    text = lines[-1] if len(lines[-1]) > 15 or len(lines) == 1 else " ".join(lines[-2:])
    return text if len(text) <= limit else text[: limit - 1] + "…"


def one_line(error: object, limit: int = 300) -> str:
    """The whole error on one line, shortened: for the task's own error."""
    text = " ".join(line.strip() for line in str(error or "").splitlines() if line.strip())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def overall_fraction(doc: Document) -> float:
    if doc.get("state") == "completed":
        return 1.0
    total = doc.get("total_nodes") or 0
    processed = doc.get("processed") or 0
    return min(1.0, processed / total) if total else 0.0


def render(
    doc: Document, *, title: str = "", now: datetime.datetime | None = None
) -> RenderableType:
    """The whole view of one task."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    state = str(doc.get("state", "starting"))
    task_id = str(doc.get("task_id", ""))

    header = Text()
    header.append("nodeferry ", style="bold")
    header.append(task_id[:8], style="dim")
    if title:
        header.append(f"  {title}")
    header.append("  ")
    header.append_text(status_text(state))
    if doc.get("stale"):
        header.append("  (instance unreachable: last known progress)", style="yellow")

    total = int(doc.get("total_nodes") or 0)
    processed = int(doc.get("processed") or 0)
    bar_style = "red" if state in ("failed", "lost", "cancelled") else "green"
    overall = Table.grid(padding=(0, 1))
    overall.add_column(width=40)
    overall.add_column()
    overall.add_row(
        ProgressBar(
            total=100,
            completed=overall_fraction(doc) * 100,
            width=40,
            complete_style=bar_style,
            finished_style=bar_style,
        ),
        Text(
            f"{processed}/{total} nodes  {overall_fraction(doc):4.0%}  "
            f"{elapsed(doc.get('started_at'), doc.get('finished_at'), now)}"
        ),
    )

    nodes = Table(box=None, pad_edge=False, show_edge=False, header_style="bold dim")
    nodes.add_column("node", no_wrap=True, max_width=40)
    nodes.add_column("status", no_wrap=True)
    nodes.add_column("requirements", no_wrap=True)
    nodes.add_column("import", no_wrap=True)
    nodes.add_column("time", justify="right", no_wrap=True)
    nodes.add_column("commit / error", overflow="fold")
    for node in doc.get("nodes") or []:
        if not isinstance(node, dict):
            continue
        error = short_error(node.get("error"))
        detail = (
            Text(error, style="red")
            if error
            else Text(str(node.get("commit") or "")[:10], style="dim")
        )
        nodes.add_row(
            Text(str(node.get("name", "?"))),
            status_text(node_status(node)),
            status_text(node.get("requirements_status", "none"))
            if node.get("requirements_status") not in (None, "none")
            else Text(""),
            import_text(node.get("import")),
            elapsed(node.get("started_at"), node.get("finished_at"), now),
            detail,
        )

    parts: list[RenderableType] = [header, overall]
    if doc.get("nodes"):
        parts.append(nodes)
    if doc.get("has_requirements"):
        requirements = Text("requirements: ", style="bold")
        requirements.append_text(status_text(doc.get("requirements_status", "none")))
        parts.append(requirements)
    changes = package_changes(doc)
    if changes:
        parts.append(Text(f"packages: {changes}", style="dim"))
    if state == "restarting" and not doc.get("ready"):
        doing = doc.get("current_status") or "restarting"
        parts.append(Text(f"ComfyUI: {doing}…", style="magenta"))
    elif isinstance(doc.get("ready"), dict):
        parts.append(ready_text(doc["ready"]))
    for warning in all_warnings(doc):
        parts.append(Text(f"warning: {one_line(warning)}", style="yellow"))
    if doc.get("error") and state not in ("failed", "lost"):
        # A failed or lost task's error is the reason summary() gives: said once.
        parts.append(Text(f"error: {one_line(doc.get('error'))}", style="bold red"))
    return Group(*parts)


def ready_line(ready: Document) -> str:
    """``ComfyUI: restarted by supervisor (comfyui), 812 classes, every workflow class
    present (14.2s)``: what the running server said after the install."""
    if ready.get("classes") is None:
        return "ComfyUI: " + str(ready.get("note") or "did not answer")
    how = ready.get("restarted_by")
    head = f"restarted by {how}" if how else "running"
    if ready.get("service"):
        head += f" ({ready['service']})"
    if ready.get("pid"):
        head += f", pid {ready['pid']}"
    missing = [str(name) for name in ready.get("missing") or []]
    tail = f"missing {', '.join(missing)}" if missing else "every workflow class present"
    seconds = float(ready.get("seconds") or 0)
    return f"ComfyUI: {head}, {ready.get('classes')} classes, {tail} ({seconds:.1f}s)"


def ready_text(ready: Document) -> Text:
    ok = ready.get("classes") is not None and not ready.get("missing")
    style = "green" if ok else ("yellow" if ready.get("classes") is None else "bold red")
    return Text(ready_line(ready), style=style)


def all_warnings(doc: Document) -> list[str]:
    """Each node's warnings (``NAME: text``: install.py errors that exited 0,
    requirements installed alone), then the task's (downgrades and what forced
    them, installer fallbacks, a lock's torch that was kept)."""
    found = [
        f"{node.get('name', '?')}: {warning}"
        for node in doc.get("nodes") or []
        if isinstance(node, dict)
        for warning in node.get("warnings") or []
    ]
    return found + [str(warning) for warning in doc.get("warnings") or []]


def package_changes(doc: Document) -> str:
    """``3 added, 1 downgraded``: how the install changed ComfyUI's environment."""
    packages = doc.get("packages") or {}
    if not isinstance(packages, dict):
        return ""
    return ", ".join(
        f"{len(changes)} {kind}"
        for kind, changes in sorted(packages.items())
        if isinstance(changes, dict) and changes
    )


def summary(doc: Document) -> Text:
    """One closing line: what happened, in the colour it deserves."""
    state = str(doc.get("state", ""))
    counts = (
        f"{doc.get('successful', 0)} installed, {doc.get('failed', 0)} failed, "
        f"{doc.get('skipped', 0)} skipped"
    )
    took = elapsed(doc.get("started_at"), doc.get("finished_at"), _now())
    took = f" in {took}" if took else ""
    if state == "completed" and doc.get("success"):
        # Present nodes are skipped, not updated: say how to update them.
        hint = " (skipped: already there; --update updates them)" if doc.get("skipped") else ""
        return Text(f"✓ done: {counts}{took}{hint}", style="bold green")
    if state == "completed":
        why = f": {one_line(doc.get('error'))}" if doc.get("error") else ""
        return Text(f"✗ finished with failures: {counts}{took}{why}", style="bold red")
    if state == "cancelled":
        return Text(f"✗ cancelled: {counts}{took}", style="bold red")
    if state in ("failed", "lost"):
        reason = one_line(doc.get("error")) or state
        return Text(f"✗ {state}: {reason}", style="bold red")
    return Text(f"… {state.replace('_', ' ')}: {counts}", style="bold")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class ChangeLog:
    """Plain lines for what changed between two documents: the non-interactive display."""

    def __init__(self) -> None:
        self._state: str | None = None
        self._nodes: dict[str, tuple[str, str, str]] = {}
        self._requirements: str | None = None
        self._warnings: set[str] = set()
        self._packages = ""
        self._ready = ""

    def lines(self, doc: Document) -> list[str]:
        out: list[str] = []
        state = str(doc.get("state", ""))
        if state != self._state:
            self._state = state
            out.append(f"state: {state}" + (" (stale)" if doc.get("stale") else ""))
        for node in doc.get("nodes") or []:
            if not isinstance(node, dict):
                continue
            name = str(node.get("name", "?"))
            imported = import_summary(node.get("import"))
            key = (node_status(node), str(node.get("requirements_status", "")), imported)
            if self._nodes.get(name) != key:
                self._nodes[name] = key
                line = f"  {name}: {key[0]}"
                if imported:
                    line += f" ({imported})"
                if key[0] == "failed" and node.get("error"):
                    line += f": {short_error(node.get('error'))}"
                out.append(line)
        requirements = str(doc.get("requirements_status", "none"))
        if doc.get("has_requirements") and requirements != self._requirements:
            self._requirements = requirements
            out.append(f"requirements: {requirements}")
        changes = package_changes(doc)
        if changes and changes != self._packages:
            self._packages = changes
            out.append(f"packages: {changes}")
        ready = doc.get("ready")
        if isinstance(ready, dict) and ready_line(ready) != self._ready:
            self._ready = ready_line(ready)
            out.append(self._ready)
        for warning in all_warnings(doc):
            if warning not in self._warnings:
                self._warnings.add(warning)
                out.append(f"warning: {one_line(warning)}")
        return out
