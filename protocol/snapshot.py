"""ComfyUI-Manager's snapshot format, made from a lock, so a user can restore with
the tool they already have (Manager's "Restore snapshot", ``comfy-cli``)::

    {"comfyui": <commit or null>,
     "git_custom_nodes": {url: {"hash": commit, "disabled": false}},
     "cnr_custom_nodes": {}, "file_custom_nodes": [], "pips": {name: version}}

A lock only records git clones, so ``cnr_custom_nodes`` and
``file_custom_nodes`` are always empty: every node is restored from its git URL
at its exact commit.
"""

from typing import Any, Dict

from protocol.lock import Lock


def manager_snapshot(lock: Lock) -> Dict[str, Any]:
    return {
        "comfyui": lock.comfyui,
        "git_custom_nodes": {
            node.url: {"hash": node.commit, "disabled": False}
            for node in sorted(lock.nodes, key=lambda n: n.name.lower())
        },
        "cnr_custom_nodes": {},
        "file_custom_nodes": [],
        "pips": dict(sorted(lock.packages.items())),
    }
