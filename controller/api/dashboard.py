"""The dashboard: one page at ``GET /``, plain HTML, CSS and JavaScript.

The files live in ``controller/api/static`` (package data; no build step). The page is
served with its stylesheet and script inlined, so it is a single request:
``/#token=…`` opens it (the script keeps the token for the tab's API calls and
removes it from the address bar; a fragment never reaches the server). The files are also
served as they are under ``/static/``.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

from aiohttp import web

_STYLESHEET = '<link rel="stylesheet" href="static/style.css">'
_SCRIPT = '<script src="static/app.js" defer></script>'


def static_dir() -> Path:
    return Path(str(resources.files("controller.api") / "static"))


@functools.cache
def page() -> str:
    """index.html with style.css and app.js inlined."""
    directory = static_dir()
    html = (directory / "index.html").read_text(encoding="utf-8")
    css = (directory / "style.css").read_text(encoding="utf-8")
    script = (directory / "app.js").read_text(encoding="utf-8")
    if _STYLESHEET not in html or _SCRIPT not in html:
        raise RuntimeError("static/index.html no longer links style.css and app.js as expected")
    # The script is plain text inside the page; "</" would end the tag early.
    script = script.replace("</", "<\\/")
    return html.replace(_STYLESHEET, f"<style>\n{css}</style>").replace(
        _SCRIPT, f"<script>\n{script}</script>"
    )


async def index(request: web.Request) -> web.Response:
    return web.Response(
        text=page(),
        content_type="text/html",
        headers={
            "Cache-Control": "no-cache",
            "Content-Security-Policy": "default-src 'self'; style-src 'unsafe-inline'; "
            "script-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", index, name="dashboard")
    app.router.add_static("/static/", static_dir(), name="static")
