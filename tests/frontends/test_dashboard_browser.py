"""The dashboard in a real headless Chromium (Playwright driving Debian's chromium):
load the page, start an install from its form, watch the bar reach the end, cancel
another install, read a log tail; open it with a token on a guarded controller;
and follow more installs over real sshd than a browser opens connections per host,
a fleet among them, through one WebSocket."""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.api.app import create_app
from controller.client import Client
from controller.common.config import load_settings
from controller.sandbox.comfy import make_comfy_home
from controller.sandbox.gitserver import GitServer
from tests.frontends.conftest import (
    REFRESH_INTERVAL,
    DemoWorld,
    RunningController,
    cancel_unfinished,
    controller_settings,
    serve_in_thread,
    wait_until,
)
from tests.support.sshd import SshServer, make_key

CHROMIUM = "/usr/bin/chromium"
REBIND_HOST = "rebind.attacker.example"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    # A DNS-rebinding attacker's name that resolves to loopback, without DNS.
    f"--host-resolver-rules=MAP {REBIND_HOST} 127.0.0.1",
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
    page.goto(f"{controller.url}/#token={controller.token}")
    expect(page).to_have_title("nodeferry")
    assert "token" not in page.url  # taken out of the address bar
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
    with Client(controller.url, token=controller.token) as client:
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
    with Client(controller.url, token=controller.token) as client:
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
        page.close()
        page = browser.new_page()
        page.goto(guarded.url + "/#token=s3cret-token")
        expect(page.locator("#connection")).to_have_text("live", timeout=10_000)
        assert "token" not in page.url  # taken out of the address bar
        # Kept for the tab: a reload still works.
        page.reload()
        expect(page.locator("#connection")).to_have_text("live", timeout=10_000)
        # The token goes stale (a controller restarted with a new one): the page asks.
        expect(page.locator("#token-panel")).to_be_hidden()
        # The socket drops and comes back with the stale token: refused, so it asks.
        page.evaluate("token = 'stale'; socket.close()")
        expect(page.locator("#token-panel")).to_be_visible(timeout=10_000)
        page.locator("#token").fill("s3cret-token")
        page.locator("#token-form button").click()
        expect(page.locator("#connection")).to_have_text("live", timeout=10_000)
        page.close()


@pytest.mark.timeout(90)
def test_dashboard_takes_a_dropped_png_workflow(browser: Any, tmp_path: Path) -> None:
    """A PNG ComfyUI saved (zTXt chunk) is read in the page and sent as ``workflow``;
    with ``strict`` the controller's resolver, on the real 4.3 database, refuses the
    unknown class and the page shows why. Nothing is installed."""
    import json
    import zlib

    from playwright.sync_api import expect

    from tests.controller.test_sources_resolve import png_with_text, ui_workflow
    from tests.support import nodedb

    settings = controller_settings(tmp_path)
    settings.node_db = nodedb.ready(tmp_path / "node-db")
    settings.online_lookups = False
    image = png_with_text(
        [(b"zTXt", b"workflow\0\0" + zlib.compress(json.dumps(ui_workflow()).encode()))]
    )
    with serve_in_thread(create_app(settings), settings) as running:
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"{running.url}/#token={running.token}")
        page.locator("#start-panel summary").click()
        form = page.locator("#start-form")
        form.locator("[name=ssh_connection]").fill("local")
        form.locator("[name=ui_home]").fill(str(tmp_path / "ComfyUI"))
        form.locator("[name=workflow]").set_input_files(
            files=[{"name": "ComfyUI_00001_.png", "mimeType": "image/png", "buffer": image}]
        )
        expect(page.locator("#workflow-status")).to_contain_text("12 nodes", timeout=10_000)
        form.locator("[name=strict]").check()
        form.locator("button[type=submit]").click()
        message = page.locator("#start-message")
        expect(message).to_contain_text("TotallyUnknownNode9000", timeout=10_000)
        expect(message).to_contain_text("strict")
        with Client(running.url, token=running.token) as client:
            assert client.tasks() == []


#: install.py that waits until ``<ui_home>/release`` exists, so every install is
#: held running until the page has shown them all running at once.
GATED_INSTALL_PY = """\
import sys
import time
from pathlib import Path
deadline = time.monotonic() + 120
while not Path("../../release").exists():
    if time.monotonic() > deadline:
        sys.exit("never released")
    time.sleep(0.05)
"""
#: More than the six connections per host a browser opens over HTTP/1.1.
LIVE_INSTALLS = 8
FLEET_INSTANCES = 5


