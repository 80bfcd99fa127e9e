"""The dashboard in a real headless Chromium (Playwright driving Debian's chromium):
load the page, start an install from its form, watch the bar reach the end, cancel
another install, read a log tail; and open it with a token on a guarded controller."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.api.app import create_app
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

    shot = Path(tempfile.gettempdir()) / "nodeferry-dashboard.png"
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


#: Delays every task listing by 4 s (longer than the page's 3 s listing timer) and
#: records how many were in flight at once.
SLOW_LISTINGS = """
(() => {
  const original = window.fetch.bind(window);
  window.__listings = {started: 0, inFlight: 0, maxInFlight: 0};
  window.fetch = async (input, init) => {
    const url = String(input && input.url ? input.url : input);
    if (!/api\\/tasks(\\?|$)/.test(url)) return original(input, init);
    const stats = window.__listings;
    stats.started += 1;
    stats.inFlight += 1;
    stats.maxInFlight = Math.max(stats.maxInFlight, stats.inFlight);
    try {
      await new Promise((resolve) => setTimeout(resolve, 4000));
      return await original(input, init);
    } finally {
      stats.inFlight -= 1;
    }
  };
})();
"""


@pytest.mark.timeout(150)
def test_dashboard_queue_history_and_one_listing_at_a_time(
    browser: Any, controller: RunningController, world: DemoWorld, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    home = world.new_ui_home(tmp_path / "queued")
    python = str(world.sandbox.python)
    with Client(controller.url) as client:
        holder = client.start("local", str(home), [world.slow_node()], python=python)
        queued = client.start("local", str(home), world.nodes()[:1], python=python, queue=True)

    page = browser.new_page(viewport={"width": 1100, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.add_init_script(SLOW_LISTINGS)
    page.goto(controller.url + "/")
    card = page.locator(f"article.task[data-task-id='{queued}']")
    expect(card).to_have_attribute("data-state", "queued", timeout=30_000)
    expect(card.locator(".queue")).to_contain_text("#1 in line")

    with Client(controller.url) as client:
        client.cancel(holder)
    expect(card).to_have_attribute("data-state", "completed", timeout=60_000)

    # The instance's history: newest first, the install that waited, then the
    # cancelled one it waited for (then whatever else ran on "local").
    card.locator("button.history-link").click()
    panel = page.locator("#history-panel")
    expect(panel).to_be_visible()
    expect(panel.locator("#history-title")).to_have_text("History of local")
    rows = panel.locator("tbody tr")
    expect(rows.first).to_contain_text(queued[:8], timeout=10_000)
    expect(rows.first).to_contain_text(str(home))
    expect(rows.nth(1)).to_contain_text(holder[:8])
    expect(rows.nth(1)).to_contain_text("cancelled")

    # Listings slower than the timer never overlap.
    # (Polled from here: the page's CSP forbids wait_for_function's eval.)
    deadline = time.monotonic() + 60
    stats = page.evaluate("window.__listings")
    while stats["started"] < 3:
        assert time.monotonic() < deadline, stats
        page.wait_for_timeout(250)
        stats = page.evaluate("window.__listings")
    assert stats["maxInFlight"] == 1, stats
    assert not errors, errors
    page.close()
