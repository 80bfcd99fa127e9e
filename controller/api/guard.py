"""Requests from other web pages are refused, with or without a token.

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
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from aiohttp import web

from controller.api.appkeys import SETTINGS, STATS
from controller.api.middleware import Handler, is_public
from controller.common.config import Settings
from controller.common.errors import (
    ControllerError,
    Forbidden,
    MisdirectedRequest,
    UnsupportedMediaType,
)

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
        _check(request)
    except ControllerError:
        request.app[STATS].add("refused_requests")
        raise
    return await handler(request)


def _check(request: web.Request) -> None:
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
