"""Run a node's ``install.py`` the way ComfyUI-Manager does, and hear what it reports.

ComfyUI-Manager runs ``<ComfyUI's python> install.py`` with the node folder as
the working directory and ``COMFYUI_PATH`` (and, in recent versions,
``COMFYUI_MODEL_PATH``) set; so does this, with stdin closed. Many scripts catch
their own failures, print ``[ERROR] ...`` or a traceback, and exit 0: the node
stays ``installed`` but carries warnings that quote those lines. A non-zero exit
fails the node.
"""

import re
from pathlib import Path
from typing import Dict, List, Optional

from agent import requirements

MAX_WARNINGS = 10
MAX_WARNING_CHARS = 300
_ALARM = re.compile(
    r"^\s*(\[[^\]]*\]\s*)?\[?(ERROR|FATAL|CRITICAL)\]?\b|"
    r"\b(has failed|installation failed|failed to install)\b",
    re.IGNORECASE,
)


def script_env(ui_home: Path) -> Dict[str, str]:
    env = requirements.pip_env()
    env["COMFYUI_PATH"] = str(ui_home)
    env["COMFYUI_MODEL_PATH"] = str(ui_home / "models")
    return env


class WarningCollector:
    """Fed every output line; keeps the lines a person must see."""

    def __init__(self) -> None:
        self.warnings: List[str] = []
        self._in_traceback = False
        self._traceback_from: Optional[str] = None

    def _add(self, text: str) -> None:
        text = text.strip()
        if len(text) > MAX_WARNING_CHARS:
            text = text[: MAX_WARNING_CHARS - 3] + "..."
        if text and text not in self.warnings and len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(text)

    def feed(self, line: str) -> None:
        if line.startswith("Traceback (most recent call last)"):
            self._in_traceback = True
            self._traceback_from = None
            return
        if self._in_traceback:
            if line.startswith((" ", "\t")) or not line.strip():
                if self._traceback_from is None and line.strip().startswith("File "):
                    self._traceback_from = line.strip()
                return
            # The first unindented line after a traceback is the exception itself.
            self._in_traceback = False
            self._add("install.py printed a traceback: " + line)
            return
        if _ALARM.search(line):
            self._add(line)
