"""Which machines a request may reach.

``local`` runs installs (and their ``install.py``) on the controller's own
machine as the controller's user, so it is off unless ``allow_local`` is set. A
progress *read* for a task this controller does not know may only look on a
host it already has a key for: a read must never record a host key or open a
connection to whatever host and port a request names.
"""

from __future__ import annotations

from controller.common.config import Settings
from controller.common.errors import InvalidRequest, UnknownTask
from controller.common.target import Target
from controller.ssh.hostkeys import KnownHosts, host_entry

LOCAL_REFUSED = (
    "'local' installs on the controller's own machine, and that is off: set allow_local "
    "(NODEFERRY_ALLOW_LOCAL=1, or allow_local = true in the config file) to allow it"
)


def check_start(settings: Settings, target: Target) -> None:
    if target.kind == "local" and not settings.allow_local:
        raise InvalidRequest("ssh_connection", LOCAL_REFUSED)


def check_lookup(settings: Settings, known_hosts: KnownHosts, task_id: str, target: Target) -> None:
    """Raise unless looking for an unknown task on ``target`` opens no new door."""
    if target.kind == "local":
        if not settings.allow_local:
            raise UnknownTask(task_id, f"; it is not looked for on 'local' ({LOCAL_REFUSED})")
        return
    if not known_hosts.knows(target.host, target.port):
        raise UnknownTask(
            task_id,
            f"; it is looked for on {host_entry(target.host, target.port)} only once this "
            "controller has that host's key (start an install there first, or add the key "
            "to its known_hosts file)",
        )
