"""The dashboard card of an install that restarts ComfyUI (#22), in a real headless
Chromium: the ``restarting`` phase is drawn while the server comes back, then the
ready line says how it was restarted and that nothing is missing. The server is the
agent tests' stand-in (the real ComfyUI's tier is tests/realworld/test_restart.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from controller.client import Client
from tests.agent.test_restart import FAKE_MAIN
from tests.frontends.conftest import DemoWorld, RunningController
from tests.frontends.test_dashboard_browser import (  # noqa: F401 (the browser fixture)
    STATE_RECORDER,
    browser,
    pytestmark,
)
from tests.support import comfy_server
from tests.support.sshd import free_port


@pytest.mark.timeout(240)  # the module's sandbox and browser are built inside it
def test_the_card_shows_the_restart_and_what_comfyui_answered(
    browser: Any,  # noqa: F811 (the imported fixture, by name)
    controller: RunningController,
    world: DemoWorld,
    tmp_path: Path,
) -> None:
    from playwright.sync_api import expect

    home = world.new_ui_home(tmp_path / "restarted")
    (home / "main.py").write_text(FAKE_MAIN)
    (home / "mode").write_text("serve")
    port = free_port()
    log = tmp_path / "first.log"
    with log.open("ab") as out:
        server = subprocess.Popen(
            [sys.executable, "main.py", "--port", str(port)],
            cwd=home,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        comfy_server.wait_ready(port, 30, log)
        (home / "mode").write_text("slow")  # the restarted one takes 3 s to answer
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"{controller.url}/#token={controller.token}")
        expect(page.locator("#connection")).to_have_text("live", timeout=10_000)
        page.evaluate(STATE_RECORDER)
        with Client(controller.url, token=controller.token) as client:
            task_id = client.start(
                "local",
                str(home),
                [world.nodes()[0]],
                python=str(world.sandbox.python),
                pip_args=world.sandbox.pip_args,
                restart="auto",
            )
        card = page.locator(f"article.task[data-task-id='{task_id}']")
        expect(card).to_have_attribute("data-state", "completed", timeout=90_000)
        drawn = page.evaluate("(id) => window.__drawnStates[id] || []", task_id)
        assert "restarting" in drawn and drawn[-1] == "completed", drawn
        expect(card).to_have_attribute("data-ready", "ok")
        ready = card.locator(".ready")
        expect(ready).to_contain_text("ComfyUI: restarted by process")
        expect(ready).to_contain_text("every workflow class present")
        assert not errors, errors
        page.close()
    finally:
        comfy_server.end_servers(home)
        server.wait(timeout=10)
