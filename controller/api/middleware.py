"""Request middlewares: token auth, and one place that turns every error into
``{"success": false, "error": code, "message": text}``."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from controller.api.appkeys import SETTINGS
from controller.common.errors import ControllerError, Unauthorized

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Paths anyone may fetch without the token. The dashboard page holds no data: it
#: reads the token from its URL fragment, or asks for it when the API answers 401.
PUBLIC_PATHS = frozenset({"/healthz", "/"})
#: Paths that check the token themselves: the WebSocket also takes it in its first
#: message (``controller.api.ws.authorized``).
SELF_AUTH_PATHS = frozenset({"/api/ws"})
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


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    token = request.app[SETTINGS].token
    # /api/ws checks its own token (first message or ?token=): see controller.api.ws.
    if token and not is_public(request.path) and request.path not in SELF_AUTH_PATHS:
        given = ""
        header = request.headers.get("Authorization", "")
        if header[:7].lower() == "bearer ":
            given = header[7:].strip()
        elif "token" in request.query:
            if not token_in_query_allowed(request.path):
                raise Unauthorized(
                    "?token= is accepted only on the event stream; "
                    "send 'Authorization: Bearer <token>' instead"
                )
            given = request.query["token"]
        # Header bytes that are not UTF-8 arrive as surrogates: "replace" keeps
        # them comparable (and wrong) instead of raising.
        if not hmac.compare_digest(given.encode("utf-8", "replace"), token.encode()):
            raise Unauthorized(
                "missing or wrong API token: send 'Authorization: Bearer <token>' "
                "(`nodeferry token` prints it on the controller's machine)"
            )
    return await handler(request)
