"""Request middlewares: token auth, and one place that turns every error into
``{"success": false, "error": code, "message": text}``."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from controller.api.appkeys import SETTINGS
from controller.core.errors import ControllerError, Unauthorized

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Paths anyone may fetch without the token. The dashboard page holds no data: it
#: asks for the token itself when the API answers 401.
PUBLIC_PATHS = frozenset({"/healthz", "/"})
PUBLIC_PREFIXES = ("/static/",)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}


def error_body(code: str, message: str) -> dict[str, object]:
    return {"success": False, "error": code, "message": message}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ControllerError as exc:
        return web.json_response(exc.body(), status=exc.status, headers=exc.headers())
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[SETTINGS].max_body_bytes
        return web.json_response(
            error_body("too_large", f"the request body is larger than the limit of {limit} bytes"),
            status=413,
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.text if exc.text and not exc.text.startswith(str(exc.status)) else exc.reason
        return web.json_response(
            error_body(_HTTP_CODES.get(exc.status, "http_error"), message or exc.reason),
            status=exc.status,
        )
    except Exception:
        log.exception("unexpected error answering %s %s", request.method, request.path)
        return web.json_response(
            error_body("internal", "internal error; the controller's log has the details"),
            status=500,
        )


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    token = request.app[SETTINGS].token
    public = request.path in PUBLIC_PATHS or request.path.startswith(PUBLIC_PREFIXES)
    if token and not public:
        given = ""
        header = request.headers.get("Authorization", "")
        if header.lower().startswith("bearer "):
            given = header[7:].strip()
        else:
            # EventSource cannot set headers; the dashboard passes the token in the URL.
            given = request.query.get("token", "")
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise Unauthorized("missing or wrong API token: send 'Authorization: Bearer <token>'")
    return await handler(request)
