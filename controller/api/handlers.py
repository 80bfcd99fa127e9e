"""HTTP handlers: parse the request, call the task service, answer JSON."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from controller.api.appkeys import SERVICE, SETTINGS, STATS
from controller.common.errors import InvalidRequest
from controller.common.target import parse_target
from controller.core.history import DEFAULT_LIMIT as HISTORY_DEFAULT_LIMIT
from controller.core.reader import DEFAULT_PAGE
from controller.core.schemas import (
    InstallRequest,
    ProgressRequest,
    ResolveRequest,
    RetryRequest,
    parse_body,
)
from controller.core.service import LOG_DEFAULT_LIMIT, Admission, TaskView
from protocol import __version__


async def read_json(request: web.Request) -> Any:
    raw = await request.read()  # raises 413 past the app's client_max_size
    if not raw.strip():
        raise InvalidRequest("", "the request body is empty; send a JSON object")
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidRequest("", "the request body is not UTF-8") from None
    except ValueError as exc:
        raise InvalidRequest("", f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidRequest("", "the request body is nested too deeply") from None


def progress_answer(view: TaskView) -> web.Response:
    body = view.response()
    if view.stale and view.problem_code == "unreadable_progress":
        body.update(
            success=False,
            error="unreadable_progress",
            message=f"the progress document on {view.target} cannot be read; this is the "
            f"last good progress ({view.problem})",
        )
        return web.json_response(body, status=502, headers={"Retry-After": "2"})
    if view.stale:
        body.update(
            success=False,
            error="unreachable",
            message=f"{view.target} cannot be reached; this is the last known progress "
            f"({view.problem})",
        )
        return web.json_response(body, status=503, headers={"Retry-After": "2"})
    return web.json_response(body)


def admission_answer(admission: Admission) -> web.Response:
    """202 for a started or queued install; ``state`` says which."""
    if admission.state == "queued":
        message = (
            f"Installation queued (position {admission.queue_position}: "
            f"{admission.queued_reason}); it starts when its turn comes"
        )
    else:
        message = "Installation started in background"
    return web.json_response(
        {"success": True, **admission.body(), "message": message},
        status=202,
    )


async def resolve(request: web.Request) -> web.Response:
    """The dry run of a start request's sources: no instance is changed."""
    body = parse_body(ResolveRequest, await read_json(request))
    selection = await request.app[SERVICE].resolve(body)
    return web.json_response({"success": True, **selection.to_dict()})


async def install(request: web.Request) -> web.Response:
    body = parse_body(InstallRequest, await read_json(request))
    return admission_answer(await request.app[SERVICE].admit(body))


async def plan(request: web.Request) -> web.Response:
    """A plan: the start request's fields; a task that says what an install would
    change (its document's ``plan``), changing nothing."""
    body = parse_body(InstallRequest, await read_json(request))
    admission = await request.app[SERVICE].plan(body)
    answer = {"success": True, **admission.body()}
    answer["message"] = "Plan started in background; it changes nothing on the instance"
    return web.json_response(answer, status=202)


async def retry_task(request: web.Request) -> web.Response:
    raw = await request.read()
    data = await read_json(request) if raw.strip() else {}
    body = parse_body(RetryRequest, data)
    admission = await request.app[SERVICE].retry(
        request.match_info["task_id"], queue=body.queue, auto_retry=body.auto_retry
    )
    return admission_answer(admission)


async def history(request: web.Request) -> web.Response:
    query = request.query
    page = await request.app[SERVICE].history(
        target=query.get("target") or None,
        ui_home=query.get("ui_home") or None,
        limit=_query_count(request, "limit", HISTORY_DEFAULT_LIMIT),
        before=query.get("before") or None,
    )
    return web.json_response({"success": True, **page})


async def install_progress(request: web.Request) -> web.Response:
    body = parse_body(ProgressRequest, await read_json(request))
    target = (
        parse_target(body.ssh_connection, request.app[SETTINGS])
        if body.ssh_connection is not None
        else None
    )
    # With ssh_connection, a task this controller never started is looked for there.
    view = await request.app[SERVICE].progress(body.task_id, target)
    if target is not None and target.key != view.target.key:
        raise InvalidRequest(
            "ssh_connection", f"task {body.task_id} runs on {view.target}, not on {target}"
        )
    return progress_answer(view)


async def list_tasks(request: web.Request) -> web.Response:
    page = await request.app[SERVICE].list_tasks(
        _query_count(request, "limit", DEFAULT_PAGE),
        request.query.get("cursor") or None,
        request.query.get("prefix"),
    )
    return web.json_response({"success": True, **page})


def _query_count(request: web.Request, name: str, default: int) -> int:
    """A small whole number from the query string (a listing's ``limit``)."""
    text = request.query.get(name)
    if text is None or text == "":
        return default
    if not (text.isascii() and text.isdigit()) or len(text) > 6:
        raise InvalidRequest(name, "must be a whole number, like 50")
    return int(text)


async def get_task(request: web.Request) -> web.Response:
    return progress_answer(await request.app[SERVICE].progress(request.match_info["task_id"]))


async def cancel_task(request: web.Request) -> web.Response:
    view = await request.app[SERVICE].cancel(request.match_info["task_id"])
    return progress_answer(view)


MAX_QUERY_DIGITS = 18


def _query_int(request: web.Request, name: str, default: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    # isdigit() also takes "²" and other digits int() refuses; 18 digits fit any file.
    if not (text.isascii() and text.isdigit() and len(text) <= MAX_QUERY_DIGITS):
        raise InvalidRequest(
            name, f"must be a whole number of bytes, 0 or more (at most {MAX_QUERY_DIGITS} digits)"
        )
    return int(text)


async def task_log(request: web.Request) -> web.Response:
    offset = _query_int(request, "offset", 0)
    limit = _query_int(request, "limit", LOG_DEFAULT_LIMIT)
    chunk = await request.app[SERVICE].read_log(request.match_info["task_id"], offset, limit)
    return web.json_response({"success": True, **chunk})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "success": True,
            "status": "ok",
            "version": __version__,
            "stats": request.app[STATS].snapshot(),
        }
    )
