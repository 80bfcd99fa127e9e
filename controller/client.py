"""A client for the controller's HTTP API, async (:class:`AsyncClient`) and sync (:class:`Client`).

This is the workflow executor's half of nodeferry: start an install, follow it,
and get the final progress document back. ``wait`` follows the task's event
stream (``GET /api/tasks/{id}/events``) when the controller offers one and falls
back to polling; either way it returns as soon as the task is final.

Progress documents are plain dicts in the shape of
:func:`protocol.api.progress_response` (``in_progress``, ``completed``,
``success``, ``state``, ``nodes``, ...).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import socket
import threading
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

import aiohttp

from controller.common.apitoken import discover_token
from controller.core.install_fields import InstallField, options_doc
from controller.core.schemas import INSTALL_FIELDS

Document = dict[str, Any]
ProgressCallback = Callable[[Document], Awaitable[None] | None]
NodeRef = str | dict[str, Any]
_T = TypeVar("_T")

#: HTTP statuses that mean "try again shortly" rather than "this failed".
TRANSIENT_STATUSES = frozenset({502, 503, 504})


# -- errors --------------------------------------------------------------------


def unreachable_reason(exc: BaseException) -> str:
    """Why no answer came, in words (aiohttp's own text names ``ssl:default`` and
    socket call details that mean nothing to the person at the terminal)."""
    if isinstance(exc, asyncio.TimeoutError):
        return "no answer in time"
    if isinstance(exc, aiohttp.ClientConnectorError):
        error = exc.os_error
        if isinstance(error, ConnectionRefusedError):
            return "connection refused (is `nodeferry serve` running there?)"
        if isinstance(error, socket.gaierror):
            return f"unknown host {exc.host!r}"
        return error.strerror or type(error).__name__
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection"
    return str(exc) or type(exc).__name__


def _entries(body: Document) -> list[Document]:
    tasks = body.get("tasks")
    if not isinstance(tasks, list):
        raise ApiError(200, "bad_response", "the answer has no 'tasks'", body)
    return [task for task in tasks if isinstance(task, dict)]


class ClientError(Exception):
    """Anything that went wrong talking to the controller."""


class ControllerUnreachable(ClientError):
    """No HTTP answer at all: connection refused, DNS, reset, request timeout."""


class ApiError(ClientError):
    """The controller answered with an error body ``{"success": false, "error", "message"}``."""

    def __init__(self, status: int, code: str, message: str, body: Document | None = None) -> None:
        super().__init__(f"{message} (HTTP {status}, {code})")
        self.status = status
        self.code = code
        self.message = message
        self.body: Document = body or {}


class BadRequest(ApiError):
    """400/413/422: the request was refused; nothing was started or changed."""


class Unauthorized(ApiError):
    """401/403: a missing or wrong API token."""


class TaskNotFound(ApiError):
    """404: the controller does not know this task."""


class Conflict(ApiError):
    """409: an install is already running for that host and ComfyUI home."""

    @property
    def task_id(self) -> str | None:
        value = self.body.get("task_id")
        return value if isinstance(value, str) else None


class ServiceUnavailable(ApiError):
    """503 (or 502/504): the instance or the controller is temporarily unreachable.

    For a progress read, ``body`` still holds the last known document (``"stale": true``).
    """


class WaitTimeout(ClientError):
    """``wait`` ran out of time before the task finished."""

    def __init__(
        self, task_id: str, timeout: float, last: Document | None, cancelled: bool
    ) -> None:
        state = last.get("state") if last else "unknown"
        action = "; the install was cancelled" if cancelled else "; the install keeps running"
        super().__init__(
            f"task {task_id} did not finish within {timeout:g} s (last state: {state}){action}"
        )
        self.task_id = task_id
        self.timeout = timeout
        self.last = last
        self.cancelled = cancelled


def _error_class(status: int) -> type[ApiError]:
    if status in (400, 413, 422):
        return BadRequest
    if status in (401, 403):
        return Unauthorized
    if status == 404:
        return TaskNotFound
    if status == 409:
        return Conflict
    if status in TRANSIENT_STATUSES:
        return ServiceUnavailable
    return ApiError


def api_error(status: int, text: str) -> ApiError:
    """The exception for an error response, from its status and body text."""
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {}
    code = body.get("error")
    message = body.get("message")
    return _error_class(status)(
        status,
        code if isinstance(code, str) else f"http_{status}",
        message if isinstance(message, str) else (text.strip()[:200] or f"HTTP {status}"),
        body,
    )


# -- values ----------------------------------------------------------------------


@dataclass(frozen=True)
class LogChunk:
    """A piece of a task's agent log. ``eof`` means nothing more is there *yet*."""

    data: str
    next_offset: int
    eof: bool
    #: What the controller itself says about the task (ignored options, why it
    #: failed before the agent ran): lines to show before the agent's log.
    notes: list[str] = field(default_factory=list)


