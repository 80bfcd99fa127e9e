"""Every route of the controller, in one place."""

from __future__ import annotations

from aiohttp import web

from controller.api import dashboard, events, fleet, handlers, locks, ready, ws


def setup_routes(app: web.Application) -> None:
    # The seed-compatible API an existing frontend depends on: keep these shapes.
    app.router.add_post("/ssh/install-custom-nodes", handlers.install)
    app.router.add_post("/ssh/install-custom-nodes/progress", handlers.install_progress)
    # REST companions.
    app.router.add_get("/api/tasks", handlers.list_tasks)
    app.router.add_get("/api/tasks/{task_id}", handlers.get_task)
    app.router.add_post("/api/tasks/{task_id}/cancel", handlers.cancel_task)
    app.router.add_get("/api/tasks/{task_id}/log", handlers.task_log)
    # Queueing, retry and history (issue 12).
    app.router.add_post("/api/tasks/{task_id}/retry", handlers.retry_task)
    app.router.add_get("/api/history", handlers.history)
    app.router.add_get("/healthz", handlers.healthz)
    # What a workflow, snapshot or registry ids would install (issue 10).
    app.router.add_post("/api/resolve", handlers.resolve)
    # Plan before apply (issue 30): what an install would change, changing nothing.
    app.router.add_post("/api/plan", handlers.plan)
    # Live views (issue 4) register here: the event stream and the dashboard.
    events.add_routes(app)
    dashboard.add_routes(app)
    # Issue 12: many instances at once, and one WebSocket for every subscription.
    fleet.add_routes(app)
    ws.add_routes(app)
    # Locks, snapshots and diffs (issue 11).
    locks.add_routes(app)
    # Whether a workflow can run on an instance's running ComfyUI (issue 22).
    ready.add_routes(app)
