"""The optional online lookups: the Comfy Registry's API (id → repository) and a
repository's tags (version → tag). Both are off when ``online_lookups`` is false
(tests always run that way); results are cached. Blocking: run in the executor.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import urllib.parse
import urllib.request
from pathlib import Path

from protocol import ProtocolError
from protocol import fields as checks

REGISTRY_API = "https://api.comfy.org/nodes/"
TIMEOUT = 15.0
MAX_REPLY = 1024 * 1024
_TAG = re.compile(r"refs/tags/([^\s^]+)$")


class Online:
    def __init__(self, cache_file: Path) -> None:
        self.cache_file = cache_file
        self._lock = threading.Lock()
        self._tags: dict[str, set[str] | None] = {}

    def _cache(self) -> dict[str, str]:
        try:
            data = json.loads(self.cache_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {k: v for k, v in data.items() if isinstance(v, str)}

    def registry(self, ident: str) -> str | None:
        """The repository the Comfy Registry records for ``ident``."""
        with self._lock:
            cache = self._cache()
            if ident in cache:
                return cache[ident]
        try:
            url = REGISTRY_API + urllib.parse.quote(ident, safe="")
            with urllib.request.urlopen(url, timeout=TIMEOUT) as reply:  # noqa: S310
                data = json.loads(reply.read(MAX_REPLY))
        except (OSError, ValueError):
            return None
        repository = data.get("repository") if isinstance(data, dict) else None
        try:
            repository = checks.git_url(repository, "repository")
        except ProtocolError:
            return None
        with self._lock:
            cache = self._cache()
            cache[ident] = repository
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            temp = self.cache_file.with_suffix(f".{os.getpid()}.tmp")
            temp.write_text(json.dumps(cache, indent=1, sort_keys=True), encoding="utf-8")
            temp.replace(self.cache_file)
        return repository

    def tags(self, url: str) -> set[str] | None:
        """The repository's tags by ``git ls-remote``; None when they cannot be read."""
        with self._lock:
            if url in self._tags:
                return self._tags[url]
        try:
            # The URL passed protocol.git_url: no option-like or remote-helper URLs.
            checks.git_url(url)
            done = subprocess.run(
                ["git", "ls-remote", "--tags", "--refs", "--", url],
                capture_output=True,
                timeout=TIMEOUT,
                check=False,
                env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
            )
        except (OSError, subprocess.TimeoutExpired, ProtocolError):
            return None
        found: set[str] | None = None
        if done.returncode == 0:
            found = set()
            for line in done.stdout.decode("utf-8", "replace").splitlines():
                match = _TAG.search(line)
                if match:
                    found.add(match.group(1))
        with self._lock:
            self._tags[url] = found
        return found
