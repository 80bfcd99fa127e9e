"""Host-key checking against the controller's own known-hosts file, or, when
controllers share a registry, against the keys recorded there.

``tofu`` trusts a host's key the first time and records it; afterwards a
different key is refused, because that is what a man in the middle looks like.
With a shared registry (``store``) the first controller to meet a host records
its key for all of them; the known-hosts file is still read as keys the operator
trusts (``strict``), and never written.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import paramiko

from controller.common.errors import HostKeyChanged, HostKeyError

if TYPE_CHECKING:
    from controller.storage.shared import HostKeyStore


def host_entry(host: str, port: int) -> str:
    """The known_hosts name OpenSSH uses: ``host`` on 22, else ``[host]:port``."""
    return host if port == 22 else f"[{host}]:{port}"


class KnownHosts:
    def __init__(self, path: Path, policy: str, store: HostKeyStore | None = None) -> None:
        self.path = path
        self.policy = policy
        self.store = store
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
        if self.store is not None:
            self._check_shared(entry, host, port, key)
            return
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

    def _check_shared(self, entry: str, host: str, port: int, key: paramiko.PKey) -> None:
        store = self.store
        if store is None:  # only called when a shared store was given
            raise RuntimeError("no shared host-key store")
        with self._lock:
            from_file = self._load().lookup(entry)
        known = {name: from_file[name].get_base64() for name in from_file} if from_file else {}
        known.update(store.lookup(entry))
        if not known:
            if self.policy == "strict":
                raise HostKeyError(
                    f"the host key of {entry} is not in {self.path} nor in the shared registry "
                    f"and host_key_policy is strict; add it (e.g. ssh-keyscan -p {port} {host} "
                    f">> {self.path})"
                )
            known = store.accept_first(entry, key.get_name(), key.get_base64())
        if known.get(key.get_name()) != key.get_base64():
            raise _changed(host, port, key)

    def knows(self, host: str, port: int) -> bool:
        """Whether a key for ``host:port`` is recorded (whatever the policy)."""
        entry = host_entry(host, port)
        if self.store is not None and self.store.lookup(entry):
            return True
        with self._lock:
            return self._load().lookup(entry) is not None

    def forget(self, host: str, port: int) -> bool:
        """Remove ``host:port``'s keys; True if there were any."""
        entry = host_entry(host, port)
        if self.store is not None:
            return self.store.forget(entry)
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
