"""``python -m tests.bench.render FIGURES.json``: the figures as a Markdown table.

``python -m tests.bench.render --headline [--write]``: the headline block of
docs/BENCHMARKS.md from ``tests/bench/results/`` (see :mod:`tests.bench.headline`);
``--write`` puts it into the document.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.bench import headline
from tests.bench.report import markdown_table

USAGE = "usage: python -m tests.bench.render FIGURES.json | --headline [--write]"


def main(argv: list[str]) -> int:
    if argv[:1] == ["--headline"] and argv[1:] in ([], ["--write"]):
        try:
            if argv[1:]:
                changed = headline.write()
                print(f"{headline.DOC}: {'updated' if changed else 'already current'}")
            else:
                print(headline.render())
        except headline.HeadlineError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    if len(argv) != 1 or argv[0].startswith("-"):
        print(USAGE, file=sys.stderr)
        return 2
    print(markdown_table(json.loads(Path(argv[0]).read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
