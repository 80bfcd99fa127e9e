"""The documents the controller and the agent exchange.

Standard library only, importable on Python 3.8: this package travels inside the
agent bundle to instances that have whatever Python they have.
"""

from protocol.errors import ProtocolError
from protocol.exit_codes import ExitCode
from protocol.lock import Lock, LockedNode
from protocol.progress import (
    FINAL_STATES,
    IMPORT_CHECKS,
    IMPORT_STATUSES,
    NODE_ERROR_CODES,
    NODE_FINAL_STATUSES,
    NODE_STATUSES,
    REQUIREMENTS_STATUSES,
    RESTARTED_BY,
    SCHEMA_VERSION,
    STATES,
    TRANSIENT_NODE_ERROR_CODES,
    ImportResult,
    NodeProgress,
    Progress,
    ReadyResult,
    utc_now,
)
from protocol.redact import mask_credentials
from protocol.spec import InstallSpec, NodeSpec, parse_node

__version__ = "0.1.0"

__all__ = [
    "FINAL_STATES",
    "IMPORT_CHECKS",
    "IMPORT_STATUSES",
    "NODE_ERROR_CODES",
    "NODE_FINAL_STATUSES",
    "NODE_STATUSES",
    "REQUIREMENTS_STATUSES",
    "RESTARTED_BY",
    "SCHEMA_VERSION",
    "STATES",
    "TRANSIENT_NODE_ERROR_CODES",
    "ExitCode",
    "ImportResult",
    "InstallSpec",
    "Lock",
    "LockedNode",
    "NodeProgress",
    "NodeSpec",
    "Progress",
    "ProtocolError",
    "ReadyResult",
    "__version__",
    "mask_credentials",
    "parse_node",
    "utc_now",
]
