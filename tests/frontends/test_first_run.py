"""A first run without blemishes (#24): ``nodeferry serve`` shows the dashboard's
tokened address only to a person at a terminal, and the demo says which
installer it uses as information."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from controller.cli.demo import demo_installer, find_uv
from controller.sandbox import playground as sandboxes
from tests.frontends.test_cli import Terminal, cli_env
from tests.support.sshd import free_port


@pytest.mark.timeout(60)
def test_serve_on_a_terminal_prints_the_address_with_its_token(
    tmp_path: Path, terminal: Callable[[list[str], dict[str, str]], Terminal]
) -> None:
    port = free_port()
    env = cli_env(NODEFERRY_DATA_DIR=str(tmp_path / "data"))
    term = terminal(["serve", "--port", str(port)], env)
    shown = term.expect(rf"dashboard: http://127\.0\.0\.1:{port}/#token=(\S+)", 40)
    assert shown.group(1) == (tmp_path / "data" / "token").read_text().strip()


def _sandbox(root: Path) -> sandboxes.Sandbox:
    """Only the folders demo_installer uses: nothing is built."""
    return sandboxes.Sandbox(
        root=root,
        ui_home=root / "ComfyUI",
        python=root / "python",
        wheelhouse=root / "wheels",
        repos=root / "repos",
        data_dir=root / "data",
        state_dir=root / "agent-state",
    )


@pytest.mark.timeout(30)
def test_the_demo_ships_this_machines_uv_or_says_it_uses_pip(tmp_path: Path) -> None:
    uv = find_uv()
    assert uv is not None, "the test extra installs uv beside this interpreter"
    kind, line = demo_installer(_sandbox(tmp_path / "a"), uv)
    assert (kind, line) == ("uv", f"installer: uv ({uv})")
    # Where the agent looks before it would try to fetch one.
    shipped = tmp_path / "a" / "agent-state" / "tools" / "uv" / "bin" / "uv"
    assert os.access(shipped, os.X_OK) and shipped.resolve() == Path(uv).resolve()
    kind, line = demo_installer(_sandbox(tmp_path / "b"), None)
    assert kind == "pip"
    assert re.fullmatch(r"installer: pip \(this machine has no uv.*\)", line), line
    assert not (tmp_path / "b" / "agent-state" / "tools").exists()
