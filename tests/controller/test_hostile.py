"""Hostile and malformed input: each answered 4xx with a message naming the field,
and nothing run on the instance (the instance's sshd log proves it: not one login,
not one session)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from controller.sandbox.comfy import NODE_INIT, ComfyHome
from controller.sandbox.gitserver import GitServer
from controller.transports.local import LocalTransport
from tests.controller.conftest import (
    AppFactory,
    NodeRepos,
    comfy_home,
    install_body,
    make_settings,
    poll,
    start_install,
    wait_final,
    wait_for,
)
from tests.support.sshd import SshServer

pytestmark = pytest.mark.timeout(60)

MARKER = "/tmp/nodeferry-pwned-marker"

GOOD_URL = "https://github.com/ltdrdata/ComfyUI-Manager"


def _hostile_bodies(ssh: str, home: str) -> list[tuple[str, dict[str, Any], str]]:
    base = {"ssh_connection": ssh, "ui_home": home, "nodes": [GOOD_URL]}
    cases: list[tuple[str, dict[str, Any], str]] = []
    for ui_home in (
        f"{home}; touch {MARKER}",
        f"{home}$(touch {MARKER})",
        f"{home}`touch {MARKER}`",
        f"{home}\ntouch {MARKER}",
        f"{home}' ; touch {MARKER}; '",
        f'{home}" ; touch {MARKER}; "',
        f"{home}/../../etc",
        "../../etc",
        "/wörkspace/ComfyUI",
        "",
    ):
        cases.append(("ui_home " + repr(ui_home), {**base, "ui_home": ui_home}, "ui_home"))
    for node in (
        f"ext::sh -c touch% {MARKER}",
        f"--upload-pack=touch {MARKER}",
        f"-uhttps://x/{MARKER}",
        "file:///etc",
        "https://github.com/a/b;touch",
        "https://github.com/a/b c",
        "https://github.com/a/ünïcode",
        "https://github.com/a/b@$(touch)",
        "https://github.com/a/b\n",
        {"url": GOOD_URL, "name": "../../evil"},
        {"url": GOOD_URL, "ref": "--output=/etc/x"},
        # ssh would read a user that starts with '-' as an option.
        f"ssh://-oProxyCommand=touch%20{MARKER}@github.com/a/b",
        "ssh://%2DoProxyCommand=x@github.com/a/b",
        "ssh://-x:pw@github.com/a/b",
        "ssh://git@-oProxyCommand=x/a/b",
        "-oProxyCommand=x@github.com:a/b",
        "ssh://git@github.com:\u00b2/a/b",
        "https://github.com:99999999999999999999/a/b",
    ):
        cases.append(("node " + repr(node), {**base, "nodes": [node]}, "nodes.0"))
    cases += [
        (
            "ssh injection",
            {**base, "ssh_connection": f"root@127.0.0.1 touch {MARKER}"},
            "ssh_connection",
        ),
        (
            "ssh proxycommand",
            {**base, "ssh_connection": f"-oProxyCommand=touch {MARKER}"},
            "ssh_connection",
        ),
        ("python injection", {**base, "python": f"python3; touch {MARKER}"}, "python"),
        ("pip injection", {**base, "pip_args": [f"--index-url=x;touch {MARKER}"]}, "pip_args.0"),
        ("pip option", {**base, "pip_args": ["--target", "/etc"]}, "pip_args.0"),
        ("jobs type", {**base, "jobs": "4; touch"}, "jobs"),
        ("update type", {**base, "update": "true"}, "update"),
        ("nodes type", {**base, "nodes": "https://github.com/a/b"}, "nodes"),
        ("unknown field", {**base, "script": "touch"}, "script"),
        ("missing ui_home", {"ssh_connection": ssh, "nodes": [GOOD_URL]}, "ui_home"),
        ("too many nodes", {**base, "nodes": [f"https://h/a/n{i}" for i in range(501)]}, "nodes"),
    ]
    return cases


async def test_hostile_install_requests_run_nothing(
    client: Any, sshd: SshServer, home: ComfyHome
) -> None:
    marker = Path(MARKER)
    marker.unlink(missing_ok=True)  # noqa: ASYNC240
    for name, body, field in _hostile_bodies(sshd.connection_string(), str(home.root)):
        response = await client.post("/ssh/install-custom-nodes", json=body)
        payload = await response.json()
        assert response.status == 400, (name, payload)
        assert payload["success"] is False, name
        assert payload["error"] == "invalid_request", name
        assert payload["field"].startswith(field), (name, payload)
        assert payload["message"].startswith(payload["field"]), (name, payload)
    listing = await (await client.get("/api/tasks")).json()
    assert listing["tasks"] == []
    for prefix in ("../etc", "abc xyz", "g" * 6, "a" * 37):
        refused = await client.get("/api/tasks", params={"prefix": prefix})
        assert refused.status == 400, prefix
        assert (await refused.json())["field"] == "prefix"
    assert sshd.accepted_count() == 0
    assert sshd.session_count() == 0
    assert not marker.exists()  # noqa: ASYNC240
    assert home.node_dirs() == []


@pytest.mark.parametrize(
    "task_id",
    [
        "../../etc/passwd",
        "3f2b8e0a-5c1d-4e7f-9a2b-1c3d5e7f9a2b/../../x",
        "6ba7b810-9dad-11d1-80b4-00c04fd430c8",  # a UUID, but version 1
        "3F2B8E0A-5C1D-4E7F-9A2B-1C3D5E7F9A2B",
        "",
        "\u202e3f2b8e0a",
        7,
        None,
    ],
)
async def test_hostile_task_ids(client: Any, sshd: SshServer, task_id: Any) -> None:
    response = await client.post(
        "/ssh/install-custom-nodes/progress",
        json={"task_id": task_id, "ssh_connection": sshd.connection_string()},
    )
    payload = await response.json()
    assert response.status == 400, payload
    assert payload["field"] == "task_id"
    if isinstance(task_id, str) and task_id and "/" not in task_id:
        for path in (f"/api/tasks/{task_id}", f"/api/tasks/{task_id}/log"):
            answer = await client.get(path)
            assert answer.status == 400, path
            assert (await answer.json())["field"] == "task_id"
        answer = await client.post(f"/api/tasks/{task_id}/cancel")
        assert answer.status == 400
    assert sshd.accepted_count() == 0


async def test_traversal_in_the_url_path(client: Any) -> None:
    for path in ("/api/tasks/..%2F..%2Fetc%2Fpasswd", "/api/tasks/%2e%2e/log"):
        response = await client.get(path)
        assert response.status in (400, 404)
        body = await response.json()
        assert body["success"] is False


async def test_malformed_and_huge_bodies(client: Any, sshd: SshServer) -> None:
    cases = [
        (b"{not json", 400, "not valid JSON"),
        (b"", 400, "empty"),
        (b"[1, 2]", 400, "JSON object"),
        (b'"a string"', 400, "JSON object"),
        (b"\xff\xfe\x00garbage", 400, "UTF-8"),
        (json.dumps({"x": "y" * (2 * 1024 * 1024)}).encode(), 413, "larger than"),
    ]
    for raw, status, fragment in cases:
        response = await client.post(
            "/ssh/install-custom-nodes", data=raw, headers={"Content-Type": "application/json"}
        )
        payload = await response.json()
        assert response.status == status, (raw[:20], payload)
        assert payload["success"] is False
        assert fragment in payload["message"], payload
    deep = b"[" * 100000 + b"]" * 100000
    response = await client.post(
        "/ssh/install-custom-nodes/progress",
        data=deep,
        headers={"Content-Type": "application/json"},
    )
    assert response.status == 400
    assert sshd.accepted_count() == 0


async def test_unicode_that_is_fine_is_accepted_where_allowed(
    client: Any, sshd: SshServer, home: ComfyHome, git_server: GitServer
) -> None:
    # Directory names and URLs stay ASCII by design, and the refusal says the way
    # out: a percent-encoded URL and an ASCII name. That form is accepted, and git
    # fetches the repository whose real name is not ASCII.
    unique = uuid.uuid4().hex[:8]
    repo = git_server.add_repo(f"ComfyUI-Ünï-{unique}", {"__init__.py": NODE_INIT})
    refused = await client.post(
        "/ssh/install-custom-nodes",
        json=install_body(sshd.connection_string(), home, [{"url": repo.url, "name": "Plain"}]),
    )
    payload = await refused.json()
    assert refused.status == 400
    assert payload["field"] == "nodes.0.url"
    assert "percent-encode" in payload["message"]
    named = await client.post(
        "/ssh/install-custom-nodes",
        json=install_body(
            sshd.connection_string(),
            home,
            [{"url": f"{git_server.base_url}/ComfyUI-Plain", "name": "Plain_ünï"}],
        ),
    )
    assert named.status == 400
    assert (await named.json())["field"] == "nodes.0.name"
    assert sshd.session_count() == 0

    encoded = f"{git_server.base_url}/{quote(repo.name)}"
    assert encoded.isascii()
    task_id = await start_install(
        client,
        install_body(sshd.connection_string(), home, [{"url": encoded, "name": "ComfyUI-Uni"}]),
    )
    final = await wait_final(client, task_id)
    assert final["state"] == "completed", final
    assert final["nodes"][0]["status"] == "installed"
    assert final["nodes"][0]["commit"] == repo.head
    assert (home.custom_nodes / "ComfyUI-Uni" / "__init__.py").exists()


async def test_error_bodies_for_routing(client: Any) -> None:
    missing = await client.get("/no/such/page")
    assert missing.status == 404
    assert (await missing.json())["error"] == "not_found"
    wrong_method = await client.get("/ssh/install-custom-nodes")
    assert wrong_method.status == 405
    assert (await wrong_method.json())["error"] == "method_not_allowed"


@pytest.mark.parametrize(
    "query",
    [
        "offset=%C2%B2",  # '²' passes isdigit(), int() refuses it
        "offset=" + "9" * 5000,  # past int()'s digit limit
        "offset=%D9%A3",  # an Arabic-Indic three
        "offset=-1",
        "offset=1e3",
        "offset=",
        "limit=%C2%B2",
        "limit=" + "1" * 40,
    ],
)
async def test_hostile_log_queries(client: Any, query: str) -> None:
    response = await client.get(f"/api/tasks/{uuid.uuid4()}/log?{query}")
    payload = await response.json()
    assert response.status == 400, payload
    assert payload["field"] in ("offset", "limit")
    assert "whole number" in payload["message"]


async def _raw_request(client: Any, head: bytes) -> tuple[int, dict[str, Any]]:
    """Send bytes no HTTP client library would (say, a non-UTF-8 header)."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(head)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    status_line, _, rest = raw.partition(b"\r\n")
    body = rest.split(b"\r\n\r\n", 1)[1]
    return int(status_line.split()[1]), json.loads(body)


