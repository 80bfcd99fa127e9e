"""Host-key checking against the controller's own known-hosts file.

``tofu`` trusts a host's key the first time and records it; afterwards a
different key is refused, because that is what a man in the middle looks like.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import paramiko

from controller.common.errors import HostKeyChanged, HostKeyError


def host_entry(host: str, port: int) -> str:
    """The known_hosts name OpenSSH uses: ``host`` on 22, else ``[host]:port``."""
    return host if port == 22 else f"[{host}]:{port}"


class KnownHosts:
    def __init__(self, path: Path, policy: str) -> None:
        self.path = path
        self.policy = policy
        self._lock = threading.Lock()

    def _load(self) -> paramiko.HostKeys:
        keys = paramiko.HostKeys()
        if self.path.exists():
            keys.load(str(self.path))
        return keys

    def _save(self, keys: paramiko.HostKeys) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temp = self.path.with_name(self.path.name + ".tmp")
        keys.save(str(temp))
        temp.chmod(0o600)
        temp.replace(self.path)

    def check(self, host: str, port: int, key: paramiko.PKey) -> None:
        """Accept ``key`` for ``host:port`` or raise :class:`HostKeyError`."""
        if self.policy == "insecure":
            return
        entry = host_entry(host, port)
        with self._lock:
            keys = self._load()
            known = keys.lookup(entry)
            if known is not None and key.get_name() in known:
                if known[key.get_name()] == key:
                    return
                raise _changed(host, port, key)
            if known is not None:
                # Known under another key type: a different key all the same.
                raise _changed(host, port, key)
            if self.policy == "strict":
                raise HostKeyError(
                    f"the host key of {entry} is not in {self.path} and host_key_policy is "
                    f"strict; add it (e.g. ssh-keyscan -p {port} {host} >> {self.path})"
                )
            keys.add(entry, key.get_name(), key)
            self._save(keys)

    def knows(self, host: str, port: int) -> bool:
        """Whether a key for ``host:port`` is recorded (whatever the policy)."""
        with self._lock:
            return self._load().lookup(host_entry(host, port)) is not None

    def forget(self, host: str, port: int) -> bool:
        """Remove ``host:port``'s keys; True if there were any."""
        entry = host_entry(host, port)
        with self._lock:
            keys = self._load()
            if keys.lookup(entry) is None:
                return False
            with contextlib.suppress(KeyError):
                del keys[entry]
            self._save(keys)
            return True


def _changed(host: str, port: int, key: paramiko.PKey) -> HostKeyChanged:
    return HostKeyChanged(
        f"the host key of {host_entry(host, port)} has changed (now {key.get_name()} "
        f"{key.fingerprint}); refusing to connect. If the instance was really replaced, "
        f"run: nodeferry hosts forget {host}:{port}"
    )
