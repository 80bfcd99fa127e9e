"""Node-class patterns from a node database: matched in time linear in the input.

A ``nodename_pattern`` comes from a file an instance may have written, so it is
hostile input. Python's ``re`` backtracks: ``^(a|aa)+$`` against 41 ``a`` and a
``b`` takes half a minute and a longer class name never ends, holding the GIL
the whole time (so every other request waits, ``/healthz`` too). A length cap
bounds neither. RE2 (google-re2) never backtracks: its match time is linear in
the class name and its memory is capped at compile time, so no pattern can stall
the controller. A pattern RE2 cannot express (backreferences, lookaround) is
skipped: it resolves nothing, as if the database had no pattern for that pack.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import re2

#: RE2's compiled-program budget per pattern; a pattern that needs more is refused
#: when it is compiled (``a{1000}{1000}``), never when it is matched.
MAX_PROGRAM_BYTES = 1 << 20


def _options() -> Any:
    options = re2.Options()
    options.max_mem = MAX_PROGRAM_BYTES
    # RE2 writes each refused pattern to stderr itself; a refusal is expected here.
    options.log_errors = False
    return options


_OPTIONS = _options()


@dataclass(frozen=True)
class ClassPattern:
    """A compiled ``nodename_pattern``; ``search`` is ``re.search``'s meaning."""

    source: str
    _compiled: Any

    def search(self, class_type: str) -> bool:
        return self._compiled.search(class_type) is not None


def compile_pattern(source: str) -> ClassPattern | None:
    """The pattern, or None when RE2 refuses it (syntax, or over the memory budget)."""
    try:
        return ClassPattern(source, re2.compile(source, _OPTIONS))
    except re2.error:
        return None
