"""Every way a user writes an SSH target, against real sshd instances: ``ssh://`` URLs,
IPv6, ``~/.ssh/config`` aliases with their own keys, ``-i`` from ``keys_dir``, a
ProxyJump through a second sshd, and the refusals (ProxyCommand, keys outside
``keys_dir``)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.sandbox.comfy import ComfyHome
from tests.controller.conftest import (
    AppFactory,
    NodeRepos,
    install_body,
    make_settings,
    start_install,
    wait_final,
)
from tests.support.sshd import SshServer, make_key

pytestmark = pytest.mark.slow


@pytest.fixture
def own_key(tmp_path: Path) -> Path:
    """A key none of the controller's default keys is: only a target's config names it."""
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    return make_key(keys_dir / "vast_key", "vast")


@pytest.fixture
def sshd_own_key(tmp_path: Path, own_key: Path) -> Iterator[SshServer]:
    """An sshd that lets in ``own_key`` only."""
    server = SshServer(tmp_path / "sshd-own", client_key=own_key)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ssh_config"
    path.write_text(text, encoding="utf-8")
    return path


async def install_ok(client: Any, ssh_connection: str, home: ComfyHome, url: str) -> str:
    """Install one node through ``ssh_connection``; the task's id once it completed."""
    task_id = await start_install(client, install_body(ssh_connection, home, [url]))
    final = await wait_final(client, task_id, timeout=90)
    assert final["state"] == "completed", final
    assert (home.custom_nodes / "ComfyUI-Plain" / "__init__.py").exists()
    return task_id


async def test_ssh_url_as_vastai_prints_it(
    client: Any, sshd: SshServer, home: ComfyHome, node_repos: NodeRepos
) -> None:
    target = f"ssh://{sshd.user}@127.0.0.1:{sshd.port}"
    await install_ok(client, target, home, node_repos.plain.url)
    listing = await (await client.get("/api/tasks")).json()
    assert listing["tasks"][0]["target"] == f"{sshd.user}@127.0.0.1:{sshd.port}"


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="this machine's loopback has no ::1")
@pytest.mark.parametrize("form", ["ssh://{user}@[::1]:{port}", "{user}@[::1]:{port}"])
async def test_ipv6_targets(
    form: str,
    tmp_path: Path,
    client_key: Path,
    make_client: AppFactory,
    home: ComfyHome,
    node_repos: NodeRepos,
) -> None:
    server = SshServer(tmp_path / "sshd-v6", client_key=client_key)
    server.host = "::1"
    server.start()
    try:
        client = await make_client(make_settings(tmp_path, client_key))
        target = form.format(user=server.user, port=server.port)
        await install_ok(client, target, home, node_repos.plain.url)
        assert server.accepted_count() >= 1
    finally:
        server.stop()


async def test_config_alias_with_its_own_key(
    tmp_path: Path,
    client_key: Path,
    own_key: Path,
    sshd_own_key: SshServer,
    make_client: AppFactory,
    home: ComfyHome,
    node_repos: NodeRepos,
) -> None:
    config = write_config(
        tmp_path,
        f"Host myvast\n  HostName 127.0.0.1\n  Port {sshd_own_key.port}\n"
        f"  User {sshd_own_key.user}\n  IdentityFile {own_key}\n",
    )
    client = await make_client(make_settings(tmp_path, client_key, ssh_config=config))
    await install_ok(client, "myvast", home, node_repos.plain.url)
    listing = await (await client.get("/api/tasks")).json()
    # The resolved target is what the registry and the dashboard show.
    assert listing["tasks"][0]["target"] == f"{sshd_own_key.user}@127.0.0.1:{sshd_own_key.port}"

    # The same machine named literally, by a controller with no pooled connection
    # to it, has no key that lets it in: the alias's key did it.
    literal = await make_client(make_settings(tmp_path / "literal", client_key))
    body = install_body(sshd_own_key.connection_string(), home, [node_repos.second.url])
    task_id = await start_install(literal, body)
    final = await wait_final(literal, task_id, timeout=90)
    assert final["state"] == "failed"
    assert "authentication" in final["error"]


