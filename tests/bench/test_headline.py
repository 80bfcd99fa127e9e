"""docs/BENCHMARKS.md's headline table is what tests/bench/results/ says, and the
rules that pick its rows: the newest run of each section, footprint rows with the
section they were measured in, nothing from results/spread/."""

import json
from pathlib import Path
from typing import Any

import pytest

from tests.bench import headline, render

pytestmark = pytest.mark.timeout(60)


def test_the_documents_headline_is_rendered_from_the_results() -> None:
    in_doc = headline.doc_block(headline.DOC.read_text())
    assert in_doc == headline.render(), (
        "docs/BENCHMARKS.md's headline differs from tests/bench/results/: "
        "run `python -m tests.bench.render --headline --write`"
    )


def row(section: str, metric: str, value: float = 1.0) -> dict[str, Any]:
    return {
        "section": section,
        "metric": metric,
        "value": value,
        "unit": "s",
        "baseline": None,
        "baseline_name": None,
        "target": None,
        "met": None,
        "note": "",
        "ratio": None,
    }


def write_run(
    folder: Path, name: str, started: str, rows: list[dict[str, Any]], **extra: Any
) -> None:
    sections = {r["section"] for r in rows} - {"footprint"}
    data = {
        "started_at": started,
        "rows": rows,
        "details": {"run": {}, **{s: {} for s in sections}},
        "errors": {},
        **extra,
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(data))


def test_each_section_comes_from_its_newest_run(tmp_path: Path) -> None:
    write_run(
        tmp_path,
        "full-old.json",
        "2026-11-01T00:00:00Z",
        [
            row("footprint", "bundle size", 40),
            row("install", "jobs 8", 4),
            row("start", "warm", 0.005),
            row("footprint", "second upload", 0),
            row("poll", "warm", 0.001),
        ],
    )
    write_run(
        tmp_path,
        "install-new.json",
        "2026-12-01T00:00:00Z",
        [row("footprint", "bundle size", 41), row("install", "defaults", 5.7)],
    )
    # Newer still, but kept for a spread: never in the headline.
    write_run(tmp_path / "spread", "poll-rerun.json", "2026-12-02T00:00:00Z", [row("poll", "x")])

    table = headline.render(tmp_path)
    metrics = [line.split(" | ")[1] for line in table.splitlines() if line.startswith("| ")][2:]
    # install (and the bundle size measured with it) from the new run, the old
    # install rows gone; start, its footprint row and poll still from the old one.
    assert metrics == ["bundle size", "defaults", "warm", "second upload", "warm"]
    assert "| footprint | bundle size | 41.00 s |" in table
    assert "- install: `install-new.json` (started 2026-12-01T00:00:00Z)" in table
    assert "- start, poll: `full-old.json` (started 2026-11-01T00:00:00Z)" in table
    assert "poll-rerun" not in table


def test_a_section_that_was_not_measured_says_so(tmp_path: Path) -> None:
    write_run(
        tmp_path,
        "r.json",
        "2026-12-01T00:00:00Z",
        [row("install", "defaults")],
        details={"run": {}, "install": {}, "scale": {}},
        errors={"scale": "no sshd"},
    )
    assert "**scale: not measured** — no sshd" in headline.render(tmp_path)


def test_write_replaces_only_the_block_and_is_idempotent(tmp_path: Path) -> None:
    results = tmp_path / "results"
    write_run(results, "r.json", "2026-12-01T00:00:00Z", [row("install", "defaults")])
    doc = tmp_path / "B.md"
    doc.write_text(f"intro\n\n{headline.BEGIN}\n| stale |\n{headline.END}\n\nafter\n")
    assert headline.write(doc, results) is True
    text = doc.read_text()
    assert text.startswith("intro\n\n" + headline.BEGIN + "\n| section |")
    assert text.endswith(headline.END + "\n\nafter\n")
    assert "| stale |" not in text
    assert headline.doc_block(text) == headline.render(results)
    assert headline.write(doc, results) is False
    assert doc.read_text() == text


def test_no_markers_or_no_results_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(headline.HeadlineError, match=r"no .* block"):
        headline.doc_block("# Benchmarks\n| a | b |\n")
    with pytest.raises(headline.HeadlineError, match="no results JSON"):
        headline.render(tmp_path)


def test_render_cli_prints_the_headline(capsys: pytest.CaptureFixture[str]) -> None:
    assert render.main(["--headline"]) == 0
    assert capsys.readouterr().out.strip() == headline.render()
    assert render.main(["--headline", "--bogus"]) == 2
    assert "usage" in capsys.readouterr().err
