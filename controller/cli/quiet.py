"""Where library logs go in the terminal commands.

paramiko logs a failed handshake with a whole traceback, and without a handler
Python prints any WARNING to stderr (``logging.lastResort``), right above the
live display that already says what went wrong. So the client commands keep
library logs off the terminal unless ``--verbose`` asks for them.
"""

from __future__ import annotations

import logging
import sys


def configure(verbose: bool) -> None:
    """``verbose``: every log line on stderr; otherwise none on the terminal."""
    root = logging.getLogger()
    if verbose:
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.setLevel(logging.INFO)
    else:
        handler = logging.NullHandler()  # a handler, so lastResort stays quiet
    root.addHandler(handler)