@pytest.fixture
def ssh_controller(tmp_path: Path) -> Iterator[tuple[RunningController, SshServer]]:
    key = make_key(tmp_path / "client_key")
    with SshServer(tmp_path / "sshd", client_key=key) as sshd:
        settings = load_settings(
            environ={},
            overrides={
                "data_dir": tmp_path / "data",
                "ssh_keys": [key],
                "use_ssh_agent": False,
                "known_hosts": tmp_path / "data" / "known_hosts",
                "remote_state_dir": str(tmp_path / "remote-state"),
                "refresh_interval": REFRESH_INTERVAL,
            },
        )
        with serve_in_thread(create_app(settings), settings) as running:
            try:
                yield running, sshd
            finally:
                cancel_unfinished(running.url, running.token)


@pytest.mark.timeout(240)
def test_dashboard_follows_more_installs_than_connections_per_host(
    browser: Any, ssh_controller: tuple[RunningController, SshServer], tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    controller, sshd = ssh_controller
    with GitServer(tmp_path / "gitd") as git_server:
        gated = git_server.add_repo(
            "ComfyUI-Gated",
            {"__init__.py": "NODE_CLASS_MAPPINGS = {}\n", "install.py": GATED_INSTALL_PY},
        )
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        errors: list[str] = []
        requests: list[str] = []
        sockets: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("request", lambda request: requests.append(request.url))
        page.on("websocket", lambda ws: sockets.append(ws.url))
        page.goto(f"{controller.url}/#token={controller.token}")
        expect(page.locator("#connection")).to_have_text("live", timeout=10_000)

        homes = [
            make_comfy_home(tmp_path / f"home-{i}", with_venv=False).root
            for i in range(LIVE_INSTALLS)
        ]
        with Client(controller.url, token=controller.token) as client:
            alone = [
                client.start(
                    sshd.connection_string(), str(home), [gated.url], python=sys.executable
                )
                for home in homes[FLEET_INSTANCES:]
            ]
            fleet = client.start_fleet(
                [
                    {"ssh_connection": sshd.connection_string(), "ui_home": str(home)}
                    for home in homes[:FLEET_INSTANCES]
                ],
                [gated.url],
                python=sys.executable,
            )
        members = [t["task_id"] for t in fleet["tasks"]]
        assert all(members)

        # Every install shows up and is seen running, all at the same time.
        running = page.locator("article.task[data-state='running_install_scripts']")
        expect(running).to_have_count(LIVE_INSTALLS, timeout=120_000)
        # The fleet is one card holding its members; the others stand alone.
        fleet_card = page.locator(f"article.fleet[data-fleet-id='{fleet['fleet_id']}']")
        expect(fleet_card.locator("article.task")).to_have_count(FLEET_INSTANCES)
        expect(fleet_card.locator(".target").first).to_have_text(
            f"fleet · {FLEET_INSTANCES} instances"
        )
        for task_id in alone:
            expect(page.locator(f"#tasks > article.task[data-task-id='{task_id}']")).to_have_count(
                1
            )

        for home in homes:
            (home / "release").write_text("go")
        done = page.locator("article.task[data-state='completed'][data-success='true']")
        expect(done).to_have_count(LIVE_INSTALLS, timeout=120_000)
        expect(page.locator("article.task [role=progressbar][aria-valuenow='100']")).to_have_count(
            LIVE_INSTALLS
        )
        expect(fleet_card).to_have_attribute("data-state", "completed", timeout=10_000)
        expect(fleet_card.locator(".fleet-count.c-completed")).to_have_text(
            f"{FLEET_INSTANCES} completed"
        )
        # One socket carried all of it: no event stream and no progress poll was opened.
        assert len(sockets) == 1 and sockets[0].endswith("/api/ws"), sockets
        assert not [u for u in requests if "/events" in u or "/progress" in u], requests
        assert not errors, errors
        page.close()


@contextlib.contextmanager
def hostile_site(root: Path) -> Iterator[str]:
    """A plain web page on another origin (``localhost``, another port)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "index.html").write_text("<!doctype html><title>a page elsewhere</title>")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


ATTACK = """async ([url, body]) => {
  await fetch(url, {method: "POST", mode: "no-cors", body: JSON.stringify(body)});
  return "sent";
}"""


@pytest.mark.timeout(90)
def test_other_sites_and_rebinding_start_nothing(
    browser: Any, controller: RunningController, world: DemoWorld, tmp_path: Path
) -> None:
    home = world.new_ui_home(tmp_path)
    body = {"ssh_connection": "local", "ui_home": str(home), "nodes": world.nodes()[:1]}
    with Client(controller.url, token=controller.token) as client:
        before = {task["task_id"] for task in client.tasks()}
    refused = controller.stats.snapshot()["refused_requests"]
    page = browser.new_page()
    with hostile_site(tmp_path / "site") as site:
        page.goto(site)
        # A "simple" cross-origin POST (text/plain, no preflight): the browser sends
        # it and shows the page nothing; the controller must not act on it.
        assert page.evaluate(ATTACK, [controller.url + "/ssh/install-custom-nodes", body]) == "sent"
        wait_until(
            lambda: controller.stats.snapshot()["refused_requests"] > refused, 10, "the refusal"
        )
    # DNS rebinding: the attacker's name now points at 127.0.0.1, so its page is
    # "same-origin" with the controller. The Host header gives it away.
    port = controller.url.rsplit(":", 1)[1]
    rebound = f"http://{REBIND_HOST}:{port}"
    opened = page.goto(rebound + "/")
    assert opened is not None and opened.status == 421
    listing = page.evaluate("async (url) => (await fetch(url)).status", rebound + "/api/tasks")
    assert listing == 421
    assert page.evaluate(ATTACK, [rebound + "/ssh/install-custom-nodes", body]) == "sent"
    page.close()
    assert controller.stats.snapshot()["refused_requests"] >= refused + 4
    with Client(controller.url, token=controller.token) as client:
        assert {task["task_id"] for task in client.tasks()} == before
    assert not list((home / "custom_nodes").iterdir())


@pytest.mark.timeout(150)
def test_dashboard_queue_history_and_no_listing_polls(
    browser: Any, controller: RunningController, world: DemoWorld, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    home = world.new_ui_home(tmp_path / "queued")
    python = str(world.sandbox.python)
    with Client(controller.url, token=controller.token) as client:
        holder = client.start("local", str(home), [world.slow_node()], python=python)
        queued = client.start("local", str(home), world.nodes()[:1], python=python, queue=True)

    page = browser.new_page(viewport={"width": 1100, "height": 900})
    errors: list[str] = []
    requests: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("request", lambda request: requests.append(request.url))
    page.goto(f"{controller.url}/#token={controller.token}")
    card = page.locator(f"article.task[data-task-id='{queued}']")
    expect(card).to_have_attribute("data-state", "queued", timeout=30_000)
    expect(card.locator(".queue")).to_contain_text("#1 in line")

    with Client(controller.url, token=controller.token) as client:
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

    # The task list comes over the WebSocket (the server computes one listing at a
    # time for every page): the page itself never polls the listing.
    assert not [u for u in requests if "/api/tasks?" in u or u.endswith("/api/tasks")], requests
    assert not errors, errors
    page.close()


@pytest.mark.timeout(150)
def test_dashboard_plans_shows_the_table_and_applies_it(
    browser: Any, controller: RunningController, world: DemoWorld, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1100, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{controller.url}/#token={controller.token}")
    expect(page.locator("#connection")).to_have_text("live", timeout=10_000)
    home = world.new_ui_home(tmp_path / "planned")
    page.locator("#start-panel summary").click()
    form = page.locator("#start-form")
    form.locator("[name=ssh_connection]").fill("local")
    form.locator("[name=ui_home]").fill(str(home))
    form.locator("[name=nodes]").fill("\n".join(world.nodes()))
    form.locator("[name=python]").fill(str(world.sandbox.python))
    form.locator("[name=pip_args]").fill(" ".join(world.sandbox.pip_args))
    form.locator("button[name=plan]").click()
    expect(page.locator("#start-message")).to_contain_text("started", timeout=10_000)

    card = page.locator("article.task", has_text=str(home)).first
    expect(card).to_have_attribute("data-state", "completed", timeout=90_000)
    expect(card.locator("tr.plan-node")).to_have_count(len(world.nodes()))
    expect(card.locator("tr.plan-node.a-new")).to_have_count(len(world.nodes()))
    expect(card.locator(".plan-interpreter")).to_contain_text(str(world.sandbox.python))
    assert list((home / "custom_nodes").iterdir()) == []  # the plan changed nothing

    plan_id = card.get_attribute("data-task-id")
    card.locator("button.apply").click()
    applied = page.locator("article.task").first
    expect(applied).not_to_have_attribute("data-task-id", str(plan_id), timeout=10_000)
    expect(applied).to_have_attribute("data-state", "completed", timeout=90_000)
    expect(applied.locator("tr.node .badge.s-installed")).to_have_count(len(world.nodes()))
    assert len(list((home / "custom_nodes").iterdir())) == len(world.nodes())
    assert not errors, errors
    page.close()
