"""``agent.log``: every command the agent runs, its output prefixed by the node, timings."""

import shlex
import threading
from typing import IO, Optional, Sequence

from protocol import mask_credentials, utc_now


class TaskLog:
    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: str) -> "TaskLog":
        return cls(open(path, "a", encoding="utf-8", errors="replace", buffering=1))

    def line(self, prefix: Optional[str], text: str) -> None:
        # https://user:token@host/… : the log is private, but no place for a token.
        text = mask_credentials(text)
        head = f"{utc_now()} [{prefix}] " if prefix else f"{utc_now()} "
        line = head + text.rstrip("\n") + "\n"
        with self._lock:
            if self._stream.closed:
                return  # a late line (a signal after the end) has nowhere to go
            self._stream.write(line)

    def command(self, prefix: Optional[str], argv: Sequence[str], cwd: Optional[str]) -> None:
        where = f" (in {cwd})" if cwd else ""
        self.line(prefix, "$ " + shlex.join(list(argv)) + where)

    def close(self) -> None:
        with self._lock:
            self._stream.close()
