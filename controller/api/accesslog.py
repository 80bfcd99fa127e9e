"""The access log, with ``?token=`` values blanked out.

The event stream and WebSockets take the token in the URL (a browser cannot set
their headers); the URL is what an access log records, so it is redacted first.
"""

from __future__ import annotations

from aiohttp.web_log import AccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

REDACTED = "REDACTED"


class RedactingAccessLogger(AccessLogger):
    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        if request is not None and "token" in request.rel_url.query:
            request = request.clone(rel_url=request.rel_url.update_query(token=REDACTED))
        super().log(request, response, time)
