"""``python -m tests.bench.render FIGURES.json``: the figures as a Markdown table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.bench.report import markdown_table


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.bench.render FIGURES.json", file=sys.stderr)
        return 2
    print(markdown_table(json.loads(Path(argv[0]).read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
