"""The controller as a separate process (``python -m controller serve``), so the
benchmark can read its CPU time and peak RSS from /proc and its counters from
``/healthz`` without measuring itself."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.support.sshd import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


class ControllerProcess:
    def __init__(self, base: Path, settings: dict[str, str]) -> None:
        self.base = base
        self.base.mkdir(parents=True, exist_ok=True)
        self.settings = {"data_dir": str(base / "data"), **settings}
        self.config_path = base / "nodeferry.conf"
        self.log_path = base / "controller.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("the controller is not running")
        return self.proc.pid

    def auth(self) -> dict[str, str]:
        """The header its API wants: the token it made in its data dir on start."""
        token = (Path(self.settings["data_dir"]) / "token").read_text().strip()
        return {"Authorization": f"Bearer {token}"}

    def start(self, timeout: float = 30.0) -> ControllerProcess:
        lines = ["[nodeferry]", *(f"{k} = {v}" for k, v in self.settings.items()), ""]
        self.config_path.write_text("\n".join(lines))
        env = {k: v for k, v in os.environ.items() if not k.startswith("NODEFERRY_")}
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        self.port = free_port()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "controller",
                    "serve",
                    "--config",
                    str(self.config_path),
                    "--port",
                    str(self.port),
                    "--log-level",
                    "WARNING",
                ],
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the controller exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            with contextlib.suppress(OSError):
                self.health()
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the controller did not answer within {timeout:.0f} s")

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/healthz", timeout=10) as response:
            data: dict[str, Any] = json.loads(response.read())
        return data

    def stats(self) -> dict[str, int]:
        stats: dict[str, int] = self.health()["stats"]
        return stats

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: the controller dies mid-whatever, as with a power cut."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        proc.kill()
        proc.wait(10)

    def __enter__(self) -> ControllerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