async def test_dash_i_reads_keys_dir_only(
    tmp_path: Path,
    client_key: Path,
    own_key: Path,
    sshd_own_key: SshServer,
    make_client: AppFactory,
    home: ComfyHome,
    node_repos: NodeRepos,
) -> None:
    client = await make_client(make_settings(tmp_path, client_key, keys_dir=own_key.parent))
    target = f"ssh -i {own_key.name} -p {sshd_own_key.port} {sshd_own_key.user}@127.0.0.1"
    await install_ok(client, target, home, node_repos.plain.url)

    outside = make_key(tmp_path / "elsewhere_key")
    for given in (str(outside), "../elsewhere_key", "/etc/passwd"):
        response = await client.post(
            "/ssh/install-custom-nodes",
            json=install_body(f"ssh -i {given} -p {sshd_own_key.port} root@127.0.0.1", home, ["x"]),
        )
        body = await response.json()
        assert response.status == 400, body
        assert body["field"] == "ssh_connection"
        assert "keys_dir" in body["message"]


async def test_dash_i_without_keys_dir_names_the_setting(
    client: Any, sshd: SshServer, home: ComfyHome
) -> None:
    response = await client.post(
        "/ssh/install-custom-nodes",
        json=install_body(f"ssh -i ~/.ssh/id_rsa -p {sshd.port} root@127.0.0.1", home, ["x"]),
    )
    body = await response.json()
    assert response.status == 400
    assert "keys_dir" in body["message"]
    assert "NODEFERRY_KEYS_DIR" in body["message"]


async def test_proxyjump_through_a_second_sshd(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    client_key: Path,
    own_key: Path,
    sshd_own_key: SshServer,
    make_client: AppFactory,
    home: ComfyHome,
    node_repos: NodeRepos,
) -> None:
    # DEBUG makes the jump host log the direct-tcpip channel it opens for us.
    sshd = SshServer(tmp_path / "sshd-jump", client_key=client_key, log_level="DEBUG")
    sshd.start()
    request.addfinalizer(sshd.stop)
    config = write_config(
        tmp_path,
        f"Host jumpbox\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User {sshd.user}\n"
        f"Host inner\n  HostName 127.0.0.1\n  Port {sshd_own_key.port}\n"
        f"  User {sshd_own_key.user}\n  IdentityFile {own_key}\n  ProxyJump jumpbox\n",
    )
    client = await make_client(make_settings(tmp_path, client_key, ssh_config=config))
    before = sshd.accepted_count()
    await install_ok(client, "inner", home, node_repos.plain.url)
    # The jump host let us in and opened a channel to the target's port for us.
    assert sshd.accepted_count() > before
    assert sshd_own_key.accepted_count() >= 1
    assert (
        f"direct_tcpip: originator 127.0.0.1 port 0, target 127.0.0.1 port {sshd_own_key.port}"
        in (sshd.log_text())
    )


async def test_proxycommand_is_refused(
    tmp_path: Path, client_key: Path, make_client: AppFactory, home: ComfyHome, sshd: SshServer
) -> None:
    marker = tmp_path / "proxycommand-ran"
    config = write_config(
        tmp_path,
        f"Host sneaky\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User root\n"
        f"  ProxyCommand touch {marker}\n",
    )
    client = await make_client(make_settings(tmp_path, client_key, ssh_config=config))
    for target in ("sneaky", f"root@127.0.0.1 -p {sshd.port} -o ProxyCommand=touch {marker}"):
        response = await client.post(
            "/ssh/install-custom-nodes", json=install_body(target, home, ["x"])
        )
        body = await response.json()
        assert response.status == 400, body
        assert "ProxyCommand" in body["message"]
    assert not marker.exists()
    assert sshd.session_count() == 0


async def test_ignored_options_are_said_in_the_log(
    client: Any, sshd: SshServer, home: ComfyHome, node_repos: NodeRepos
) -> None:
    target = (
        f"ssh -p {sshd.port} {sshd.user}@127.0.0.1 -L 8080:localhost:8080 -N "
        "-o ServerAliveInterval=30 -o StrictHostKeyChecking=no"
    )
    task_id = await install_ok(client, target, home, node_repos.plain.url)
    log = await (await client.get(f"/api/tasks/{task_id}/log")).json()
    notes = "\n".join(log["notes"])
    assert "-L 8080:localhost:8080" in notes
    assert "-N" in notes
    assert "-o ServerAliveInterval=30" in notes
    assert "-o StrictHostKeyChecking=no" in notes
