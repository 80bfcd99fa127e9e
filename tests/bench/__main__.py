"""``python -m tests.bench [--smoke] [--json PATH] [--only SECTION ...] [--workdir DIR]``

Runs every benchmark section in order, prints the table, and writes the same
figures as JSON. A section that cannot run (a missing part, an error) is
recorded as not measured, with the reason, and the others still run; the exit
status is 1 when any section failed.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from tests.bench import install_bench, realpacks, replicas_bench, storage_bench
from tests.bench.lab import Lab
from tests.bench.report import Report, _now
from tests.bench.sizes import SIZES, BenchSize

Section = Callable[[Lab, Report, Callable[[str], None]], None]


def _sections() -> dict[str, Section]:
    # Imported lazily: the controller-side sections need the controller package.
    from tests.bench import controller_bench

    return {
        "install": install_bench.run,
        "start": controller_bench.run_start,
        "poll": controller_bench.run_poll,
        "freshness": controller_bench.run_freshness,
        "scale": controller_bench.run_scale,
        "realpacks": realpacks.run,
        "storage": storage_bench.run,
        "replicas": replicas_bench.run,
    }


SECTION_NAMES = (
    "install",
    "start",
    "poll",
    "freshness",
    "scale",
    "storage",
    "replicas",
    "realpacks",
)
#: Sections the smoke size leaves out unless named with --only: they start a
#: database server and several controllers, more than its time budget holds.
NOT_IN_SMOKE = ("replicas",)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench", description="nodeferry's benchmarks (loopback, real parts)."
    )
    parser.add_argument(
        "--smoke", action="store_true", help="the tiny size CI runs (proves it runs, not speed)"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the figures here")
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTION_NAMES,
        metavar="SECTION",
        help=f"run only these sections ({', '.join(SECTION_NAMES)}); repeatable",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="keep generated repos, wheelhouse and venv template here between runs "
        "(default: a temporary directory removed at the end)",
    )
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    size: BenchSize = SIZES["smoke" if args.smoke else "full"]
    command = "python -m tests.bench " + shlex.join(
        list(argv if argv is not None else sys.argv[1:])
    )
    report = Report(size=size.name, command=command.strip())
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    wanted = args.only or [n for n in SECTION_NAMES if not (args.smoke and n in NOT_IN_SMOKE)]
    with tempfile.TemporaryDirectory(prefix="nodeferry-bench-") as scratch:
        workdir = args.workdir or Path(scratch)
        log(f"setting up the lab in {workdir} (size {size.name})")
        with Lab(size, workdir) as lab:
            log("lab ready")
            try:
                sections = _sections()
            except ImportError as exc:
                sections = {"install": install_bench.run, "realpacks": realpacks.run}
                for name in SECTION_NAMES[1:-1]:
                    report.fail(name, f"the controller could not be imported: {exc}")
            for name in SECTION_NAMES:
                if name not in wanted or name not in sections:
                    continue
                if time.monotonic() - started > size.budget:
                    report.fail(
                        name, f"skipped: the run's time budget ({size.budget:.0f} s) ran out"
                    )
                    continue
                log(f"section {name}")
                # Other work on the machine moves the figures: keep its load with them.
                report.detail(name, "load_average_at_start", list(os.getloadavg()))
                section_started = time.monotonic()
                try:
                    sections[name](lab, report, log)
                except Exception as exc:  # one broken section must not hide the others
                    traceback.print_exc()
                    report.fail(name, f"{type(exc).__name__}: {exc}")
                report.detail(name, "section_seconds", time.monotonic() - section_started)
    report.finished_at = _now()
    report.detail("run", "total_seconds", time.monotonic() - started)
    print(report.table())
    if args.json:
        report.write_json(args.json)
        log(f"figures written to {args.json}")
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(run())