def is_final(document: Document) -> bool:
    """Whether a progress document is the task's last word."""
    return document.get("in_progress") is False or bool(document.get("completed"))


@dataclass
class ServerSentEvent:
    event: str = "message"
    data: str = ""
    id: str | None = None


async def iter_sse(content: aiohttp.StreamReader) -> AsyncIterator[ServerSentEvent]:
    """Parse a ``text/event-stream`` body into events (comments are skipped)."""
    event = ServerSentEvent()
    data_lines: list[str] = []
    while True:
        raw = await content.readline()
        if not raw:
            return
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data_lines:
                event.data = "\n".join(data_lines)
                yield event
            event = ServerSentEvent()
            data_lines = []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event.event = value
        elif name == "data":
            data_lines.append(value)
        elif name == "id":
            event.id = value


# -- the install's options ------------------------------------------------------

#: What :meth:`AsyncClient.start` takes as keywords: every field of the install
#: request (``controller.core.schemas.InstallRequest``, the one declaration) but
#: those it takes as arguments.
START_OPTIONS: dict[str, InstallField] = {
    f.name: f for f in INSTALL_FIELDS if f.name not in ("ssh_connection", "ui_home", "nodes")
}
#: :meth:`AsyncClient.start_fleet`'s: the same, with ``ui_home`` shared by the targets.
FLEET_OPTIONS: dict[str, InstallField] = {
    f.name: f for f in INSTALL_FIELDS if f.name not in ("ssh_connection", "nodes")
}


def _install_payload(
    given: Document, options: dict[str, Any], known: dict[str, InstallField]
) -> Document:
    """The request body: ``given`` and each option that is set and not its default
    (so an older controller, which lacks a newer field, still accepts the rest)."""
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(
            f"unknown install option(s) {', '.join(unknown)}; the options are: " + ", ".join(known)
        )
    payload: Document = {}
    for name, value in {**given, **options}.items():
        if value is None:
            continue
        field = known.get(name)
        if field is not None and not field.required and _same(value, field.default):
            continue
        if isinstance(value, (list, tuple)):
            value = list(value)
        payload[name] = value
    return payload


def _same(value: Any, default: Any) -> bool:
    # True == 1 in Python; an option of 1 is not the default True.
    return type(value) is type(default) and value == default


# -- the async client ----------------------------------------------------------


