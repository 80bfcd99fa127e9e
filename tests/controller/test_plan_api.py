"""``POST /api/plan`` and a start request's ``plan``: a plan task changes nothing and
answers with its plan; applying refuses, as a 400 that starts nothing, what cannot
be applied (another home, nodes beside a plan, a plan of a plan, an id that is no
plan), and a retry of a plan is refused."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from controller.sandbox.comfy import ComfyHome
from tests.controller.conftest import NodeRepos, install_body, wait_final

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


async def test_a_plan_answers_and_what_cannot_be_applied_is_a_400(
    client: Any, home: ComfyHome, node_repos: NodeRepos, tmp_path: Any
) -> None:
    body = install_body("local", home, [node_repos.plain.url, node_repos.second.url])
    response = await client.post("/api/plan", json=body)
    answer = await response.json()
    assert response.status == 202, answer
    assert "changes nothing" in answer["message"]
    final = await wait_final(client, answer["task_id"])
    assert final["state"] == "completed" and final["success"]
    assert [n["status"] for n in final["nodes"]] == ["planned", "planned"]
    assert [n["action"] for n in final["plan"]["nodes"]] == ["new", "new"]
    assert list(home.custom_nodes.iterdir()) == []
    plan_id = answer["task_id"]

    async def refused(payload: dict[str, Any], path: str = "/ssh/install-custom-nodes") -> str:
        response = await client.post(path, json=payload)
        data = await response.json()
        assert response.status == 400, data
        assert data["error"] == "invalid_request" and data["field"].startswith("plan"), data
        return str(data["message"])

    where = {"ssh_connection": "local", "ui_home": str(home.root)}
    assert "give nodes" in await refused({**body, "plan": plan_id})
    assert "cannot apply another plan" in await refused({**where, "plan": plan_id}, "/api/plan")
    assert "was made for" in await refused({**where, "ui_home": "/elsewhere", "plan": plan_id})
    assert "a plan's task id" in await refused({**where, "plan": "not-a-uuid"})
    unknown = await client.post(
        "/ssh/install-custom-nodes", json={**where, "plan": str(uuid.uuid4())}
    )
    assert unknown.status == 404
    installed = await client.post(
        "/ssh/install-custom-nodes", json=install_body("local", home, [node_repos.plain.url])
    )
    install_id = (await installed.json())["task_id"]
    await wait_final(client, install_id)
    assert "an install, not a plan" in await refused({**where, "plan": install_id})
    assert list(home.custom_nodes.iterdir()) == [home.custom_nodes / "ComfyUI-Plain"]

    retry = await client.post(f"/api/tasks/{plan_id}/retry", json={})
    assert retry.status == 400 and "is a plan" in (await retry.json())["message"]
