"""The start request's sources end to end: a configured controller answering the
seed's two-field request, snapshots naming the loopback git daemon, the dry run
reading the node database from the instance's own ComfyUI-Manager over SFTP,
and the 400s that change nothing."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from controller.core.sources import nodedb
from controller.sandbox.comfy import ComfyHome
from tests.controller.conftest import (
    FINAL_STATES,
    AppFactory,
    NodeRepos,
    make_settings,
    poll,
    start_install,
    wait_for,
)
from tests.controller.test_sources_resolve import KJ, ui_workflow
from tests.support.sshd import SshServer


def offline_settings(tmp_path: Path, client_key: Path, **extra: Any) -> Any:
    return make_settings(tmp_path, client_key, online_lookups=False, **extra)


async def test_the_seed_request_installs_the_configured_default(
    make_client: AppFactory,
    tmp_path: Path,
    client_key: Path,
    sshd: SshServer,
    home: ComfyHome,
    node_repos: NodeRepos,
) -> None:
    defaults = tmp_path / "default-nodes.txt"
    defaults.write_text(
        f"# what every new instance gets\n{node_repos.plain.url}\n"
        f"{node_repos.second.url}@{node_repos.second.head}  # pinned\n"
    )
    client = await make_client(offline_settings(tmp_path, client_key, default_nodes=defaults))
    body = {"ssh_connection": sshd.connection_string(), "ui_home": str(home.root)}
    task_id = await start_install(client, body)
    status, final = await wait_for(client, task_id, lambda s, b: b.get("state") in FINAL_STATES)
    assert status == 200
    assert final["success"] is True, final
    assert [n["url"] for n in final["nodes"]] == [node_repos.plain.url, node_repos.second.url]
    assert all(n["status"] == "installed" for n in final["nodes"])
    second = next(n for n in final["nodes"] if n["name"] == "ComfyUI-Second")
    assert second["commit"] == node_repos.second.head
    assert (home.root / "custom_nodes" / "ComfyUI-Plain" / "__init__.py").exists()
    assert [n["rule"] for n in final["resolution"]["nodes"]] == ["explicit", "explicit"]


async def test_a_snapshot_installs_its_commits_and_the_plan_is_kept(
    make_client: AppFactory,
    tmp_path: Path,
    client_key: Path,
    sshd: SshServer,
    home: ComfyHome,
    node_repos: NodeRepos,
) -> None:
    client = await make_client(offline_settings(tmp_path, client_key))
    snapshot_yaml = (
        "comfyui: b779349b55e79aff81a98b752f5cb486c71812db\n"
        "git_custom_nodes:\n"
        f"  {node_repos.plain.url}.git:\n    hash: {node_repos.plain.head}\n    disabled: false\n"
        f"  {node_repos.second.url}:\n    hash: {node_repos.second.head}\n    disabled: true\n"
        "file_custom_nodes: []\n"
    )
    body = {
        "ssh_connection": sshd.connection_string(),
        "ui_home": str(home.root),
        "snapshot": snapshot_yaml,
        # Explicit entries win over the snapshot's, and merge by repository.
        "nodes": [f"{node_repos.plain.url}@main"],
    }
    task_id = await start_install(client, body)
    _, final = await wait_for(client, task_id, lambda s, b: b.get("state") in FINAL_STATES)
    assert final["success"] is True, final
    assert [(n["url"], n["ref"]) for n in final["nodes"]] == [(node_repos.plain.url, "main")]
    selection = final["resolution"]
    assert selection["nodes"][0]["rule"] == "explicit"
    assert any("disabled" in warning for warning in selection["warnings"])
    # The selection survives a controller restart: it is in the registry.
    restarted = await make_client(offline_settings(tmp_path, client_key))
    status, again = await poll(restarted, task_id)
    assert status == 200 and again["resolution"] == selection


async def test_dry_run_reads_the_instances_manager_database_over_sftp(
    make_client: AppFactory,
    tmp_path: Path,
    client_key: Path,
    sshd: SshServer,
    home: ComfyHome,
    node_db_dir: Path,
) -> None:
    manager = home.root / "custom_nodes" / "ComfyUI-Manager"
    manager.mkdir(parents=True)
    for name in nodedb.FILES:
        shutil.copy(node_db_dir / name, manager / name)
    client = await make_client(offline_settings(tmp_path, client_key))
    body = {
        "ssh_connection": sshd.connection_string(),
        "ui_home": str(home.root),
        "workflow": ui_workflow(),
    }
    response = await client.post("/api/resolve", json=body)
    answer = await response.json()
    assert response.status == 200, answer
    assert answer["success"] is True
    assert answer["node_db"].endswith("custom_nodes/ComfyUI-Manager")
    assert answer["nodes"][0]["url"] == KJ
    assert set(answer["nodes"][0]) == {"name", "url", "ref", "classes", "rule"}
    assert answer["unresolved"] == ["TotallyUnknownNode9000"]
    assert {entry["class"] for entry in answer["ambiguous"]} == {"Sleep", "Film Grain"}
    # A dry run starts nothing.
    listing = await (await client.get("/api/tasks")).json()
    assert listing["tasks"] == []


async def test_dry_run_without_any_database_says_how_to_get_one(
    make_client: AppFactory, tmp_path: Path, client_key: Path
) -> None:
    client = await make_client(offline_settings(tmp_path, client_key))
    response = await client.post("/api/resolve", json={"workflow": ui_workflow()})
    answer = await response.json()
    assert response.status == 400
    assert "nodeferry node-db update" in answer["message"]


async def test_refusals_change_nothing(
    make_client: AppFactory,
    tmp_path: Path,
    client_key: Path,
    sshd: SshServer,
    home: ComfyHome,
    node_db_dir: Path,
) -> None:
    client = await make_client(offline_settings(tmp_path, client_key, node_db=node_db_dir))
    base = {"ssh_connection": sshd.connection_string(), "ui_home": str(home.root)}

    response = await client.post("/ssh/install-custom-nodes", json=base)
    answer = await response.json()
    assert response.status == 400
    for way in ("'nodes'", "'workflow'", "'snapshot'", "default_nodes"):
        assert way in answer["message"]

    strict = {**base, "workflow": ui_workflow(), "strict": True}
    response = await client.post("/ssh/install-custom-nodes", json=strict)
    answer = await response.json()
    assert response.status == 400
    assert answer["error"] == "unresolved"
    assert "TotallyUnknownNode9000" in answer["message"]
    assert answer["resolution"]["unresolved"] == ["TotallyUnknownNode9000"]

    only_core = {**base, "workflow": {"3": {"class_type": "KSampler", "inputs": {}}}}
    response = await client.post("/ssh/install-custom-nodes", json=only_core)
    assert response.status == 400
    assert "part of ComfyUI" in (await response.json())["message"]

    hostile = {**base, "nodes": ["ext::sh -c touch% /tmp/pwned"]}
    response = await client.post("/ssh/install-custom-nodes", json=hostile)
    assert response.status == 400

    listing = await (await client.get("/api/tasks")).json()
    assert listing["tasks"] == []
    assert not (home.root / "custom_nodes" / "ComfyUI-KJNodes").exists()
