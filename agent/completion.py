"""What nodeferry finished for each node of a ComfyUI home, kept on the instance.

A clone left in ``custom_nodes`` says nothing about whether its requirements or
its ``install.py`` ever ran: a network blip during the first install must not
turn into a ``skipped`` on the next. So each step that succeeds is recorded with
the commit it ran against, in ``<state>/nodes/<hash of ui_home>.json``::

    {"ComfyUI-GGUF": {"url": ..., "commit": ..., "clone": "<sha>",
                       "requirements": "<sha>", "install_script": "<sha>",
                       "import": "<sha>"}}

A node is complete when every step it has was recorded at its current commit;
only then is it ``skipped``. One install per ComfyUI home runs at a time (the
lock), so the file has a single writer; a thread lock covers the clone pool.
"""

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any, Dict, Optional

from agent.progress_file import write_atomic
from protocol import mask_credentials

STEPS = ("clone", "requirements", "install_script", "import")


def records_path(state_root: Path, ui_home: Path) -> Path:
    key = hashlib.sha256(os.path.realpath(str(ui_home)).encode("utf-8")).hexdigest()[:24]
    return state_root / "nodes" / f"{key}.json"


class Completion:
    def __init__(self, path: Path, ui_home: Path) -> None:
        self.path = path
        self.ui_home = str(ui_home)
        self._lock = threading.Lock()
        self._records: Dict[str, Dict[str, Any]] = self._load()

    def _load(self) -> Dict[str, Dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        nodes = data.get("nodes") if isinstance(data, dict) else None
        if not isinstance(nodes, dict):
            return {}
        return {str(k): dict(v) for k, v in nodes.items() if isinstance(v, dict)}

    def get(self, name: str) -> Optional[Dict[str, Any]]:
        with self._lock:
            record = self._records.get(name)
            return dict(record) if record is not None else None

    def is_complete(self, name: str, commit: str, needs: "Dict[str, bool]") -> bool:
        """Whether every step the node needs was done at ``commit``.

        ``needs`` says which of requirements / install_script / import the node
        needs now.
        """
        record = self.get(name)
        if record is None or record.get("clone") != commit:
            return False
        return all(record.get(step) == commit for step, needed in needs.items() if needed)

    def missing(self, name: str, commit: str, needs: "Dict[str, bool]") -> "list[str]":
        record = self.get(name) or {}
        return [step for step, needed in needs.items() if needed and record.get(step) != commit]

    def record(self, name: str, url: str, step: str, commit: str) -> None:
        """Step ``step`` succeeded for ``name`` at ``commit``; written at once."""
        with self._lock:
            record = self._records.get(name)
            if record is None or record.get("commit") != commit:
                # A new commit invalidates what ran against the old one.
                record = {"url": mask_credentials(url), "commit": commit}
                self._records[name] = record
            record[step] = commit
            self._save()

    def forget(self, name: str) -> None:
        with self._lock:
            if self._records.pop(name, None) is not None:
                self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        body = {"ui_home": self.ui_home, "nodes": self._records}
        # Atomic and durable, like the progress document: a crash mid-write must
        # not lose what earlier tasks recorded.
        write_atomic(self.path, json.dumps(body, indent=1, sort_keys=True))
