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


STATE_RECORDER = """() => {
  window.__drawnStates = {};
  const record = (el) => {
    const id = el.getAttribute("data-task-id"), state = el.getAttribute("data-state");
    if (!id || !state) return;
    const seen = (window.__drawnStates[id] = window.__drawnStates[id] || []);
    if (seen[seen.length - 1] !== state) seen.push(state);
  };
  new MutationObserver((changes) => {
    for (const change of changes) {
      const nodes = change.type === "attributes" ? [change.target] : [...change.addedNodes];
      for (const node of nodes) {
        if (node.nodeType !== 1) continue;
        if (node.matches("article.task")) record(node);
        node.querySelectorAll("article.task").forEach(record);
      }
    }
  }).observe(document.body, {
    subtree: true, childList: true, attributes: true, attributeFilter: ["data-state"],
  });
  document.querySelectorAll("article.task").forEach(record);
}"""


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

    # Every state a task card shows is recorded as the page renders it, so "it
    # moved" is checked on what was drawn, not on catching a 2 s phase in time.
    page.evaluate(STATE_RECORDER)

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
    # It moves: drawn part-way, then at the end (a long phase is watched while it
    # lasts with the slow node below).
    expect(card).to_have_attribute("data-state", "completed", timeout=90_000)
    task_id = card.get_attribute("data-task-id")
    drawn = page.evaluate("(id) => window.__drawnStates[id] || []", task_id)
    order = ["starting", "cloning", "installing_requirements", "running_install_scripts"]
    part_way = [state for state in drawn if state in order]
    assert part_way, drawn
    assert [order.index(s) for s in part_way] == sorted(order.index(s) for s in part_way), drawn
    assert drawn[-1] == "completed", drawn
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
