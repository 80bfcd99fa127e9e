"""Writing and reading the progress document.

Writes are atomic: the new document goes to a temp file in the same directory,
is flushed and fsynced, then ``os.replace``d over the old one, and the directory
is fsynced. A reader never sees half a document, and a write that fails part way
leaves the previous document in place.
"""

import contextlib
import os
import stat
import tempfile
import threading
from pathlib import Path
from typing import Iterator, Optional

from protocol import Progress, ProtocolError, utc_now

HEARTBEAT_SECONDS = 1.0


def write_atomic(path: Path, text: str) -> None:
    directory = path.parent
    fd, tmp_name = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp_name).replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            Path(tmp_name).unlink()
        raise
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory; the rename is still atomic
    finally:
        os.close(fd)


def read_progress(path: Path) -> Optional[Progress]:
    """The document at ``path``, or None when there is none yet.

    A document that does not parse (not UTF-8 included) raises
    :class:`ProtocolError`: with atomic writes that only happens when something
    else wrote the file.
    """
    try:
        # O_NONBLOCK: a FIFO in the document's place must not block `status`.
        fd = os.open(str(path), os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ProtocolError("", "the progress document is not a regular file")
        data = handle.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError("", f"the progress document is not UTF-8: {exc}") from None
    return Progress.from_json(text)


class ProgressWriter:
    """Owns one task's progress document while its worker runs.

    Every change happens inside :meth:`change` under one lock and is written at
    once; a heartbeat thread rewrites the document at least every
    ``HEARTBEAT_SECONDS`` so readers can tell a live worker from a stuck one.
    The final document is written exactly once and nothing is written after it.
    """

    def __init__(self, path: Path, progress: Progress) -> None:
        self.path = path
        self.progress = progress
        self._lock = threading.RLock()
        self._finished = False
        self._stop = threading.Event()
        self._heartbeat: Optional[threading.Thread] = None
        self.write_errors = 0

    @property
    def finished(self) -> bool:
        return self._finished

    @contextlib.contextmanager
    def change(self) -> Iterator[Progress]:
        """Mutate the document; it is recounted and written when the block ends."""
        with self._lock:
            if self._finished:
                raise RuntimeError("the progress document is final")
            yield self.progress
            self.progress.recount()
            self._write()

    def finish(
        self,
        state: str,
        *,
        exit_code: int,
        error: Optional[str] = None,
        error_code: Optional[str] = None,
        node_status_for_unfinished: str = "cancelled",
    ) -> bool:
        """Write the final document. Returns False when it had already been written."""
        with self._lock:
            if self._finished:
                return False
            doc = self.progress
            now = utc_now()
            for node in doc.nodes:
                if not node.is_final:
                    node.status = node_status_for_unfinished
                    node.finished_at = now
                    if node.error is None and node_status_for_unfinished == "failed":
                        node.error = error
                if node.requirements_status in ("pending", "running"):
                    node.requirements_status = (
                        "failed" if node_status_for_unfinished == "failed" else "none"
                    )
            if doc.requirements_status in ("pending", "running"):
                doc.requirements_status = "failed"
            doc.move_to(state)
            doc.exit_code = exit_code
            doc.error = error
            doc.error_code = error_code
            doc.current_node = None
            doc.current_status = None
            doc.finished_at = now
            doc.recount()
            self._finished = True
            self._stop.set()
            self._write(final=True)
            return True

    def start_heartbeat(self, interval: float = HEARTBEAT_SECONDS) -> None:
        def beat() -> None:
            while not self._stop.wait(interval):
                with self._lock:
                    if self._finished:
                        return
                    self._write()

        self._heartbeat = threading.Thread(target=beat, name="heartbeat", daemon=True)
        self._heartbeat.start()

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._heartbeat is not None and self._heartbeat is not threading.current_thread():
            self._heartbeat.join(timeout=5)

    def _write(self, final: bool = False) -> None:
        self.progress.updated_at = utc_now()
        text = self.progress.to_json()
        attempts = 3 if final else 1
        for attempt in range(attempts):
            try:
                write_atomic(self.path, text)
                break
            except OSError:
                # A full disk or a vanished directory must not kill the install;
                # the previous document stays valid and the next write retries.
                self.write_errors += 1
                if attempt == attempts - 1 and final:
                    raise
