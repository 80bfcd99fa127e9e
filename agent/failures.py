"""Why a node failed, as one of ``protocol.NODE_ERROR_CODES``: the controller
retries only the transient ones (``auto_retry``), never what fails every time."""

import re

_TIMED_OUT = re.compile(r"timed out after", re.IGNORECASE)
_NOT_FOUND = re.compile(
    r"not found|does not exist|no such repository|not exported|"
    r"does not appear to be a git repository|repository .* not found",
    re.IGNORECASE,
)
_UNKNOWN_REF = re.compile(
    r"Could not find remote branch|Remote branch .* not found|couldn't find remote ref|not our ref|"
    r"not the pinned commit|did not match any|unknown revision|pathspec",
    re.IGNORECASE,
)
_AUTH = re.compile(
    r"Authentication failed|Permission denied|could not read Username|"
    r"terminal prompts disabled|access denied",
    re.IGNORECASE,
)
_NODE_DIR = re.compile(r"left it untouched|appeared while cloning", re.IGNORECASE)
_RESOLVER = re.compile(
    r"ResolutionImpossible|conflicting dependencies|No solution found|"
    r"Could not find a version that satisfies|No matching distribution|unsatisfiable",
    re.IGNORECASE,
)
_NETWORK = re.compile(
    r"Could not resolve host|Connection refused|Connection reset|Connection timed out|"
    r"unable to access|Failed to connect|Network is unreachable|early EOF|"
    r"the remote end hung up|RPC failed|unexpected disconnect|Temporary failure|"
    r"remote error|unable to connect|Name or service not known|ConnectionError|"
    r"Max retries exceeded|ReadTimeoutError",
    re.IGNORECASE,
)


def classify(step: str, message: str) -> str:
    """The node ``error_code`` for a failure of ``step`` (clone, requirements,
    install_script, other) with ``message``. Deterministic causes are checked
    first: a missing repository must never look like a network error."""
    if step == "clone":
        if _NODE_DIR.search(message):
            return "node_dir_conflict"
        if _UNKNOWN_REF.search(message):
            return "unknown_ref"
        if _NOT_FOUND.search(message):
            return "repo_not_found"
        if _AUTH.search(message):
            return "auth_failed"
        if _TIMED_OUT.search(message):
            return "timeout"
        # git only fails a clone of an existing repository for the network (the
        # agent already retried it): anything else unexplained counts as that.
        return "network"
    if step == "requirements":
        if _RESOLVER.search(message):
            return "resolver_conflict"
        if _TIMED_OUT.search(message):
            return "timeout"
        if _NETWORK.search(message):
            return "network"
        return "requirements_failed"
    if step == "install_script":
        return "timeout" if _TIMED_OUT.search(message) else "install_script_failed"
    return "failed"
