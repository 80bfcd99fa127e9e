"""Locks over HTTP: ``GET /api/tasks/{id}/lock``, ``GET /api/tasks/{id}/snapshot``
(ComfyUI-Manager's format) and ``POST /api/diff``."""

from __future__ import annotations

from aiohttp import web

from controller.api.appkeys import SERVICE
from controller.api.handlers import read_json
from controller.core.schemas import DiffRequest, parse_body


async def task_lock(request: web.Request) -> web.Response:
    lock = await request.app[SERVICE].lock(request.match_info["task_id"])
    return web.json_response(lock.to_dict())


async def task_snapshot(request: web.Request) -> web.Response:
    snapshot = await request.app[SERVICE].snapshot(request.match_info["task_id"])
    return web.json_response(snapshot)


async def diff(request: web.Request) -> web.Response:
    body = parse_body(DiffRequest, await read_json(request))
    result = await request.app[SERVICE].diff(body)
    return web.json_response(
        {
            "success": True,
            "equal": result["equal"],
            "differences": {"nodes": result["nodes"], "packages": result["packages"]},
        }
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/tasks/{task_id}/lock", task_lock, name="task_lock")
    app.router.add_get("/api/tasks/{task_id}/snapshot", task_snapshot, name="task_snapshot")
    app.router.add_post("/api/diff", diff, name="diff")
