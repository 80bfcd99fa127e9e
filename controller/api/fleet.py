"""``POST /api/fleet``, ``GET /api/fleet/{id}``, ``POST /api/fleet/{id}/cancel``:
one node set on many instances (``controller.core.fleet`` does the work)."""

from __future__ import annotations

from aiohttp import web

from controller.api.appkeys import FLEETS, SERVICE
from controller.api.handlers import read_json
from controller.core.fleet import FleetRequest, Fleets
from controller.core.fleet_store import FleetStore
from controller.core.schemas import parse_body


async def start_fleet(request: web.Request) -> web.Response:
    body = parse_body(FleetRequest, await read_json(request))
    record = await request.app[FLEETS].start(body)
    started = sum(1 for m in record.members if m.task_id)
    return web.json_response(
        {
            "success": True,
            "fleet_id": record.fleet_id,
            "message": f"Installation started on {started} of {len(record.members)} instances",
            "tasks": [
                {
                    "target": m.target,
                    "ui_home": m.ui_home,
                    "task_id": m.task_id,
                    "error_code": m.error_code,
                    "error": m.error,
                }
                for m in record.members
            ],
        },
        status=202,
    )


async def get_fleet(request: web.Request) -> web.Response:
    return web.json_response(await request.app[FLEETS].status(request.match_info["fleet_id"]))


async def cancel_fleet(request: web.Request) -> web.Response:
    return web.json_response(await request.app[FLEETS].cancel(request.match_info["fleet_id"]))


async def _close_store(app: web.Application) -> None:
    app[FLEETS].store.close()


def add_routes(app: web.Application) -> None:
    # The registry's database: fleets are shared by the controllers that share it.
    store = FleetStore(app[SERVICE].registry.db)
    app[FLEETS] = Fleets(app[SERVICE], store)
    app.on_cleanup.append(_close_store)
    app.router.add_post("/api/fleet", start_fleet)
    app.router.add_get("/api/fleet/{fleet_id}", get_fleet)
    app.router.add_post("/api/fleet/{fleet_id}/cancel", cancel_fleet)
