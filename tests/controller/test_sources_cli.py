"""``nodeferry resolve`` with an in-process controller, the way a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.controller.test_sources_resolve import (
    KJ,
    api_workflow,
    png_with_text,
    ui_workflow,
)

ROOT = Path(__file__).resolve().parents[2]


def nodeferry(tmp_path: Path, node_db: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("NODEFERRY_")},
        "NODEFERRY_DATA_DIR": str(tmp_path / "data"),
        "NODEFERRY_ONLINE_LOOKUPS": "false",
        "PYTHONPATH": str(ROOT),
    }
    if node_db is not None:
        env["NODEFERRY_NODE_DB"] = str(node_db)
    return subprocess.run(
        [sys.executable, "-m", "controller", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_resolve_a_png_workflow_as_json(tmp_path: Path, node_db_dir: Path) -> None:
    image = tmp_path / "ComfyUI_00001_.png"
    image.write_bytes(
        png_with_text(
            [
                (b"tEXt", b"prompt\0" + json.dumps(api_workflow()).encode()),
                (b"tEXt", b"workflow\0" + json.dumps(ui_workflow()).encode()),
            ]
        )
    )
    done = nodeferry(tmp_path, node_db_dir, "resolve", str(image), "--json")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["nodes"][0]["url"] == KJ
    assert plan["unresolved"] == ["TotallyUnknownNode9000"]
    assert plan["node_db"] == str(node_db_dir)


def test_resolve_prints_a_table_and_explains_a_missing_database(
    tmp_path: Path, node_db_dir: Path
) -> None:
    wf = tmp_path / "workflow.json"
    wf.write_text(json.dumps(ui_workflow()))
    done = nodeferry(tmp_path, node_db_dir, "resolve", str(wf))
    assert done.returncode == 0, done.stderr
    assert "ComfyUI-KJNodes" in done.stdout
    assert "unresolved (1): TotallyUnknownNode9000" in done.stdout
    assert "ambiguous: Film Grain" in done.stdout
    missing = nodeferry(tmp_path, None, "resolve", str(wf))
    assert missing.returncode == 2
    assert "nodeferry node-db update" in missing.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert nodeferry(tmp_path, node_db_dir, "resolve", str(bad)).returncode == 2