@pytest.mark.parametrize(
    "authorization",
    [b"Bearer \xff\xfe", b"Bearer \xc3\xa9t\xc3\xa9", b"bEaReR \x80", b"\xff", b"Bearer"],
)
async def test_undecodable_authorization_is_401(client: Any, authorization: bytes) -> None:
    head = (
        b"GET /api/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"Authorization: " + authorization + b"\r\n\r\n"
    )
    status, payload = await _raw_request(client, head)
    assert status == 401, payload
    assert "Authorization: Bearer" in payload["message"]


async def test_requests_from_other_sites_are_refused(
    client: Any, sshd: SshServer, home: ComfyHome
) -> None:
    body = json.dumps(
        {"ssh_connection": sshd.connection_string(), "ui_home": str(home.root), "nodes": [GOOD_URL]}
    )
    cases = [
        ({"Host": "rebind.attacker.example"}, 421, "allowed_hosts"),
        ({"Host": "rebind.attacker.example:8765"}, 421, "allowed_hosts"),
        ({"Host": "127.0.0.1.attacker.example"}, 421, "allowed_hosts"),
        ({"Origin": "http://attacker.example"}, 403, "web page"),
        ({"Origin": "null"}, 403, "web page"),
        ({"Origin": "http://127.0.0.1:1"}, 403, "web page"),
        ({"Sec-Fetch-Site": "cross-site"}, 403, "other web sites"),
        ({"Sec-Fetch-Site": "same-site"}, 403, "other web sites"),
        ({"Content-Type": "text/plain"}, 415, "application/json"),
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "application/json"),
        ({"Content-Type": "multipart/form-data; boundary=x"}, 415, "application/json"),
    ]
    for headers, status, fragment in cases:
        sent = {"Content-Type": "application/json", **headers}
        response = await client.post("/ssh/install-custom-nodes", data=body, headers=sent)
        payload = await response.json()
        assert response.status == status, (headers, payload)
        assert payload["success"] is False and fragment in payload["message"], (headers, payload)
    for headers, status, _ in cases[:3]:
        response = await client.get("/api/tasks", headers=headers)
        assert response.status == status, headers
    # The same request from the controller's own origin goes through the guard.
    own = await client.get("/api/tasks", headers={"Origin": str(client.make_url("")).rstrip("/")})
    assert own.status == 200
    assert (await (await client.get("/api/tasks")).json())["tasks"] == []
    assert sshd.accepted_count() == 0


