"""Locks through the controller: a finished task's lock (and its ComfyUI-Manager
snapshot), and what differs on an instance from a lock.

A task's lock is the agent's ``tasks/<id>/lock.json``, read through the task's
own transport (SFTP over SSH) in the executor. It is written once, just before
the final progress document, and never changes after: it is read once and kept.

A diff runs ``AGENT diff --lock -`` on the target with the lock on stdin, through
the same upload-once-and-run path as a start. It changes nothing on the
instance, but it is an explicit operation on a target the caller names, like a
start: it connects under the same host-key policy as a start does.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from controller.common.errors import InvalidRequest, NoLock, RemoteError, Unreachable
from controller.common.target import parse_target
from controller.core.access import check_start
from controller.core.live import Tasks
from controller.core.reader import Reader
from controller.core.schemas import DiffRequest
from protocol import ExitCode, ProtocolError
from protocol import fields as checks
from protocol.lock import Lock
from protocol.snapshot import manager_snapshot

#: Locks kept in memory; each is at most a few hundred kB, and re-reading one is cheap.
CACHED_LOCKS = 64


class Locks:
    def __init__(self, tasks: Tasks, reader: Reader) -> None:
        self.tasks = tasks
        self.reader = reader
        self._cache: OrderedDict[str, Lock] = OrderedDict()

    async def lock(self, task_id: object) -> Lock:
        """The lock the task wrote; :class:`NoLock` while it runs or when it wrote none."""
        live = await self.tasks.get(task_id)
        record = live.record
        cached = self._cache.get(record.task_id)
        if cached is not None:
            self._cache.move_to_end(record.task_id)
            return cached
        view = await self.reader.progress(record.task_id)
        progress = view.progress
        if not progress.is_final:
            raise NoLock(
                record.task_id,
                f"task {record.task_id} is still {progress.state.replace('_', ' ')}; its lock "
                "is written when it finishes (follow it, then ask again)",
            )
        if not record.launched:
            raise NoLock(
                record.task_id,
                f"task {record.task_id} never ran on {record.target} "
                f"({progress.error or progress.state}), so it wrote no lock",
            )
        transport = self.tasks.transports.get(record.target)
        path = f"tasks/{record.task_id}/lock.json"

        def read() -> bytes | None:
            if transport.stat(path) is None:
                return None
            return transport.read(path)

        try:
            data = await self.tasks.run(read)
        except (OSError, EOFError) as exc:
            raise Unreachable(
                f"cannot read the lock of task {record.task_id} on {record.target}: {exc}"
            ) from None
        if data is None:
            raise NoLock(
                record.task_id,
                f"task {record.task_id} ended ({progress.state}) without a lock on "
                f"{record.target}: its agent wrote none, or its files were cleaned up",
            )
        try:
            lock = Lock.from_json(data.decode("utf-8"), allow_file_urls=True)
        except (ProtocolError, UnicodeDecodeError) as exc:
            raise RemoteError(
                f"the lock of task {record.task_id} on {record.target} is unreadable: {exc}"
            ) from None
        self._cache[record.task_id] = lock
        while len(self._cache) > CACHED_LOCKS:
            self._cache.popitem(last=False)
        return lock

    async def snapshot(self, task_id: object) -> dict[str, Any]:
        """The task's lock in ComfyUI-Manager's snapshot format."""
        return manager_snapshot(await self.lock(task_id))

    async def diff(self, request: DiffRequest) -> dict[str, Any]:
        """``{"equal", "nodes": {…}, "packages": {…}}`` for the instance against the lock."""
        target = parse_target(request.ssh_connection, self.tasks.settings)
        check_start(self.tasks.settings, target)  # 'local' runs the agent here: opt-in
        try:
            ui_home = checks.remote_path(request.ui_home, "ui_home")
            python = (
                checks.python_command(request.python, "python")
                if request.python is not None
                else None
            )
            # Nothing is cloned by a diff, so a lock of file:// clones compares too.
            lock = Lock.from_dict(request.lock, "lock", allow_file_urls=True)
        except ProtocolError as exc:
            raise InvalidRequest(exc.field, exc.message) from None
        args = ["diff", "--ui-home", ui_home]
        if python is not None:
            args += ["--python", python]
        args += ["--lock", "-"]
        transport = self.tasks.transports.get(target)
        reply = await self.tasks.run(
            transport.run_agent,
            args,
            stdin=lock.to_json().encode(),
            timeout=self.tasks.settings.command_timeout,
        )
        document = reply.document
        if reply.exit_status in (ExitCode.OK, ExitCode.INSTALL_FAILED) and isinstance(
            document.get("equal"), bool
        ):
            return {
                "equal": document["equal"],
                "nodes": document.get("nodes", {}),
                "packages": document.get("packages", {}),
            }
        message = str(document.get("message") or document.get("error") or "no message")
        if reply.exit_status == ExitCode.INVALID:
            field = document.get("field")
            raise InvalidRequest(field if isinstance(field, str) else "", message)
        raise RemoteError(
            f"the agent on {target} could not diff {ui_home} (exit {reply.exit_status}): {message}"
        )
