"""One guard for every route, the WebSocket included: the site checks, then the token.

Requests from other web pages are refused, with or without a token.

A page on any site can make the browser send a "simple" POST (``text/plain``, no
preflight) to ``127.0.0.1``, and a DNS-rebinding page can even read the answers
under its own host name. So, before the token is looked at:

- ``Host`` must name this controller: a loopback name, an IP address (a browser
  only sends one when the page itself is on that address), the bound address,
  or one of the ``allowed_hosts`` (a reverse proxy's name) — else 421;
- an ``Origin`` must be the controller's own and ``Sec-Fetch-Site`` must not be
  ``cross-site`` or ``same-site`` — else 403 (the dashboard is same-origin;
  a top-level visit to the page itself stays allowed);
- a request with a body must say ``application/json`` — else 415, which a
  browser cannot send cross-origin without a preflight this service never grants.

Then, on every path but the public ones, the API token: ``Authorization: Bearer``,
or ``?token=`` where a browser cannot set a header (the event stream, the
WebSocket) — else 401. ``/api/ws`` without either is let through unchecked
(``TOKEN_CHECKED`` false): its first message must carry the token, compared by
:func:`token_matches`, the one comparison every route uses.
"""

from __future__ import annotations

import hmac
import ipaddress
from urllib.parse import urlsplit

from aiohttp import web

from controller.api.appkeys import SETTINGS, STATS
from controller.api.middleware import (
    FIRST_MESSAGE_AUTH_PATHS,
    Handler,
    is_public,
    token_in_query_allowed,
)
from controller.common.config import Settings
from controller.common.errors import (
    ControllerError,
    Forbidden,
    MisdirectedRequest,
    Unauthorized,
    UnsupportedMediaType,
)

#: Whether the guard checked this request's token (``/api/ws`` may defer it).
TOKEN_CHECKED = web.RequestKey("token_checked", bool)

LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost", "ip6-loopback"})
FOREIGN_FETCH_SITES = frozenset({"cross-site", "same-site"})


def _hostname(netloc: str) -> str | None:
    try:
        name = urlsplit("//" + netloc).hostname
    except ValueError:
        return None
    return name.rstrip(".") if name else None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def host_allowed(settings: Settings, netloc: str) -> bool:
    name = _hostname(netloc)
    if not name:
        return False
    if name in LOOPBACK_NAMES:
        return True
    if _is_ip(name):
        return True
    allowed = {h.lower().rstrip(".") for h in settings.allowed_hosts}
    return "*" in allowed or name == settings.host.lower().strip("[]") or name in allowed


def _origin_allowed(settings: Settings, origin: str, host: str) -> bool:
    if origin == "null":
        return False
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    if parts.netloc.lower() == host.lower():
        return True
    # Behind a reverse proxy the Host may be rewritten; its public name is allowed.
    name = _hostname(parts.netloc)
    return name is not None and name in {h.lower() for h in settings.allowed_hosts}


@web.middleware
async def guard_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        _check_site(request)
    except ControllerError:
        request.app[STATS].add("refused_requests")
        raise
    request[TOKEN_CHECKED] = _check_token(request)
    return await handler(request)


def token_matches(settings: Settings, given: str | None) -> bool:
    """The one token comparison: constant time, and safe for any string (header
    bytes that are not UTF-8 arrive as surrogates, as does a JSON ``\\ud800``)."""
    if not settings.token:
        return True
    if given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8", "replace"), settings.token.encode())


def _check_token(request: web.Request) -> bool:
    """Raise 401 unless the request carries the token; False where it may follow
    in the WebSocket's first message."""
    settings = request.app[SETTINGS]
    if not settings.token or is_public(request.path):
        return True
    given: str | None = None
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
    if given is None and request.path in FIRST_MESSAGE_AUTH_PATHS:
        return False
    if not token_matches(settings, given):
        raise Unauthorized(
            "missing or wrong API token: send 'Authorization: Bearer <token>' "
            "(`nodeferry token` prints it on the controller's machine)"
        )
    return True


def _check_site(request: web.Request) -> None:
    settings = request.app[SETTINGS]
    host = request.headers.get("Host")
    if host is not None and not host_allowed(settings, host):
        raise MisdirectedRequest(
            f"this controller does not answer to the host name {host!r}; if it sits behind "
            "a reverse proxy, add that name to the allowed_hosts setting"
        )
    page_visit = request.method in ("GET", "HEAD") and is_public(request.path)
    if not page_visit:
        origin = request.headers.get("Origin")
        if origin is not None and not _origin_allowed(settings, origin, host or ""):
            raise Forbidden(
                f"requests from the web page at {origin!r} are refused; use the dashboard "
                "this controller serves, or a client that sends no Origin"
            )
        if request.headers.get("Sec-Fetch-Site", "").lower() in FOREIGN_FETCH_SITES:
            raise Forbidden("requests from other web sites are refused")
    if request.body_exists and request.content_type != "application/json":
        raise UnsupportedMediaType(
            f"the request body must be JSON sent as 'Content-Type: application/json', "
            f"not {request.content_type!r}"
        )