class AsyncClient:
    """An aiohttp client for one controller.

    ``retries`` transient answers (502/503/504, connection errors) are retried
    with a short backoff on every call before the error is raised.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        request_timeout: float = 30.0,
        retries: int = 3,
        retry_delay: float = 0.5,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        # None: NODEFERRY_TOKEN, else (for a controller on this machine) the token
        # in its data dir (NODEFERRY_DATA_DIR or the default). "" sends none.
        self.token = discover_token(self.base_url) if token is None else token
        self.request_timeout = request_timeout
        self.retries = retries
        self.retry_delay = retry_delay
        self._session = session
        self._owns_session = session is None
        #: False once the controller has answered the event stream with 404/405:
        #: ``wait`` then polls without asking again.
        self.events_supported = True

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def _session_or_new(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
            self._owns_session = True
        return self._session

    async def _request_once(self, method: str, path: str, payload: Any | None) -> Document:
        session = self._session_or_new()
        try:
            async with session.request(
                method,
                self.base_url + path,
                json=payload,
                headers=self._headers(),
                timeout=aiohttp.ClientTimeout(total=self.request_timeout),
            ) as response:
                text = await response.text()
                if response.status >= 400:
                    raise api_error(response.status, text)
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
            raise ControllerUnreachable(
                f"cannot reach the controller at {self.base_url}: {unreachable_reason(exc)}"
            ) from exc
        try:
            body = json.loads(text)
        except ValueError:
            raise ApiError(response.status, "bad_response", "the answer is not JSON") from None
        if not isinstance(body, dict):
            raise ApiError(response.status, "bad_response", "the answer is not a JSON object")
        return body

    async def _request(self, method: str, path: str, payload: Any | None = None) -> Document:
        attempt = 0
        while True:
            try:
                return await self._request_once(method, path, payload)
            except (ServiceUnavailable, ControllerUnreachable):
                if attempt >= self.retries:
                    raise
            attempt += 1
            await asyncio.sleep(self.retry_delay * attempt)

    # -- the API -----------------------------------------------------------------

    async def health(self) -> Document:
        return await self._request("GET", "/healthz")

    async def start(
        self,
        ssh_connection: str,
        ui_home: str,
        nodes: Sequence[NodeRef] | None = None,
        **options: Any,
    ) -> str:
        """Start an install; returns its task id. Raises :class:`Conflict` when one
        runs in that ComfyUI home, unless ``queue`` (then the install waits its turn,
        state ``queued``). ``auto_retry`` retries transient failures that often.

        ``nodes`` (URLs or Comfy Registry ids), ``workflow`` and ``snapshot`` say what
        to install, in any combination; none of them installs the controller's
        ``default_nodes``. ``lock``: a lock (``lock.json``) to reproduce instead.
        Every other keyword is an option of the install by its API name; one left
        out (or None) is the controller's default. A name that is no option is a
        :class:`TypeError`.

        ``verify``: True (ComfyUI's own start judges each node where the home is a
        ComfyUI, a bare import where not; the controller's default), False,
        ``"comfyui"`` (always ComfyUI's start) or ``"import"`` (always the bare import).
        """
        payload = _install_payload(
            {"ssh_connection": ssh_connection, "ui_home": ui_home, "nodes": nodes},
            options,
            START_OPTIONS,
        )
        # Not retried on 503: a start is not idempotent.
        body = await self._request_once("POST", "/ssh/install-custom-nodes", payload)
        task_id = body.get("task_id")
        if not isinstance(task_id, str):
            raise ApiError(202, "bad_response", "the start answer has no task_id", body)
        return task_id

    async def plan(
        self,
        ssh_connection: str,
        ui_home: str,
        nodes: Sequence[NodeRef] | None = None,
        **options: Any,
    ) -> str:
        """Start a plan (``POST /api/plan``): what :meth:`start` with the same
        arguments would change, changing nothing; returns its task id. The final
        document's ``plan`` holds the answer; ``start(..., plan=task_id)`` applies it."""
        payload = _install_payload(
            {"ssh_connection": ssh_connection, "ui_home": ui_home, "nodes": nodes},
            options,
            START_OPTIONS,
        )
        body = await self._request_once("POST", "/api/plan", payload)
        task_id = body.get("task_id")
        if not isinstance(task_id, str):
            raise ApiError(202, "bad_response", "the plan answer has no task_id", body)
        return task_id

    async def resolve(
        self,
        *,
        nodes: Sequence[NodeRef] | None = None,
        workflow: Document | None = None,
        snapshot: Document | str | None = None,
        ssh_connection: str | None = None,
        ui_home: str | None = None,
    ) -> Document:
        """The dry run: ``{"nodes", "unresolved", "ambiguous", "warnings", "node_db"}``."""
        fields = {
            "nodes": list(nodes) if nodes else None,
            "workflow": workflow,
            "snapshot": snapshot,
            "ssh_connection": ssh_connection,
            "ui_home": ui_home,
        }
        payload = {key: value for key, value in fields.items() if value is not None}
        return await self._request_once("POST", "/api/resolve", payload)

    async def progress(self, task_id: str, *, allow_stale: bool = False) -> Document:
        """The task's progress document.

        While the instance is unreachable the controller answers 503 with the last
        known document; with ``allow_stale`` that document (``"stale": true``) is
        returned once the retries are used up, instead of raising.
        """
        try:
            return await self._request(
                "POST", "/ssh/install-custom-nodes/progress", {"task_id": task_id}
            )
        except ServiceUnavailable as exc:
            if allow_stale and exc.body.get("task_id") == task_id:
                return exc.body
            raise

    async def cancel(self, task_id: str) -> Document:
        return await self._request("POST", f"/api/tasks/{task_id}/cancel")

    async def task(self, task_id: str) -> Document:
        return await self._request("GET", f"/api/tasks/{task_id}")

    async def tasks(self, prefix: str | None = None) -> list[Document]:
        """The newest page of tasks (see :meth:`tasks_page` for the others); with
        ``prefix``, those whose id starts so."""
        query = f"?prefix={urllib.parse.quote(prefix, safe='')}" if prefix is not None else ""
        return _entries(await self._request("GET", "/api/tasks" + query))

    async def tasks_page(self, limit: int = 100, cursor: str | None = None) -> Document:
        """``{"tasks": [...], "next_cursor"}``: pass ``next_cursor`` for the next page."""
        query = {"limit": str(limit), **({"cursor": cursor} if cursor else {})}
        return await self._request("GET", "/api/tasks?" + urllib.parse.urlencode(query))

    async def retry(self, task_id: str, *, queue: bool = False, auto_retry: int = 0) -> Document:
        """Start a new task with the nodes of ``task_id`` that failed or were cancelled;
        returns ``{"task_id", "state", …}`` (202)."""
        payload: Document = {"queue": queue, **({"auto_retry": auto_retry} if auto_retry else {})}
        return await self._request_once("POST", f"/api/tasks/{task_id}/retry", payload)

    async def history(
        self,
        *,
        target: str | None = None,
        ui_home: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> Document:
        """``{"tasks": [...], "next_before"}``: what was installed where, newest first."""
        query = {"limit": str(limit)}
        for name, value in (("target", target), ("ui_home", ui_home), ("before", before)):
            if value:
                query[name] = value
        return await self._request("GET", "/api/history?" + urllib.parse.urlencode(query))

    async def start_fleet(
        self,
        targets: Sequence[str | Document],
        nodes: Sequence[NodeRef] | None = None,
        **options: Any,
    ) -> Document:
        """Start one node set on many instances (``POST /api/fleet``); the 202 body,
        with ``fleet_id`` and one entry per target in ``tasks``. The node set is
        named as for :meth:`start`: ``nodes``, ``workflow``, ``snapshot``, or none;
        ``ui_home`` and ``python`` may instead be given per target
        (``{"ssh_connection", "ui_home", "python"}``), and every option of
        :meth:`start` applies to each instance."""
        payload = _install_payload(
            {"targets": list(targets), "nodes": nodes}, options, FLEET_OPTIONS
        )
        # Not retried on 503: a start is not idempotent.
        body = await self._request_once("POST", "/api/fleet", payload)
        if not isinstance(body.get("fleet_id"), str):
            raise ApiError(202, "bad_response", "the fleet answer has no fleet_id", body)
        return body

    async def fleet(self, fleet_id: str) -> Document:
        """The fleet's aggregate (``GET /api/fleet/{id}``)."""
        return await self._request("GET", f"/api/fleet/{fleet_id}")

    async def cancel_fleet(self, fleet_id: str) -> Document:
        return await self._request("POST", f"/api/fleet/{fleet_id}/cancel")

    async def lock(self, task_id: str) -> Document:
        """The lock a finished task wrote (404 ``no_lock`` while it runs)."""
        return await self._request("GET", f"/api/tasks/{task_id}/lock")

    async def snapshot(self, task_id: str) -> Document:
        """The task's lock in ComfyUI-Manager's snapshot format."""
        return await self._request("GET", f"/api/tasks/{task_id}/snapshot")

    async def diff(
        self, ssh_connection: str, ui_home: str, lock: Document, *, python: str | None = None
    ) -> Document:
        """What differs on an instance from ``lock``: ``{"success", "equal",
        "differences": {"nodes", "packages"}}``. Changes nothing on the instance."""
        payload: Document = {"ssh_connection": ssh_connection, "ui_home": ui_home, "lock": lock}
        if python is not None:
            payload["python"] = python
        return await self._request("POST", "/api/diff", payload)

    async def ready(
        self,
        ssh_connection: str,
        ui_home: str,
        workflow: Document | None = None,
        *,
        timeout: float | None = None,
    ) -> Document:
        """Can ``workflow`` run on the instance's running ComfyUI? ``{"success",
        "can_run", "ready": {"classes", "missing", "port", "pid", "note", …}}``.
        Restarts and changes nothing."""
        payload: Document = {"ssh_connection": ssh_connection, "ui_home": ui_home}
        if workflow is not None:
            payload["workflow"] = workflow
        if timeout is not None:
            payload["timeout"] = timeout
        return await self._request("POST", "/api/ready", payload)

    async def logs(self, task_id: str, offset: int = 0) -> LogChunk:
        body = await self._request("GET", f"/api/tasks/{task_id}/log?offset={int(offset)}")
        return LogChunk(
            data=str(body.get("data", "")),
            next_offset=int(body.get("next_offset", offset)),
            eof=bool(body.get("eof", True)),
            notes=[str(note) for note in body.get("notes", []) if isinstance(note, str)],
        )

    async def follow_logs(
        self, task_id: str, offset: int = 0, *, poll_interval: float = 1.0
    ) -> AsyncIterator[LogChunk]:
        """Yield the log from ``offset`` as it grows, until the task is final and all is read."""
        while True:
            chunk = await self.logs(task_id, offset)
            if chunk.data:
                yield chunk
            offset = chunk.next_offset
            if chunk.eof:
                done = is_final(await self.progress(task_id, allow_stale=True))
                if done:
                    # The last lines may land between the read and the check.
                    tail = await self.logs(task_id, offset)
                    if tail.data:
                        yield tail
                    if tail.eof:
                        return
                    offset = tail.next_offset
                    continue
                await asyncio.sleep(poll_interval)

    async def events(self, task_id: str, *, idle_timeout: float = 60.0) -> AsyncIterator[Document]:
        """Progress documents pushed by the controller's event stream, ending with the final one.

        Raises :class:`ApiError` (404 for an unknown task; also when the controller
        has no event stream) or :class:`ControllerUnreachable`. ``idle_timeout``
        bounds the silence between two lines (the server sends heartbeats).
        """
        session = self._session_or_new()
        headers = self._headers()
        headers["Accept"] = "text/event-stream"
        try:
            async with session.get(
                f"{self.base_url}/api/tasks/{task_id}/events",
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=None, sock_read=idle_timeout),
            ) as response:
                if response.status >= 400:
                    raise api_error(response.status, await response.text())
                if not response.content_type.startswith("text/event-stream"):
                    raise ApiError(response.status, "no_event_stream", "not an event stream")
                async for event in iter_sse(response.content):
                    if event.event not in ("progress", "final"):
                        continue
                    document = json.loads(event.data)
                    if isinstance(document, dict):
                        yield document
                        if event.event == "final" or is_final(document):
                            return
        except (
            aiohttp.ClientConnectionError,
            aiohttp.ClientPayloadError,
            asyncio.TimeoutError,
        ) as exc:
            raise ControllerUnreachable(
                f"the event stream from {self.base_url} broke: {exc or type(exc).__name__}"
            ) from exc

    async def wait(
        self,
        task_id: str,
        *,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
        poll_interval: float = 2.0,
        cancel_on_timeout: bool = False,
    ) -> Document:
        """Follow the task until it is final and return the final progress document.

        ``on_progress`` (a function or a coroutine function) gets each new
        document. Runs on the event stream while the controller offers it and
        polls every ``poll_interval`` s otherwise; a broken stream or a 503 is
        retried, not fatal. After ``timeout`` s raises :class:`WaitTimeout`,
        cancelling the install first when ``cancel_on_timeout``.
        """
        last: list[Document] = []

        async def report(document: Document) -> None:
            if last and last[-1] == document:
                return
            last[:] = [document]
            if on_progress is not None:
                result = on_progress(document)
                if asyncio.iscoroutine(result):
                    await result

        try:
            return await asyncio.wait_for(
                self._follow(task_id, report, poll_interval), timeout=timeout
            )
        except asyncio.TimeoutError:
            cancelled = False
            if cancel_on_timeout:
                try:
                    final = await self.cancel(task_id)
                except ClientError:
                    pass
                else:
                    cancelled = True
                    last[:] = [final]
            raise WaitTimeout(
                task_id, timeout or 0.0, last[-1] if last else None, cancelled
            ) from None

    async def _follow(
        self,
        task_id: str,
        report: Callable[[Document], Awaitable[None]],
        poll_interval: float,
    ) -> Document:
        while True:
            if self.events_supported:
                try:
                    async for document in self.events(task_id):
                        await report(document)
                        if is_final(document):
                            return document
                except ApiError as exc:
                    if isinstance(exc, TaskNotFound) and exc.code == "unknown_task":
                        raise
                    if exc.status in (404, 405, 406, 501) or exc.code == "no_event_stream":
                        # This controller has no event stream: poll from now on.
                        self.events_supported = False
                    elif not isinstance(exc, ServiceUnavailable):
                        raise
                except ControllerUnreachable:
                    pass  # a dropped stream: poll once, then reconnect
            polled = await self._poll_once(task_id)
            if polled is not None:
                await report(polled)
                if is_final(polled):
                    return polled
            await asyncio.sleep(poll_interval)

    async def _poll_once(self, task_id: str) -> Document | None:
        try:
            return await self.progress(task_id, allow_stale=True)
        except (ServiceUnavailable, ControllerUnreachable):
            return None


# -- the sync client -----------------------------------------------------------


class Client:
    """The blocking twin of :class:`AsyncClient`, for code without an event loop.

    It runs an :class:`AsyncClient` on a private event loop in a background
    thread, so it works from any thread, also one where another loop runs (a
    notebook, a GUI, Playwright). ``wait``'s ``on_progress`` is called in that
    background thread.
    """

    def __init__(self, base_url: str, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="nodeferry-client", daemon=True
        )
        self._thread.start()
        self._async = AsyncClient(base_url, **options)

    @property
    def base_url(self) -> str:
        return self._async.base_url

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self._async.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def _run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. Ctrl-C while waiting: stop the work too
            raise

    def health(self) -> Document:
        return self._run(self._async.health())

    def start(
        self, ssh_connection: str, ui_home: str, nodes: Sequence[NodeRef] | None = None, **kw: Any
    ) -> str:
        """:meth:`AsyncClient.start`, blocking."""
        return self._run(self._async.start(ssh_connection, ui_home, nodes, **kw))

    def plan(
        self, ssh_connection: str, ui_home: str, nodes: Sequence[NodeRef] | None = None, **kw: Any
    ) -> str:
        """:meth:`AsyncClient.plan`, blocking."""
        return self._run(self._async.plan(ssh_connection, ui_home, nodes, **kw))

    def resolve(self, **fields: Any) -> Document:
        return self._run(self._async.resolve(**fields))

    def progress(self, task_id: str, *, allow_stale: bool = False) -> Document:
        return self._run(self._async.progress(task_id, allow_stale=allow_stale))

    def cancel(self, task_id: str) -> Document:
        return self._run(self._async.cancel(task_id))

    def task(self, task_id: str) -> Document:
        return self._run(self._async.task(task_id))

    def tasks(self, prefix: str | None = None) -> list[Document]:
        return self._run(self._async.tasks(prefix))

    def start_fleet(
        self, targets: Sequence[str | Document], nodes: Sequence[NodeRef] | None = None, **kw: Any
    ) -> Document:
        return self._run(self._async.start_fleet(targets, nodes, **kw))

    def fleet(self, fleet_id: str) -> Document:
        return self._run(self._async.fleet(fleet_id))

    def cancel_fleet(self, fleet_id: str) -> Document:
        return self._run(self._async.cancel_fleet(fleet_id))

    def tasks_page(self, limit: int = 100, cursor: str | None = None) -> Document:
        return self._run(self._async.tasks_page(limit, cursor))

    def retry(self, task_id: str, **kw: Any) -> Document:
        return self._run(self._async.retry(task_id, **kw))

    def history(self, **kw: Any) -> Document:
        return self._run(self._async.history(**kw))

    def logs(self, task_id: str, offset: int = 0) -> LogChunk:
        return self._run(self._async.logs(task_id, offset))

    def lock(self, task_id: str) -> Document:
        return self._run(self._async.lock(task_id))

    def snapshot(self, task_id: str) -> Document:
        return self._run(self._async.snapshot(task_id))

    def diff(
        self, ssh_connection: str, ui_home: str, lock: Document, *, python: str | None = None
    ) -> Document:
        return self._run(self._async.diff(ssh_connection, ui_home, lock, python=python))

    def ready(
        self, ssh_connection: str, ui_home: str, workflow: Document | None = None, **kw: Any
    ) -> Document:
        return self._run(self._async.ready(ssh_connection, ui_home, workflow, **kw))

    def wait(
        self,
        task_id: str,
        *,
        on_progress: Callable[[Document], None] | None = None,
        timeout: float | None = None,
        poll_interval: float = 2.0,
        cancel_on_timeout: bool = False,
    ) -> Document:
        return self._run(
            self._async.wait(
                task_id,
                on_progress=on_progress,
                timeout=timeout,
                poll_interval=poll_interval,
                cancel_on_timeout=cancel_on_timeout,
            )
        )


# help(Client.start) lists every option with its default, from the declaration.
AsyncClient.start.__doc__ = inspect.cleandoc(AsyncClient.start.__doc__ or "") + options_doc(
    tuple(START_OPTIONS.values())
)
AsyncClient.start_fleet.__doc__ = inspect.cleandoc(
    AsyncClient.start_fleet.__doc__ or ""
) + options_doc(tuple(FLEET_OPTIONS.values()))
Client.start.__doc__ = AsyncClient.start.__doc__
Client.start_fleet.__doc__ = AsyncClient.start_fleet.__doc__
