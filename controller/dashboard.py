"""The dashboard: one static page (``GET /``) and its assets (``/static/…``).

Plain HTML, CSS and JavaScript shipped as package data in ``controller/static``;
no build step. The page itself holds nothing secret, so it is served without the
API token; everything it shows comes from the token-checked API.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from aiohttp import web

#: Paths the auth middleware lets through without a token: the page and its assets.
PUBLIC_PREFIXES = ("/static/",)
PUBLIC_PATHS = ("/",)


def static_dir() -> Path:
    return Path(str(resources.files("controller") / "static"))


async def index(request: web.Request) -> web.FileResponse:
    response = web.FileResponse(static_dir() / "index.html")
    # The page is tiny; always fetching it keeps it in step with the controller.
    response.headers["Cache-Control"] = "no-cache"
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", index, name="dashboard")
    app.router.add_static("/static/", static_dir(), name="static", append_version=False)


def is_public(path: str) -> bool:
    """Whether ``path`` belongs to the dashboard's token-free page and assets."""
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)
