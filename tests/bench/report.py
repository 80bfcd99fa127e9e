"""The benchmark's results: a table for people and the same figures as JSON.

A :class:`Report` collects :class:`Row` s (one comparison or figure each, with
its target and whether the target was met) and free-form details per section
(raw summaries, counts, notes), plus a description of the machine.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.bench.stats import Summary

SCHEMA = 1


@dataclass
class Row:
    section: str
    metric: str
    value: float
    unit: str
    #: The same measurement for the baseline, in the same unit, when there is one.
    baseline: float | None = None
    baseline_name: str | None = None
    target: str | None = None
    met: bool | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """How many times better than the baseline (baseline / value: lower is better)."""
        if self.baseline is None:
            return None
        if self.value <= 0:
            return math.inf
        return self.baseline / self.value


@dataclass
class Report:
    size: str
    command: str
    rows: list[Row] = field(default_factory=list)
    details: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    started_at: str = field(default_factory=lambda: _now())
    finished_at: str | None = None
    machine: dict[str, Any] = field(default_factory=lambda: machine_description())

    def add(self, row: Row) -> Row:
        if self.size != "full":
            # Targets are set for the full size on two cores; a smoke run proves the
            # script runs and says nothing about whether they are met.
            row.met = None
        self.rows.append(row)
        return row

    def detail(self, section: str, key: str, value: Any) -> None:
        self.details.setdefault(section, {})[key] = _plain(value)

    def fail(self, section: str, message: str) -> None:
        """Record that a whole section could not be measured, and why."""
        self.errors[section] = message

    # -- output --------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        rows = []
        for row in self.rows:
            item = asdict(row)
            item["ratio"] = _finite(row.ratio)
            rows.append(item)
        return {
            "schema": SCHEMA,
            "size": self.size,
            "command": self.command,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "machine": self.machine,
            "rows": rows,
            "details": self.details,
            "errors": self.errors,
        }

    def write_json(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n")

    def table(self) -> str:
        headers = ("section", "metric", "nodeferry", "baseline", "ratio", "target", "met")
        lines = [headers]
        for row in self.rows:
            baseline = ""
            if row.baseline is not None:
                baseline = _fmt(row.baseline, row.unit)
                if row.baseline_name:
                    baseline += f" ({row.baseline_name})"
            ratio = row.ratio
            lines.append(
                (
                    row.section,
                    row.metric,
                    _fmt(row.value, row.unit),
                    baseline,
                    "" if ratio is None else f"{ratio:.1f}x",
                    row.target or "",
                    {True: "yes", False: "NO", None: ""}[row.met],
                )
            )
        widths = [max(len(str(line[i])) for line in lines) for i in range(len(headers))]
        out = []
        for index, line in enumerate(lines):
            out.append("  ".join(str(cell).ljust(widths[i]) for i, cell in enumerate(line)))
            if index == 0:
                out.append("  ".join("-" * w for w in widths))
        for section, message in self.errors.items():
            out.append(f"!! {section}: not measured: {message}")
        return "\n".join(line.rstrip() for line in out)


def _fmt(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"
    if unit == "bytes":
        if value >= 1024 * 1024:
            return f"{value / 1024 / 1024:.1f} MiB"
        if value >= 1024:
            return f"{value / 1024:.1f} KiB"
        return f"{value:.0f} B"
    if unit in ("count", "polls/s", "reads/s", "%"):
        return f"{value:.1f} {unit}" if unit != "count" else f"{value:.0f}"
    return f"{value:g} {unit}"


def _finite(value: float | None) -> float | None:
    if value is None or math.isinf(value) or math.isnan(value):
        return None
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, Summary):
        return value.to_dict()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and (math.isinf(value) or math.isnan(value)):
        return None
    return value


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def machine_description() -> dict[str, Any]:
    try:
        import paramiko

        paramiko_version = paramiko.__version__
    except ImportError:  # pragma: no cover - paramiko is a dependency
        paramiko_version = None
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_kb = int(line.split()[1])
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_mib": memory_kb // 1024,
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "paramiko": paramiko_version,
        "kernel": platform.release(),
        "load_average_at_start": list(os.getloadavg()),
    }


def markdown_table(data: dict[str, Any]) -> str:
    """The rows of a JSON report as a Markdown table (what docs/BENCHMARKS.md shows)."""
    lines = [
        "| section | metric | nodeferry | baseline | ratio | target | met |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in data["rows"]:
        baseline = ""
        if row["baseline"] is not None:
            baseline = _fmt(row["baseline"], row["unit"])
            if row["baseline_name"]:
                baseline += f" ({row['baseline_name']})"
        ratio = "" if row["ratio"] is None else f"{row['ratio']:.1f}x"
        met = {True: "yes", False: "**no**", None: ""}[row["met"]]
        cells = [
            row["section"],
            row["metric"] + (f" — {row['note']}" if row["note"] else ""),
            _fmt(row["value"], row["unit"]),
            baseline,
            ratio,
            row["target"] or "",
            met,
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    for section, message in data.get("errors", {}).items():
        lines.append(f"\n**{section}: not measured** — {message}")
    return "\n".join(lines)