async def test_allowed_hosts_admit_a_reverse_proxy_name(
    make_client: Any, tmp_path: Path, client_key: Path
) -> None:
    client = await make_client(
        make_settings(tmp_path, client_key, allowed_hosts=["nodeferry.internal"])
    )
    ok = await client.get(
        "/api/tasks",
        headers={"Host": "nodeferry.internal", "Origin": "https://nodeferry.internal"},
    )
    assert ok.status == 200
    assert (await client.get("/api/tasks", headers={"Host": "other.internal"})).status == 421


#: A pattern that makes a backtracking matcher take exponential time in the
#: class name's length: ``(a|aa)+`` has Fibonacci-many ways to split a run of
#: ``a``, and the final ``b`` makes each of them fail.
HOSTILE_PATTERN = "^(a|aa)+$"
HOSTILE_CLASS = "a" * 127 + "b"  # 128 characters: the longest class that is matched


def _hostile_manager_db(home: ComfyHome, pack_url: str) -> None:
    manager = home.root / "custom_nodes" / "ComfyUI-Manager"
    manager.mkdir(parents=True)
    node_map = {pack_url: [["SomeClass"], {"nodename_pattern": HOSTILE_PATTERN}]}
    (manager / "extension-node-map.json").write_text(json.dumps(node_map))


