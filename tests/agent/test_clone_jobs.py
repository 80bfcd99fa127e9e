"""``clone_jobs`` is honoured: clones against the real git daemon, counted at the wire.

A gate in front of the daemon holds every new connection until ``clone_jobs`` are
open at once (or a hold time passes), so the peak it records is exactly what the
agent ran concurrently: fewer lanes never fill the gate, more would overfill it.
A ``git://`` clone of a repository without submodules is one connection.
"""

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.sandbox.comfy import NODE_INIT, ComfyHome
from controller.sandbox.gitserver import GitServer
from tests.agent.conftest import Agent
from tests.agent.test_install import run_spec

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]


class GateProxy:
    """TCP proxy to ``upstream_port`` that releases connections in groups of ``gate``."""

    def __init__(self, upstream_port: int, gate: int, hold: float) -> None:
        self.upstream_port = upstream_port
        self.gate = gate
        self.hold = hold
        self.cond = threading.Condition()
        self.open = 0
        self.peak = 0
        self.total = 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.threads: list[threading.Thread] = []
        self.closing = False
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, client: socket.socket) -> None:
        with self.cond:
            self.open += 1
            self.total += 1
            self.peak = max(self.peak, self.open)
            self.cond.notify_all()
            # Wait for the group to fill; a lone straggler goes on after the timeout.
            self.cond.wait_for(lambda: self.open >= self.gate or self.closing, self.hold)
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        except OSError:
            client.close()
            self._closed()
            return
        back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
        back.start()
        _pump(client, upstream)  # returns when the clone closes its side
        self._closed()
        back.join(10)

    def _closed(self) -> None:
        with self.cond:
            self.open -= 1

    def close(self) -> None:
        with self.cond:
            self.closing = True
            self.cond.notify_all()
        self.server.close()
        self.acceptor.join(5)
        for thread in self.threads:
            thread.join(5)


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def gate_repos(git_server: GitServer) -> list[str]:
    names = [f"gated-{i}" for i in range(6)]
    for name in names:
        if not (git_server.root / f"{name}.git").exists():
            git_server.add_repo(name, {"__init__.py": f"NAME = {name!r}\n" + NODE_INIT})
    return names


@pytest.fixture
def gate(request: pytest.FixtureRequest, git_server: GitServer) -> Iterator[GateProxy]:
    size, hold = request.param
    proxy = GateProxy(git_server.port, size, hold)
    yield proxy
    proxy.close()


@pytest.mark.parametrize("gate", [(3, 20.0)], indirect=True)
def test_clone_jobs_caps_concurrent_clones_not_jobs(
    gate: GateProxy, gate_repos: list[str], agent: Agent, bare_comfy: ComfyHome
) -> None:
    urls = [f"git://127.0.0.1:{gate.port}/{name}" for name in gate_repos]
    spec = agent.spec(bare_comfy.root, urls, jobs=1, clone_jobs=3)
    final = run_spec(agent, spec)
    assert final.state == "completed" and final.successful == 6
    for name in gate_repos:
        assert (Path(bare_comfy.root) / "custom_nodes" / name / "__init__.py").is_file()
    # Every clone went through the gate, three at a time: jobs=1 did not serialise them
    # and the default (16) did not take over.
    assert gate.total == 6
    assert gate.peak == 3


# Held 3 s: clones run together would meet in the gate; one at a time, each waits it out.
@pytest.mark.parametrize("gate", [(2, 3.0)], indirect=True)
def test_clone_jobs_one_clones_one_at_a_time(
    gate: GateProxy, gate_repos: list[str], agent: Agent, bare_comfy: ComfyHome
) -> None:
    urls = [f"git://127.0.0.1:{gate.port}/{name}" for name in gate_repos[:2]]
    spec = agent.spec(bare_comfy.root, urls, jobs=8, clone_jobs=1)
    final = run_spec(agent, spec)
    assert final.state == "completed" and final.successful == 2
    assert gate.total == 2 and gate.peak == 1
