"""What a user would do without nodeferry, measured as faithfully as we can.

- :func:`sequential_install` is what the common provisioning scripts do: for each
  node, ``git clone --recursive``, then ``pip install -r requirements.txt``, then
  ``python install.py`` when there is one, then the next node.
- :class:`SshCatPoller` reads a remote file with a new ``ssh`` process per poll
  (``ssh host cat FILE``), as the old design did.
- :class:`ParamikoPoller` reads it with a new paramiko connection per poll, as a
  naive Python tool does.

None of them is slowed down on purpose; where they run something they run it the
way the scripts they stand for do.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import paramiko

from controller.sandbox.comfy import isolated_pip_env

CLONE_TIMEOUT = 300.0
PIP_TIMEOUT = 300.0


@dataclass
class NodeTiming:
    name: str
    clone: float = 0.0
    requirements: float = 0.0
    install_script: float = 0.0
    ok: bool = True
    error: str = ""


@dataclass
class BaselineInstall:
    wall: float
    nodes: list[NodeTiming] = field(default_factory=list)

    @property
    def clone(self) -> float:
        return sum(n.clone for n in self.nodes)

    @property
    def requirements(self) -> float:
        return sum(n.requirements for n in self.nodes)

    @property
    def install_script(self) -> float:
        return sum(n.install_script for n in self.nodes)

    @property
    def failed(self) -> list[str]:
        return [n.name for n in self.nodes if not n.ok]


def sequential_install(
    urls: Sequence[str],
    ui_home: Path,
    python: str,
    pip_args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
) -> BaselineInstall:
    """Install ``urls`` one by one into ``ui_home/custom_nodes``, like a provisioning script."""
    run_env = dict(env) if env is not None else isolated_pip_env()
    custom_nodes = ui_home / "custom_nodes"
    custom_nodes.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result = BaselineInstall(wall=0.0)
    for url in urls:
        name = url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")
        node = NodeTiming(name)
        result.nodes.append(node)
        target = custom_nodes / name
        argv = ["git", "clone", "--recursive", "--quiet", url, str(target)]
        node.clone, ok, error = _timed(argv, custom_nodes, run_env, CLONE_TIMEOUT)
        if not ok:
            node.ok, node.error = False, f"clone: {error}"
            continue
        if (target / "requirements.txt").exists():
            argv = [python, "-m", "pip", "install", "-r", "requirements.txt", *pip_args]
            node.requirements, ok, error = _timed(argv, target, run_env, PIP_TIMEOUT)
            if not ok:
                node.ok, node.error = False, f"pip: {error}"
                continue
        if (target / "install.py").exists():
            node.install_script, ok, error = _timed(
                [python, "install.py"], target, run_env, PIP_TIMEOUT
            )
            if not ok:
                node.ok, node.error = False, f"install.py: {error}"
    result.wall = time.perf_counter() - started
    return result


def _timed(
    argv: list[str], cwd: Path, env: Mapping[str, str], timeout: float
) -> tuple[float, bool, str]:
    started = time.perf_counter()
    try:
        done = subprocess.run(
            argv,
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return time.perf_counter() - started, False, f"timed out after {timeout:.0f} s"
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return elapsed, False, f"{shlex.join(argv)} exited {done.returncode}: {' | '.join(tail)}"
    return elapsed, True, ""


# -- reading a remote file per poll ------------------------------------------------


@dataclass(frozen=True)
class SshTarget:
    """Where a remote file lives and how to log in."""

    host: str
    port: int
    user: str
    key_path: Path
    known_hosts: Path

    def __post_init__(self) -> None:
        if self.host != "127.0.0.1":
            raise ValueError("benchmarks only talk to 127.0.0.1")


class SshCatPoller:
    """One new OpenSSH client process per poll: ``ssh host cat FILE``."""

    def __init__(self, target: SshTarget, remote_path: str) -> None:
        self.argv = [
            "ssh",
            "-F",
            os.devnull,  # no user config: what is measured is OpenSSH's defaults
            "-i",
            str(target.key_path),
            "-p",
            str(target.port),
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={target.known_hosts}",
            "-o",
            "ConnectTimeout=10",
            f"{target.user}@{target.host}",
            # ssh joins its arguments into one remote shell command: quote the path.
            "cat " + shlex.quote(remote_path),
        ]

    def poll(self) -> bytes:
        done = subprocess.run(
            self.argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=30, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"ssh cat failed ({done.returncode}): {done.stderr.decode()}")
        return done.stdout


class ParamikoPoller:
    """One new paramiko connection per poll: connect, ``cat FILE``, close."""

    def __init__(self, target: SshTarget, remote_path: str) -> None:
        self.target = target
        self.command = "cat " + shlex.quote(remote_path)

    def poll(self) -> bytes:
        client = paramiko.SSHClient()
        try:
            client.load_host_keys(str(self.target.known_hosts))
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
            client.connect(
                self.target.host,
                port=self.target.port,
                username=self.target.user,
                key_filename=str(self.target.key_path),
                look_for_keys=False,
                allow_agent=False,
                timeout=10,
            )
            _stdin, stdout, stderr = client.exec_command(self.command, timeout=30)
            data = stdout.read()
            status = stdout.channel.recv_exit_status()
            if status != 0:
                raise RuntimeError(f"cat failed ({status}): {stderr.read().decode()}")
            return bytes(data)
        finally:
            client.close()


def time_polls(poll: object, count: int, *, max_seconds: float) -> list[float]:
    """Call ``poll()`` up to ``count`` times or until ``max_seconds`` pass; the latencies."""
    if not callable(poll):
        raise TypeError("poll must be callable")
    samples: list[float] = []
    deadline = time.monotonic() + max_seconds
    for _ in range(count):
        if samples and time.monotonic() > deadline:
            break
        started = time.perf_counter()
        poll()
        samples.append(time.perf_counter() - started)
    return samples