async def test_a_backtracking_pattern_from_the_instance_stalls_nothing(
    client: Any, sshd: SshServer, home: ComfyHome, node_repos: Any
) -> None:
    from tests.controller.test_sources_resolve import ui_node

    _hostile_manager_db(home, node_repos.plain.url)
    workflow = {"nodes": [ui_node(1, HOSTILE_CLASS), ui_node(2, "aaaa")], "links": []}
    body = {"ssh_connection": sshd.connection_string(), "ui_home": str(home.root)}

    async def healthz_latencies(stop: asyncio.Event) -> list[float]:
        latencies = []
        while not stop.is_set():
            started = asyncio.get_running_loop().time()
            response = await client.get("/healthz")
            assert response.status == 200
            latencies.append(asyncio.get_running_loop().time() - started)
            await asyncio.sleep(0.05)
        return latencies

    stop = asyncio.Event()
    prober = asyncio.create_task(healthz_latencies(stop))
    try:
        started = asyncio.get_running_loop().time()
        response = await asyncio.wait_for(
            client.post("/api/resolve", json={**body, "workflow": workflow}), 30
        )
        elapsed = asyncio.get_running_loop().time() - started
        answer = await response.json()
    finally:
        stop.set()
        latencies = await prober
    assert response.status == 200, answer
    assert answer["node_db"].endswith("custom_nodes/ComfyUI-Manager")
    # The pattern still works for what it matches, and the hostile name is unresolved.
    assert [n["url"] for n in answer["nodes"]] == [node_repos.plain.url]
    assert answer["nodes"][0]["rule"] == "nodename_pattern"
    assert answer["unresolved"] == [HOSTILE_CLASS]
    assert elapsed < 10, elapsed
    assert latencies and max(latencies) < 2.0, latencies
    # A start with the same workflow takes the same path and answers at once.
    start = await asyncio.wait_for(
        client.post(
            "/ssh/install-custom-nodes",
            json={**body, "workflow": workflow, "python": sys.executable},
        ),
        30,
    )
    assert start.status == 202, await start.json()
    final = await wait_final(client, (await start.json())["task_id"])
    assert final["state"] == "completed", final


async def test_a_fifo_on_the_instance_stays_that_tasks_trouble(
    make_client: AppFactory,
    tmp_path: Path,
    client_key: Path,
    sshd: SshServer,
    home: ComfyHome,
    node_repos: NodeRepos,
) -> None:
    # A short command timeout: a read that blocked would show within seconds.
    client = await make_client(make_settings(tmp_path, client_key, command_timeout=5.0))
    ssh = sshd.connection_string()
    held = await start_install(client, install_body(ssh, home, [node_repos.gated.url]))
    await wait_for(
        client, held, lambda s, b: s == 200 and b.get("state") == "running_install_scripts"
    )
    task_dir = tmp_path / "remote-state" / "tasks" / held
    worker = json.loads((task_dir / "progress.json").read_text())["pid"]
    os.kill(worker, signal.SIGSTOP)  # holds the FIFO in place of its document
    try:
        (task_dir / "progress.json").unlink()
        os.mkfifo(task_dir / "progress.json")
        loop = asyncio.get_running_loop()
        began = loop.time()
        status, body = await wait_for(client, held, lambda s, _b: s != 200, timeout=20)
        assert loop.time() - began < 4, loop.time() - began
        assert status == 502, body
        assert body["error"] == "unreadable_progress", body
        assert "not a regular file" in body["message"]
        assert body["stale"] is True and body["state"] == "running_install_scripts"
        # The same host serves another task meanwhile, at its usual pace.
        other_home = comfy_home(tmp_path / "ComfyUI-other")
        began = loop.time()
        other = await start_install(client, install_body(ssh, other_home, [node_repos.plain.url]))
        final = await wait_final(client, other, timeout=30)
        assert final["state"] == "completed", final
        log = await client.get(f"/api/tasks/{other}/log")
        assert log.status == 200
        assert loop.time() - began < 20, loop.time() - began
        # A FIFO in place of a log is never opened either: it answers at once.
        other_log = tmp_path / "remote-state" / "tasks" / other / "agent.log"
        other_log.unlink()
        os.mkfifo(other_log)
        began = loop.time()
        answered = await client.get(f"/api/tasks/{other}/log")
        assert loop.time() - began < 4
        assert answered.status in (200, 502)
        if answered.status == 200:  # its size is 0: nothing to read, nothing opened
            assert (await answered.json())["data"] == ""
        else:
            assert (await answered.json())["error"] == "not_a_regular_file"
        assert (await client.get("/healthz")).status == 200
        status, body = await poll(client, held)
        assert status == 502 and body["error"] == "unreadable_progress"
    finally:
        os.kill(worker, signal.SIGCONT)
        (home.root / "release").touch()
    # The worker's next atomic write replaces the FIFO: the task ends as it should.
    final = await wait_final(client, held)
    assert final["state"] == "completed", final


