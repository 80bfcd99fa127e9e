"""``POST /api/ready``: can this workflow run on that instance's running ComfyUI?

``{ssh_connection, ui_home, workflow?, timeout?}`` → ``{"success": true, "ready":
{"classes", "missing", "port", "pid", "seconds", "note"}, "can_run"}``. Nothing is
restarted or changed; ``can_run`` is true when a server answered and lacks none of
the workflow's classes."""

from __future__ import annotations

from aiohttp import web

from controller.api.appkeys import SERVICE
from controller.api.handlers import read_json
from controller.core.schemas import ReadyRequest, parse_body


async def ready(request: web.Request) -> web.Response:
    body = parse_body(ReadyRequest, await read_json(request))
    result = await request.app[SERVICE].ready(body)
    can_run = result.get("classes") is not None and not result.get("missing")
    return web.json_response({"success": True, "ready": result, "can_run": can_run})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/ready", ready, name="ready")
