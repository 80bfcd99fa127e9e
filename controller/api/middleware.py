"""The error middleware, the one place that turns every error into
``{"success": false, "error": code, "message": text}``, and the path rules the
guard (``controller.api.guard``) applies."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from controller.api.appkeys import SETTINGS
from controller.common.errors import ControllerError

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Paths anyone may fetch without the token. The dashboard page holds no data: it
#: reads the token from its URL fragment, or asks for it when the API answers 401.
PUBLIC_PATHS = frozenset({"/healthz", "/"})
#: Where the token may also come in the first message, after the upgrade: a
#: browser's WebSocket can send no header (``controller.api.ws``).
FIRST_MESSAGE_AUTH_PATHS = frozenset({"/api/ws"})
PUBLIC_PREFIXES = ("/static/",)
#: Paths where the token may come as ``?token=`` (besides each task's event stream).
QUERY_TOKEN_PREFIXES = ("/api/ws",)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
    421: "wrong_host",
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


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def token_in_query_allowed(path: str) -> bool:
    """Only where a browser cannot send a header: the event stream and WebSockets."""
    return path.startswith(QUERY_TOKEN_PREFIXES) or (
        path.startswith("/api/tasks/") and path.endswith("/events")
    )