def test_the_local_transport_never_opens_a_fifo(tmp_path: Path, settings: Any) -> None:
    from controller.common.errors import NotRegularFile
    from controller.common.stats import Stats

    transport = LocalTransport(settings, Stats(), b"", "0" * 64)
    root = Path(transport.state_dir())
    root.mkdir(parents=True)
    os.mkfifo(root / "fifo")
    (root / "plain").write_bytes(b"hello")
    with pytest.raises(NotRegularFile):
        transport.read("fifo")
    with pytest.raises(NotRegularFile):
        transport.read_absolute(str(root / "fifo"), 10)
    assert transport.read_absolute(str(root), 10) is None  # a directory: no such file
    assert transport.read("plain", 1, 3) == b"ell"


def _served_controller(tmp_path: Path, nofile: int, **settings: str) -> tuple[Any, int, Path]:
    """``nodeferry serve`` as a real process whose open-file limit is ``nofile``
    (soft and hard: systemd's default is 1024)."""
    import resource
    import socket
    import subprocess

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    env = {k: v for k, v in os.environ.items() if not k.startswith("NODEFERRY_")}
    env.update({f"NODEFERRY_{k.upper()}": v for k, v in settings.items()})
    env["NODEFERRY_DATA_DIR"] = str(tmp_path / "data")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    log = tmp_path / "serve.log"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "controller", "serve", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=limit,
        )
    return process, port, log


async def _healthz(port: int, timeout: float) -> int:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        head = await asyncio.wait_for(reader.readline(), timeout)
        return int(head.split()[1])
    finally:
        writer.close()


@pytest.mark.timeout(120)
async def test_half_open_connections_cost_nothing(tmp_path: Path) -> None:
    from tests.support.procs import end_process

    idle = 3.0
    process, port, log = _served_controller(
        tmp_path, 1024, client_idle_timeout=str(idle), max_client_connections="1000"
    )
    held: list[asyncio.StreamWriter] = []
    readers: list[asyncio.StreamReader] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while True:
            try:
                assert await _healthz(port, 2) == 200
                break
            except OSError:
                assert process.poll() is None, log.read_text(errors="replace")
                assert loop.time() < deadline, "serve never answered"
                await asyncio.sleep(0.1)
        # More half-sent requests than the process has file descriptors.
        for _ in range(1100):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /api/tas")
            held.append(writer)
            readers.append(reader)
        # Those past the cap are answered and closed at once (a reset, here).
        await asyncio.gather(*(w.drain() for w in held), return_exceptions=True)
        began = loop.time()
        # Past the cap, a connection is answered 503 at once, not left hanging.
        refused = await _healthz(port, 5)
        assert refused in (200, 503)
        # Within the idle timeout the half-open ones are closed by the server
        # (while this end still holds them), and /healthz answers again.
        while True:
            try:
                if await _healthz(port, 2) == 200:
                    break
            except (OSError, TimeoutError):
                pass
            assert loop.time() - began < idle + 10, "healthz never answered again"
            await asyncio.sleep(0.2)

        # Every one of them is closed by the server: those still in the listen
        # backlog were accepted late, so each gets its own idle timeout.
        async def closed_by_server(reader: asyncio.StreamReader) -> bool:
            with contextlib.suppress(ConnectionResetError):
                await reader.read()
            return True

        closed = await asyncio.wait_for(
            asyncio.gather(*(closed_by_server(r) for r in readers)), 2 * idle + 15
        )
        assert len(closed) == len(readers)
        assert process.poll() is None
        text = log.read_text(errors="replace")
        assert "Too many open files" not in text, text[-2000:]
        assert len(os.listdir(f"/proc/{process.pid}/fd")) < 200
    finally:
        for writer in held:
            writer.close()
        end_process(process)


