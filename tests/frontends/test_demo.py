"""``nodeferry demo`` end to end, as a newcomer runs it: a fresh sandbox, the live
install, the dashboard served until Ctrl-C."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.frontends.test_cli import ROOT, Terminal, cli_env

pytestmark = pytest.mark.slow


@pytest.mark.timeout(300)
def test_demo_installs_and_exits(tmp_path: Path) -> None:
    sandbox = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "controller", "demo", "--exit", "--dir", str(sandbox)],
        env=cli_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "✓ done: 4 installed, 0 failed, 0 skipped" in out
    # Which installer, as information (uv from beside this interpreter, shipped
    # into the sandbox): no "uv unavailable" warning on a first run.
    assert re.search(r"^installer: uv \(\S+\)$", out, re.MULTILINE), out
    assert "warning" not in out.lower() and "uv unavailable" not in out
    # --exit: nothing serves the dashboard afterwards, so no address is printed.
    assert "dashboard" not in out
    # Without a terminal each node's line is printed once (no closing table).
    assert len(re.findall(r"ComfyUI-Demo-Tiles: installed", out)) == 1, out
    assert "nodeferry " not in out  # the live header belongs to terminals
    custom_nodes = sandbox / "ComfyUI" / "custom_nodes"
    assert sorted(p.name for p in custom_nodes.iterdir()) == [
        "ComfyUI-Demo-Basics",
        "ComfyUI-Demo-Palette",
        "ComfyUI-Demo-Prompts",
        "ComfyUI-Demo-Tiles",
    ]
    assert (custom_nodes / "ComfyUI-Demo-Tiles" / ".installed").read_text() == "ok"
    # Pinned to the tag: the commit made after it is not there.
    assert not (custom_nodes / "ComfyUI-Demo-Prompts" / "CHANGES.md").exists()
    python = sandbox / "ComfyUI" / "venv" / "bin" / "python"
    imported = subprocess.run(
        [str(python), "-c", "import nodeferry_demo_tiles as t; print(t.__version__)"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert imported.stdout.strip() == "0.4.1"

    # Running it again rebuilds the sandbox it made: what was in it is gone, and
    # the four nodes are installed afresh.
    stray = custom_nodes / "ComfyUI-Demo-Tiles" / "stray.txt"
    stray.write_text("from the first build")
    again = subprocess.run(
        [sys.executable, "-m", "controller", "demo", "--exit", "--dir", str(sandbox)],
        env=cli_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert "✓ done: 4 installed, 0 failed, 0 skipped" in again.stdout
    assert not stray.exists()
    assert (custom_nodes / "ComfyUI-Demo-Tiles" / ".installed").read_text() == "ok"

    # And it refuses a foreign folder.
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    refused = subprocess.run(
        [sys.executable, "-m", "controller", "demo", "--exit", "--dir", str(foreign)],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode != 0
    assert "not a nodeferry demo sandbox" in refused.stdout + refused.stderr
    assert (foreign / "precious.txt").read_text() == "keep me"


@pytest.mark.timeout(150)
def test_demo_serves_the_dashboard_until_ctrl_c(
    tmp_path: Path, terminal: Callable[[list[str], dict[str, str]], Terminal]
) -> None:
    term = terminal(["demo", "--port", "0"], cli_env(TMPDIR=str(tmp_path)))
    shown = term.expect(r"dashboard: (http://127\.0\.0\.1:\d+/)#token=([A-Za-z0-9_-]+)", 120)
    url, token = shown.group(1), shown.group(2)
    term.expect("press Ctrl-C to stop", 10)
    assert "✓ done: 4 installed" in term.text
    with urllib.request.urlopen(url, timeout=10) as page:
        assert page.status == 200 and "<title>nodeferry</title>" in page.read().decode()
    with pytest.raises(urllib.error.HTTPError):  # the API wants the token
        urllib.request.urlopen(url + "api/tasks", timeout=10)
    authorized = urllib.request.Request(
        url + "api/tasks", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(authorized, timeout=10) as answer:
        tasks = json.load(answer)["tasks"]
    assert [t["state"] for t in tasks] == ["completed"]
    started = time.monotonic()
    term.send("\x03")
    assert term.wait(30) == 0, term.text
    assert time.monotonic() - started < 15
    # The temporary sandbox is gone with it.
    assert not list(tmp_path.glob("nodeferry-demo-*"))
