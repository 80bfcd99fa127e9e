"""A real ``git daemon`` on 127.0.0.1 serving repositories generated on the fly.

Used by ``nodeferry demo`` (through ``playground``), the tests and the benchmark.

    with GitServer(tmp_dir) as server:
        repo = server.add_repo("ComfyUI-Foo", {"__init__.py": "", "requirements.txt": "bar\\n"})
        repo.url           # git://127.0.0.1:<port>/ComfyUI-Foo
        node = server.add_node_repo("ComfyUI-Bar", requirements=["tinydep==1.0"])
        repo.head          # sha of the branch tip
        repo.commit({"more.py": "x = 1\\n"})   # a new commit; returns its sha

``server.missing_url("nope")`` is a URL the daemon answers "not found" for.
The daemon is a child process killed by pid on :meth:`stop`. ``GitServer(root,
served=repos)`` serves an existing folder of bare repositories instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from controller.sandbox.errors import SandboxError

Content = str | bytes

#: Settings that keep a commit from depending on the machine's git config.
_GIT_CONFIG = ("-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false")
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "nodeferry sandbox",
    "GIT_AUTHOR_EMAIL": "sandbox@nodeferry.invalid",
    "GIT_COMMITTER_NAME": "nodeferry sandbox",
    "GIT_COMMITTER_EMAIL": "sandbox@nodeferry.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_TERMINAL_PROMPT": "0",
}


def git_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(_GIT_ENV)
    env["HOME"] = env.get("HOME", "/root")
    return env


def git(*args: str, cwd: str | Path | None = None) -> str:
    """Run git, raising with its output on failure; returns stdout stripped."""
    result = subprocess.run(
        ["git", *_GIT_CONFIG, *args],
        cwd=cwd,
        env=git_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SandboxError(f"git {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Repo:
    """A bare repository served by the daemon, with a work tree to make commits from."""

    def __init__(self, server: GitServer, name: str) -> None:
        self.server = server
        self.name = name
        self.bare = server.root / f"{name}.git"
        self.work = server.work_root / name
        self.branch = "main"

    @property
    def url(self) -> str:
        return f"{self.server.base_url}/{self.name}"

    @property
    def head(self) -> str:
        return git("rev-parse", self.branch, cwd=self.bare)

    def commit(
        self,
        files: Mapping[str, Content],
        message: str = "change",
        remove: list[str] | None = None,
    ) -> str:
        """Write ``files`` (path -> content), commit, push; returns the new sha."""
        for rel, content in files.items():
            path = self.work / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)
        for rel in remove or []:
            git("rm", "-q", "-r", rel, cwd=self.work)
        git("add", "-A", cwd=self.work)
        git("commit", "-q", "--allow-empty", "-m", message, cwd=self.work)
        git("push", "-q", "origin", f"HEAD:{self.branch}", cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)

    def tag(self, tag: str, ref: str = "HEAD") -> None:
        git("tag", tag, ref, cwd=self.work)
        git("push", "-q", "origin", tag, cwd=self.work)

    def create_branch(self, branch: str, files: Mapping[str, Content]) -> str:
        """A branch off the current tip with one more commit; the default branch is kept."""
        git("checkout", "-q", "-b", branch, cwd=self.work)
        try:
            saved, self.branch = self.branch, branch
            sha = self.commit(files, f"on {branch}")
        finally:
            self.branch = saved
            git("checkout", "-q", saved, cwd=self.work)
        return sha

    def add_submodule(self, sub: Repo, path: str) -> str:
        """Add ``sub`` (served by the same daemon) as a submodule at ``path``; commits."""
        git(
            "-c",
            "protocol.file.allow=always",
            "submodule",
            "add",
            "-q",
            sub.url,
            path,
            cwd=self.work,
        )
        return self.commit({}, f"add submodule {path}")


class GitServer:
    """``git daemon`` on a free loopback port; repositories live under ``root``."""

    def __init__(self, root: str | Path | None = None, *, served: Path | None = None) -> None:
        self._own_root = root is None
        self.base = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="gitd-"))
        self.root = served if served is not None else self.base / "served"
        self.work_root = self.base / "work"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.work_root / "git-daemon.log"
        self.repos: dict[str, Repo] = {}

    @property
    def base_url(self) -> str:
        return f"git://127.0.0.1:{self.port}"

    def missing_url(self, name: str = "does-not-exist") -> str:
        return f"{self.base_url}/{name}"

    def start(self, port: int | None = None) -> GitServer:
        """Serve on a free port, or on ``port`` (to come back where clients expect it)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.work_root.mkdir(parents=True, exist_ok=True)
        last_error = ""
        for _ in range(5):  # the free port may be taken between probe and bind
            self.port = port or free_port()
            with self.log_path.open("wb") as log:
                self.proc = subprocess.Popen(
                    [
                        "git",
                        "daemon",
                        "--reuseaddr",
                        "--export-all",
                        "--informative-errors",
                        f"--base-path={self.root}",
                        "--listen=127.0.0.1",
                        f"--port={self.port}",
                        str(self.root),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    # A file, not a pipe: per-connection children would hold a pipe open.
                    stderr=log,
                    # Its own group, so stop() also ends the per-connection children.
                    start_new_session=True,
                )
            if self._wait_listening():
                return self
            last_error = self._stop_proc()
        raise SandboxError(f"git daemon did not start: {last_error}")

    def _wait_listening(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                time.sleep(0.05)
        return False

    def _stop_proc(self) -> str:
        if self.proc is None:
            return ""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        self.proc = None
        try:
            return self.log_path.read_text("utf-8", "replace")
        except OSError:
            return ""

    def halt(self) -> None:
        """Stop serving but keep the repositories: an outage; ``start(port)`` ends it."""
        self._stop_proc()

    def stop(self) -> None:
        self._stop_proc()
        if self._own_root:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> GitServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def add_node_repo(
        self,
        name: str,
        *,
        requirements: list[str] | None = None,
        install_py: str | None = None,
        files: Mapping[str, Content] | None = None,
    ) -> Repo:
        """A ComfyUI custom node: ``__init__.py`` plus optional requirements and install.py."""
        content: dict[str, Content] = {"__init__.py": "NODE_CLASS_MAPPINGS = {}\n"}
        if requirements is not None:
            content["requirements.txt"] = "".join(line + "\n" for line in requirements)
        if install_py is not None:
            content["install.py"] = install_py
        content.update(files or {})
        return self.add_repo(name, content)

    def add_repo(
        self, name: str, files: Mapping[str, Content], message: str = "initial commit"
    ) -> Repo:
        """A new repository ``name`` with one commit of ``files`` on branch ``main``."""
        repo = Repo(self, name)
        git("init", "-q", "--bare", "--initial-branch=main", str(repo.bare))
        git("init", "-q", "--initial-branch=main", str(repo.work))
        git("remote", "add", "origin", str(repo.bare), cwd=repo.work)
        repo.commit(files, message)
        # Let clients fetch any advertised or reachable commit (pinned commits).
        git("config", "uploadpack.allowReachableSHA1InWant", "true", cwd=repo.bare)
        self.repos[name] = repo
        return repo
