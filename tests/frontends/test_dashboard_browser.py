"""The dashboard in a real headless Chromium (Playwright driving Debian's chromium):
load the page, start an install from its form, watch the bar reach the end, cancel
another install, read a log tail; and open it with a token on a guarded controller."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.app import create_app
from controller.client import Client
from tests.frontends.conftest import (
    DemoWorld,
    RunningController,
    controller_settings,
    serve_in_thread,
)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no Chromium at {CHROMIUM}"),
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.mark.timeout(150)
def test_dashboard_starts_follows_and_cancels(
    browser: Any, controller: RunningController, world: DemoWorld, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1100, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(controller.url + "/")
    expect(page).to_have_title("nodeferry")
    expect(page.locator("#connection")).to_have_text("live", timeout=10_000)

    # Start an install from the page's form.
    home = world.new_ui_home(tmp_path / "page")
    page.locator("#start-panel summary").click()
    form = page.locator("#start-form")
    form.locator("[name=ssh_connection]").fill("local")
    form.locator("[name=ui_home]").fill(str(home))
    form.locator("[name=nodes]").fill("\n".join(["# the demo's nodes", *world.nodes()]))
    form.locator("[name=python]").fill(str(world.sandbox.python))
    form.locator("[name=pip_args]").fill(" ".join(world.sandbox.pip_args))
    form.locator("button[type=submit]").click()
    expect(page.locator("#start-message")).to_contain_text("started", timeout=10_000)

    card = page.locator("article.task", has_text=str(home))
    expect(card).to_have_count(1)
    bar = card.locator("[role=progressbar]")
    # It moves: seen part-way (install.py takes ~2 s), then at the end.
    expect(card).to_have_attribute("data-state", "running_install_scripts", timeout=60_000)
    expect(card).to_have_attribute("data-state", "completed", timeout=60_000)
    expect(bar).to_have_attribute("aria-valuenow", "100")
    expect(card.locator(".count")).to_have_text("4/4 nodes · 100%")
    expect(card.locator("tr.node")).to_have_count(4)
    expect(card.locator("tr.node .badge.s-installed")).to_have_count(4)
    expect(card.locator("button.cancel")).to_have_count(0)

    # The log tail.
    card.locator("details.log summary").click()
    expect(card.locator(".log-text")).to_contain_text("install.py: prepared the node")

    # Another install, started elsewhere, shows up by itself; cancel it from the page.
    slow_home = world.new_ui_home(tmp_path / "slow")
    with Client(controller.url) as client:
        slow_id = client.start(
            "local", str(slow_home), [world.slow_node()], python=str(world.sandbox.python)
        )
    slow = page.locator(f"article.task[data-task-id='{slow_id}']")
    expect(slow).to_have_attribute("data-state", "running_install_scripts", timeout=60_000)
    # Newest first.
    expect(page.locator("article.task").first).to_have_attribute("data-task-id", slow_id)
    slow.locator("button.cancel").click()
    expect(slow).to_have_attribute("data-state", "cancelled", timeout=15_000)
    expect(slow.locator(".badge.s-cancelled").first).to_be_visible()
    with Client(controller.url) as client:
        assert client.progress(slow_id)["state"] == "cancelled"

    shot = tmp_path / "nodeferry-dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    assert not errors, errors
    page.close()


@pytest.mark.timeout(60)
def test_dashboard_with_a_token(browser: Any, tmp_path: Path, world: DemoWorld) -> None:
    from playwright.sync_api import expect

    settings = controller_settings(tmp_path)
    settings.token = "s3cret-token"
    with serve_in_thread(create_app(settings), settings) as guarded:
        page = browser.new_page()
        # The page itself is public and asks for the token the API wants.
        opened = page.goto(guarded.url + "/")
        assert opened is not None and opened.status == 200
        expect(page.locator("#token-panel")).to_be_visible(timeout=10_000)
        page.goto(guarded.url + "/?token=s3cret-token")
        expect(page.locator("#connection")).to_have_text("live", timeout=10_000)
        assert "token" not in page.url  # taken out of the address bar
        # The token goes stale (a controller restarted with a new one): the page asks.
        expect(page.locator("#token-panel")).to_be_hidden()
        page.evaluate("token = 'stale'")
        expect(page.locator("#token-panel")).to_be_visible(timeout=10_000)
        page.locator("#token").fill("s3cret-token")
        page.locator("#token-form button").click()
        expect(page.locator("#connection")).to_have_text("live", timeout=10_000)
        page.close()