def _gone(pid: int) -> bool:
    """The process has exited (a zombie not yet reaped counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2 :].startswith("Z")


@pytest.mark.timeout(120)
async def test_lost_ends_what_the_dead_worker_started(
    client: Any, sshd: SshServer, home: ComfyHome, node_repos: NodeRepos
) -> None:
    from agent.liveness import cmdline, task_processes

    ssh = sshd.connection_string()
    task_id = await start_install(client, install_body(ssh, home, [node_repos.gated.url]))
    _, running = await wait_for(
        client, task_id, lambda s, b: s == 200 and b.get("state") == "running_install_scripts"
    )
    scripts = [
        pid for pid in task_processes(task_id) if any("install.py" in a for a in cmdline(pid) or [])
    ]
    assert len(scripts) == 1, scripts
    # Only the worker dies: its install.py leads its own session and lives on.
    os.kill(running["pid"], signal.SIGKILL)
    final = await wait_final(client, task_id, timeout=60)
    assert final["state"] == "lost", final
    # By the time the task reads lost, what it started is gone too.
    assert _gone(scripts[0]), scripts
    assert [p for p in task_processes(task_id) if not _gone(p)] == []
    # The home is free again, for one writer: the next install runs alone.
    (home.root / "release").touch()
    again = await start_install(client, install_body(ssh, home, [node_repos.plain.url]))
    assert (await wait_final(client, again))["state"] == "completed"
    assert not (home.custom_nodes / "ComfyUI-Gated" / "released.marker").exists()


def test_a_home_stays_busy_while_a_dead_tasks_processes_run(tmp_path: Path) -> None:
    import subprocess

    from agent import lock

    old, new = str(uuid.uuid4()), str(uuid.uuid4())
    locks = tmp_path / "locks"
    locks.mkdir()
    # The old task's worker took the lock and died (its descriptor closed) ...
    os.close(lock.acquire(locks, str(tmp_path), old))
    # ... leaving a child of its own, marked as the worker marks every child.
    leftover = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        env={**os.environ, "NODEFERRY_TASK_ID": old},
        start_new_session=True,
    )
    try:
        # Popen returns once exec has begun, a moment before the kernel shows the
        # new environment in /proc: wait until the mark can be seen.
        from agent.liveness import task_processes

        deadline = time.monotonic() + 30
        while leftover.pid not in task_processes(old):
            assert time.monotonic() < deadline, "the leftover's environment never showed"
            time.sleep(0.01)
        fd = lock.acquire(locks, str(tmp_path), new)
        # The lock was given only once the leftover had been ended.
        assert leftover.wait(timeout=5) == -signal.SIGKILL
        os.close(fd)
        assert lock.holder(locks, str(tmp_path)) == new
    finally:
        if leftover.poll() is None:
            leftover.kill()
            leftover.wait()


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.mark.timeout(90)
async def test_the_data_dir_is_private_from_creation(tmp_path: Path) -> None:
    from tests.support.procs import end_process

    process, port, log = _served_controller(tmp_path, 4096)
    data = tmp_path / "data"
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while True:
            try:
                assert await _healthz(port, 2) == 200
                break
            except OSError:
                assert process.poll() is None, log.read_text(errors="replace")
                assert loop.time() < deadline, "serve never answered"
                await asyncio.sleep(0.1)
        files = {p.name: _mode(p) for p in data.iterdir()}
        assert _mode(data) == 0o700
        assert {"tasks.sqlite3", "tasks.sqlite3-wal", "tasks.sqlite3-shm", "token"} <= set(files)
        assert {name for name, mode in files.items() if mode != 0o600} == set(), files
    finally:
        end_process(process)


async def test_a_loose_data_dir_is_tightened_at_start(
    make_client: AppFactory, tmp_path: Path, client_key: Path
) -> None:
    data = tmp_path / "controller-data"
    (data / "node-db").mkdir(parents=True)
    for name in ("tasks.sqlite3", "tasks.sqlite3-wal", "registry-cache.json"):
        (data / name).write_bytes(b"")
        (data / name).chmod(0o644)
    (data / "node-db" / "extension-node-map.json").write_text("{}")
    (data / "node-db").chmod(0o755)
    data.chmod(0o755)
    client = await make_client(make_settings(tmp_path, client_key))
    # A write, so SQLite has its -wal and -shm open.
    assert (await client.get("/api/tasks")).status == 200
    start = await client.post(
        "/ssh/install-custom-nodes",
        json={"ssh_connection": "local", "ui_home": str(tmp_path / "nowhere"), "nodes": []},
    )
    assert start.status == 400
    assert _mode(data) == 0o700 and _mode(data / "node-db") == 0o700
    loose = {p: _mode(p) for p in data.rglob("*") if p.is_file() and _mode(p) != 0o600}
    assert loose == {}, loose
    assert (data / "tasks.sqlite3-shm").exists()


async def test_an_in_process_app_creates_its_database_private(
    make_client: AppFactory, tmp_path: Path, client_key: Path
) -> None:
    await make_client(make_settings(tmp_path, client_key))
    data = tmp_path / "controller-data"
    assert _mode(data) == 0o700
    for name in ("tasks.sqlite3", "tasks.sqlite3-wal", "tasks.sqlite3-shm", "token"):
        assert _mode(data / name) == 0o600, name


PASSWORD = "S3cretPW-31"


async def test_credentials_in_node_urls_are_masked_everywhere(
    client: Any, tmp_path: Path, sshd: SshServer, home: ComfyHome, node_repos: NodeRepos
) -> None:
    import aiohttp

    # Port 1 refuses at once: the clone fails, and git's error quotes the URL.
    secret_url = f"http://user:{PASSWORD}@127.0.0.1:1/private-pack.git"
    ws = await client.ws_connect("/api/ws")
    assert (await ws.receive_json(timeout=30))["type"] == "ready"
    task_id = await start_install(
        client,
        install_body(
            sshd.connection_string(), home, [secret_url, node_repos.plain.url],
            pip_args=[f"--extra-index-url=https://pip:{PASSWORD}@127.0.0.1:1/simple"],
        ),
    )  # fmt: skip
    await ws.send_json({"op": "subscribe", "task_id": task_id})
    frames = []
    while True:
        message = await ws.receive(timeout=60)
        assert message.type == aiohttp.WSMsgType.TEXT, message
        frames.append(message.data)
        if message.json().get("type") == "final":
            break
    await ws.close()
    final = await wait_final(client, task_id)
    assert final["nodes"][0]["status"] == "failed", final
    assert final["nodes"][0]["url"] == "http://***@127.0.0.1:1/private-pack.git"
    events = await client.get(f"/api/tasks/{task_id}/events")
    stream = (await events.content.read(256 * 1024)).decode()
    history = await (await client.get("/api/history")).text()
    log = await (await client.get(f"/api/tasks/{task_id}/log")).text()
    task_dir = tmp_path / "remote-state" / "tasks" / task_id
    documents = {
        "progress body": json.dumps(final),
        "task": await (await client.get(f"/api/tasks/{task_id}")).text(),
        "list": await (await client.get("/api/tasks")).text(),
        "websocket": "\n".join(frames),
        "events": stream,
        "history": history,
        "log": log,
        "progress.json": (task_dir / "progress.json").read_text(),
        "agent.log": (task_dir / "agent.log").read_text(),
        "lock.json": (task_dir / "lock.json").read_text(),
    }
    assert "private-pack" in documents["history"] and "private-pack" in documents["agent.log"]
    leaked = [name for name, text in documents.items() if PASSWORD in text]
    assert leaked == [], leaked


async def test_hostile_websocket_frames_get_clean_answers(
    make_client: AppFactory, tmp_path: Path, client_key: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    import aiohttp

    client = await make_client(
        make_settings(tmp_path, client_key, token="s3cret"), authenticated=False
    )
    caplog.set_level(logging.DEBUG)

    async def answer(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
        message = await ws.receive(timeout=30)
        assert message.type == aiohttp.WSMsgType.TEXT, message
        data: dict[str, Any] = message.json()
        return data

    # A lone surrogate as the token: refused like any wrong token.
    # (30000 levels: within the 64 KiB frame cap, far past json's recursion limit.)
    for frame in ('{"op": "auth", "token": "\\ud800"}', "[" * 30000 + "]" * 30000):
        ws = await client.ws_connect("/api/ws")
        await ws.send_str(frame)
        refused = await answer(ws)
        assert refused["error"] == "unauthorized", refused
        closing = await ws.receive(timeout=10)
        assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 4401
        await ws.close()
    # An oversized first frame: closed with 1009 before any auth, nothing raised.
    ws = await client.ws_connect("/api/ws")
    await ws.send_str('"' + "x" * (128 * 1024) + '"')
    closing = await ws.receive(timeout=10)
    assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 1009, closing
    await ws.close()
    # Authorised, every bad frame gets an error and the socket stays usable.
    ws = await client.ws_connect("/api/ws?token=s3cret")
    assert (await answer(ws))["type"] == "ready"
    for frame in (
        "[" * 30000 + "]" * 30000,
        '{"a":' * 10000 + "1" + "}" * 10000,
        '{"op": "subscribe", "task_id": "\\ud800"}',
        '{"op": "\\udfff"}',
        "not json",
        "\u0000",
    ):
        await ws.send_str(frame)
        error = await answer(ws)
        assert error["type"] == "error" and error["error"] == "invalid_request", error
    await ws.send_bytes(b"\xff\x00binary")
    assert (await answer(ws))["error"] == "invalid_request"
    await ws.send_json({"op": "subscribe", "tasks": "all"})
    assert (await answer(ws)) == {"type": "tasks", "tasks": []}
    # Past the size cap: closed with 1009 (message too big).
    await ws.send_str('"' + "x" * (128 * 1024) + '"')
    closing = await ws.receive(timeout=10)
    assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 1009, closing
    await ws.close()
    assert (await client.get("/healthz")).status == 200
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert tracebacks == [], [r.getMessage() for r in tracebacks]


async def test_behind_a_reverse_proxy_the_socket_goes_where_http_goes(
    make_client: AppFactory, tmp_path: Path, client_key: Path
) -> None:
    """One guard for every route: the dashboard's socket behind a proxy that
    rewrites Host to the upstream is accepted exactly where its HTTP calls are."""
    import aiohttp

    client = await make_client(
        make_settings(tmp_path, client_key, allowed_hosts=["nodeferry.internal"])
    )
    upstream = f"127.0.0.1:{client.port}"

    async def both(headers: dict[str, str]) -> tuple[int, int | str]:
        http = await client.get("/api/tasks", headers=headers)
        try:
            ws = await client.ws_connect("/api/ws", headers=headers)
        except aiohttp.WSServerHandshakeError as exc:
            return http.status, exc.status
        ready = await ws.receive_json(timeout=10)
        await ws.close()
        return http.status, ready["type"]

    # Host rewritten to the upstream, the browser's Origin the proxy's public name.
    for origin in ("https://nodeferry.internal", "https://nodeferry.internal:8443"):
        assert await both({"Host": upstream, "Origin": origin}) == (200, "ready"), origin
    # Or the proxy passes its own name on.
    proxied = {"Host": "nodeferry.internal", "Origin": "https://nodeferry.internal"}
    assert await both(proxied) == (200, "ready")
    # A name not listed: refused by both, the same way.
    assert await both({"Host": upstream, "Origin": "https://other.internal"}) == (403, 403)
    assert await both({"Host": "other.internal", "Origin": "https://other.internal"}) == (
        421,
        421,
    )
    # And the token is the guard's too: a wrong one is refused before any upgrade.
    wrong = {"Authorization": "Bearer wrong"}
    assert await both(wrong) == (401, 401)


def test_a_file_served_a_byte_at_a_time_meets_the_read_deadline(
    tmp_path: Path, client_key: Path
) -> None:
    """Unit test with a stand-in SFTP client (the FIFO test above uses the real
    sshd): each packet arrives within the channel timeout, the whole read does not."""
    import stat as stat_module
    import time as time_module
    from types import SimpleNamespace

    from controller.common.errors import ReadDeadline
    from controller.common.stats import Stats
    from controller.common.target import parse_target
    from controller.transports.ssh import SshTransport

    class Dripping:
        def __enter__(self) -> Dripping:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def seek(self, offset: int) -> None:
            return None

        def read(self, size: int) -> bytes:
            time_module.sleep(0.05)
            return b"x"

    class Sftp:
        def stat(self, path: str) -> Any:
            return SimpleNamespace(st_mode=stat_module.S_IFREG | 0o600, st_size=10**9)

        def open(self, path: str, mode: str) -> Dripping:
            return Dripping()

    settings = make_settings(tmp_path, client_key, command_timeout=0.5)
    transport = SshTransport(
        parse_target("u@127.0.0.1:1"),
        None,  # type: ignore[arg-type]  # the read under test never reaches the pool
        settings,
        Stats(),
        b"",
        "0" * 64,
    )
    began = time_module.monotonic()
    with pytest.raises(ReadDeadline, match=r"took longer than 0\.5 s"):
        transport._read_regular(Sftp(), "/x/progress.json", 0, None, prefetch=False)  # type: ignore[arg-type]
    assert time_module.monotonic() - began < 3
