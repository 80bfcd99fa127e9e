"""The HTTP API's response shapes that the seed frontend depends on.

Kept here, beside the progress document they are made from, so the controller,
its clients and the tests build them one way.
"""

from typing import Any, Dict

from protocol.progress import Progress


def progress_response(progress: Progress, *, stale: bool = False) -> Dict[str, Any]:
    """The body of ``POST /ssh/install-custom-nodes/progress`` for one task.

    In progress: ``in_progress`` true. Finished (any final state): ``in_progress``
    false, ``completed`` true, and ``success`` true only when the install
    completed with no failed node and no workflow class missing from the
    restarted ComfyUI. ``stale`` marks a last known document served
    while the instance cannot be reached.
    """
    doc = progress.to_dict()
    body: Dict[str, Any] = {"success": True, "in_progress": not progress.is_final}
    body.update(doc)
    if progress.is_final:
        body.update(
            success=progress.succeeded,
            completed=True,
            successful_clones=progress.successful,
            failed_clones=progress.failed,
        )
    else:
        body["completed"] = False
    body["stale"] = stale
    return body
