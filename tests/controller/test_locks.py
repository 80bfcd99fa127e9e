"""Locks through the controller, end to end over a real sshd: a lock taken from one
sandbox ComfyUI reproduces its commits and package versions in a second one, the
lock and snapshot endpoints, ``POST /api/diff`` of a drifted instance, and a node
whose import fails showing ``failed`` with its error through the progress endpoint.

The homes have real venvs; requirements come from a local wheelhouse only (sshd
hands its sessions ``PIP_CONFIG_FILE=/dev/null``, so the machine's pip config is
out of the picture)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controller.sandbox.comfy import (
    NODE_INIT,
    ComfyHome,
    build_venv_template,
    make_comfy_home,
    pip_install,
)
from controller.sandbox.gitserver import GitServer, Repo, git
from controller.sandbox.wheels import build_wheel
from protocol import Lock
from tests.controller.conftest import (
    AppFactory,
    comfy_home,
    install_body,
    poll,
    start_install,
    wait_final,
    wait_for,
)
from tests.support.sshd import SshServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

ONE_CLASS_INIT = "class Hello:\n    pass\n\nNODE_CLASS_MAPPINGS = {'Hello': Hello}\n"
BROKEN_INIT = "import no_such_module_for_nodeferry\n\nNODE_CLASS_MAPPINGS = {}\n"
#: Waits for ``<ui_home>/release`` so a test can hold the task unfinished.
GATED_INSTALL_PY = """\
import time
from pathlib import Path
deadline = time.monotonic() + 120
while not Path("../../release").exists() and time.monotonic() < deadline:
    time.sleep(0.05)
"""


@dataclass
class LockRepos:
    with_reqs: Repo
    with_reqs2: Repo
    pinned: Repo
    pinned_first: str
    good: Repo
    broken: Repo
    gated: Repo


@pytest.fixture(scope="session")
def lock_repos(git_server: GitServer) -> LockRepos:
    s = git_server
    pinned = s.add_repo("Lock-Pinned", {"__init__.py": NODE_INIT, "version.txt": "1\n"})
    first = pinned.head
    pinned.commit({"version.txt": "2\n"}, "second")
    return LockRepos(
        with_reqs=s.add_repo(
            "Lock-WithReqs", {"__init__.py": NODE_INIT, "requirements.txt": "tinydep==1.0\n"}
        ),
        with_reqs2=s.add_repo(
            "Lock-WithReqs2", {"__init__.py": NODE_INIT, "requirements.txt": "otherdep\n"}
        ),
        pinned=pinned,
        pinned_first=first,
        good=s.add_repo("Lock-Good", {"__init__.py": ONE_CLASS_INIT}),
        broken=s.add_repo("Lock-Broken", {"__init__.py": BROKEN_INIT}),
        gated=s.add_repo("Lock-Gated", {"__init__.py": NODE_INIT, "install.py": GATED_INSTALL_PY}),
    )


@pytest.fixture(scope="session")
def lock_wheels(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(newest, older): the shared wheelhouse and one with older versions."""
    new = tmp_path_factory.mktemp("lock-wheels")
    build_wheel(new, "torch", "1.0.0")
    build_wheel(new, "tinydep", "1.0")
    build_wheel(new, "otherdep", "2.0")
    old = tmp_path_factory.mktemp("lock-old-wheels")
    build_wheel(old, "otherdep", "1.0")
    build_wheel(old, "driftdep", "1.0")
    return new, old


@pytest.fixture(scope="session")
def lock_venv(tmp_path_factory: pytest.TempPathFactory, lock_wheels: tuple[Path, Path]) -> Path:
    return build_venv_template(tmp_path_factory.mktemp("lock-venv") / "venv", lock_wheels[0])


@pytest.fixture
def pip_sshd(tmp_path: Path, client_key: Path) -> Iterator[SshServer]:
    """An sshd whose sessions ignore the machine's pip config (wheelhouse only)."""
    server = SshServer(
        tmp_path / "sshd-locks",
        client_key=client_key,
        extra_config="SetEnv PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1",
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def head_of(path: Path) -> str:
    return git("rev-parse", "HEAD", cwd=path)


def make_drift(home: ComfyHome, repos: LockRepos, wheels: tuple[Path, Path]) -> None:
    """A node removed, one at another commit, one added; a package at another
    version, one added, one removed."""
    shutil.rmtree(home.custom_nodes / "Lock-WithReqs")
    pinned_dir = home.custom_nodes / "Lock-Pinned"
    git("fetch", "-q", "origin", cwd=pinned_dir)
    git("checkout", "-q", repos.pinned.head, cwd=pinned_dir)
    git("clone", "-q", repos.good.url, str(home.custom_nodes / "Lock-Good"))
    pip_install(home.python, wheels[0], "otherdep==2.0")
    pip_install(home.python, wheels[1], "driftdep==1.0")
    subprocess.run(
        [str(home.python), "-m", "pip", "uninstall", "-qy", "tinydep"],
        check=True,
        capture_output=True,
    )


async def get_json(client: Any, path: str) -> tuple[int, dict[str, Any]]:
    response = await client.get(path)
    return response.status, await response.json()


async def test_a_lock_reproduces_commits_and_versions_in_a_second_home(
    make_client: AppFactory,
    settings: Any,
    pip_sshd: SshServer,
    lock_repos: LockRepos,
    lock_wheels: tuple[Path, Path],
    lock_venv: Path,
    tmp_path: Path,
) -> None:
    client = await make_client(settings)
    ssh = pip_sshd.connection_string()
    new_wheels, old_wheels = lock_wheels
    pip_args = ["--no-index", "--find-links", str(new_wheels), "--find-links", str(old_wheels)]
    # Home A has otherdep 1.0 already, so with-reqs2's unpinned "otherdep" keeps it.
    home_a = make_comfy_home(tmp_path / "A" / "ComfyUI", venv_template=lock_venv)
    pip_install(home_a.python, old_wheels, "otherdep==1.0")
    nodes = [
        lock_repos.with_reqs.url,
        lock_repos.with_reqs2.url,
        {"url": lock_repos.pinned.url, "ref": lock_repos.pinned_first},
    ]
    first_id = await start_install(
        client,
        {
            "ssh_connection": ssh,
            "ui_home": str(home_a.root),
            "nodes": nodes,
            "python": str(home_a.python),
            "pip_args": pip_args,
            # Explicit: with "auto" the agent would try to fetch uv from this
            # test's offline index first and warn that it fell back to pip.
            "installer": "pip",
        },
    )
    first = await wait_final(client, first_id, timeout=180)
    assert first["success"] is True and first["state"] == "completed", first
    assert {n["import"]["status"] for n in first["nodes"]} == {"ok"}

    # GET …/lock: the agent's lock.json, read over SFTP.
    status, lock_a = await get_json(client, f"/api/tasks/{first_id}/lock")
    assert status == 200, lock_a
    assert set(lock_a) == {
        "schema",
        "created_at",
        "ui_home",
        "comfyui",
        "python",
        "torch",
        "nodes",
        "packages",
    }
    assert lock_a["schema"] == 1 and lock_a["ui_home"] == str(home_a.root)
    assert lock_a["torch"] == {"torch": "1.0.0"}
    assert {n["name"]: n["commit"] for n in lock_a["nodes"]} == {
        "Lock-WithReqs": lock_repos.with_reqs.head,
        "Lock-WithReqs2": lock_repos.with_reqs2.head,
        "Lock-Pinned": lock_repos.pinned_first,
    }
    assert lock_a["packages"]["otherdep"] == "1.0" and lock_a["packages"]["tinydep"] == "1.0"
    Lock.from_dict(lock_a)  # what the controller serves, the protocol reads back

    # GET …/snapshot: ComfyUI-Manager's format of the same lock.
    status, snapshot = await get_json(client, f"/api/tasks/{first_id}/snapshot")
    assert status == 200, snapshot
    assert set(snapshot) == {
        "comfyui",
        "git_custom_nodes",
        "cnr_custom_nodes",
        "file_custom_nodes",
        "pips",
    }
    assert snapshot["git_custom_nodes"][lock_repos.pinned.url] == {
        "hash": lock_repos.pinned_first,
        "disabled": False,
    }
    assert snapshot["pips"]["otherdep"] == "1.0"
    assert snapshot["comfyui"] is None  # the sandbox home is not a git clone

    # Home B, fresh: without the lock, "otherdep" would resolve to 2.0.
    home_b = make_comfy_home(tmp_path / "B" / "ComfyUI", venv_template=lock_venv)
    second_id = await start_install(
        client,
        {
            "ssh_connection": ssh,
            "ui_home": str(home_b.root),
            "lock": lock_a,
            "python": str(home_b.python),
            "pip_args": pip_args,
            # Explicit: with "auto" the agent would try to fetch uv from this
            # test's offline index first and warn that it fell back to pip.
            "installer": "pip",
        },
    )
    second = await wait_final(client, second_id, timeout=180)
    assert second["success"] is True, second
    assert second["warnings"] == []
    assert sorted(n["name"] for n in second["nodes"]) == sorted(n["name"] for n in lock_a["nodes"])
    for node in lock_a["nodes"]:
        assert head_of(home_b.custom_nodes / node["name"]) == node["commit"]
    assert home_b.installed("otherdep") == "1.0"
    assert home_b.installed("tinydep") == "1.0"
    _, lock_b = await get_json(client, f"/api/tasks/{second_id}/lock")
    assert lock_b["nodes"] == lock_a["nodes"]
    assert lock_b["packages"] == lock_a["packages"]

    # POST /api/diff: B matches A's lock...
    diff_body = {
        "ssh_connection": ssh,
        "ui_home": str(home_b.root),
        "python": str(home_b.python),
        "lock": lock_a,
    }
    response = await client.post("/api/diff", json=diff_body)
    same = await response.json()
    assert response.status == 200, same
    assert same["success"] is True and same["equal"] is True

    # ...until it drifts.
    await asyncio.to_thread(make_drift, home_b, lock_repos, lock_wheels)
    before = sorted(p.name for p in home_b.custom_nodes.iterdir())
    response = await client.post("/api/diff", json=diff_body)
    drift = await response.json()
    assert response.status == 200, drift
    assert drift["success"] is True and drift["equal"] is False
    nodes_diff = drift["differences"]["nodes"]
    assert [n["name"] for n in nodes_diff["missing"]] == ["Lock-WithReqs"]
    assert nodes_diff["other_commit"] == [
        {
            "name": "Lock-Pinned",
            "url": lock_repos.pinned.url,
            "locked": lock_repos.pinned_first,
            "actual": lock_repos.pinned.head,
        }
    ]
    assert [n["name"] for n in nodes_diff["extra"]] == ["Lock-Good"]
    packages = drift["differences"]["packages"]
    assert packages["other_version"] == {"otherdep": {"locked": "1.0", "actual": "2.0"}}
    assert packages["extra"] == {"driftdep": "1.0"}
    assert packages["missing"] == {"tinydep": "1.0"}
    # The diff changed nothing.
    assert sorted(p.name for p in home_b.custom_nodes.iterdir()) == before
    assert home_b.installed("otherdep") == "2.0"


async def test_a_failed_import_shows_through_the_progress_endpoint(
    make_client: AppFactory,
    settings: Any,
    sshd: SshServer,
    lock_repos: LockRepos,
    tmp_path: Path,
) -> None:
    client = await make_client(settings)
    home: ComfyHome = comfy_home(tmp_path / "ComfyUI")
    body = install_body(
        sshd.connection_string(),
        home,
        [lock_repos.good.url, lock_repos.broken.url, lock_repos.gated.url],
    )
    task_id = await start_install(client, body)
    await wait_for(client, task_id, lambda _s, b: b.get("state") == "running_install_scripts")
    # Not finished: no lock yet, and the answer says why.
    status, early = await get_json(client, f"/api/tasks/{task_id}/lock")
    assert status == 404 and early["error"] == "no_lock", early
    assert "still running install scripts" in early["message"]
    (home.root / "release").write_text("go")

    final = await wait_final(client, task_id)
    assert final["state"] == "completed" and final["success"] is False
    by_name = {n["name"]: n for n in final["nodes"]}
    broken = by_name["Lock-Broken"]
    assert broken["status"] == "failed"
    assert broken["import"]["status"] == "failed"
    assert "No module named 'no_such_module_for_nodeferry'" in broken["import"]["error"]
    good = by_name["Lock-Good"]
    assert good["status"] == "installed"
    assert good["import"]["status"] == "ok" and good["import"]["node_classes"] == 1
    _, polled = await poll(client, task_id)
    assert polled["nodes"] == final["nodes"]
    # A failed task still writes its lock: what the home holds now.
    status, lock = await get_json(client, f"/api/tasks/{task_id}/lock")
    assert status == 200, lock
    assert {n["name"] for n in lock["nodes"]} == {"Lock-Good", "Lock-Broken", "Lock-Gated"}


async def test_verify_false_skips_the_import(
    make_client: AppFactory,
    settings: Any,
    sshd: SshServer,
    lock_repos: LockRepos,
    tmp_path: Path,
) -> None:
    client = await make_client(settings)
    home = comfy_home(tmp_path / "ComfyUI")
    body = install_body(sshd.connection_string(), home, [lock_repos.broken.url], verify=False)
    final = await wait_final(client, await start_install(client, body))
    assert final["success"] is True, final
    assert final["nodes"][0]["import"]["status"] == "skipped"


GOOD_COMMIT = "a" * 40


def a_lock(**changes: Any) -> dict[str, Any]:
    lock: dict[str, Any] = {
        "schema": 1,
        "created_at": "2026-01-31T12:00:00.000Z",
        "ui_home": "/workspace/ComfyUI",
        "nodes": [{"name": "x", "url": "https://github.com/a/x", "commit": GOOD_COMMIT}],
        "packages": {"tinydep": "1.0"},
    }
    lock.update(changes)
    return lock


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"lock": a_lock(schema=7)}, "lock.schema"),
        ({"lock": a_lock(nodes=[{"name": "x", "url": "https://h/a/x", "commit": "v1"}])}, None),
        ({"lock": a_lock(nodes=[])}, "lock.nodes"),
        ({"lock": a_lock(), "nodes": ["https://github.com/a/y"]}, "nodes"),
        ({"lock": a_lock(packages={"x": "1; rm -rf /"})}, "lock.packages.x"),
        ({"lock": [1]}, "lock"),
        ({"verify": "maybe"}, "verify"),
        ({"verify": 1}, "verify"),
        ({"verify_timeout": 0}, "verify_timeout"),
    ],
)
async def test_bad_lock_and_verify_fields_are_refused(
    make_client: AppFactory, settings: Any, changes: dict[str, Any], field: str | None
) -> None:
    client = await make_client(settings)
    body: dict[str, Any] = {
        # Nothing may connect: the port is closed and the request never gets there.
        "ssh_connection": "root@127.0.0.1 -p 9",
        "ui_home": "/workspace/ComfyUI",
        "nodes": ["https://github.com/a/x"],
    }
    if "lock" in changes:
        body.pop("nodes")
    body.update(changes)
    response = await client.post("/ssh/install-custom-nodes", json=body)
    answer = await response.json()
    assert response.status == 400, answer
    assert answer["error"] == "invalid_request"
    if field is None:
        assert answer["field"].startswith("lock.nodes.0"), answer
    else:
        assert answer["field"] == field, answer
    _, listing = await get_json(client, "/api/tasks")
    assert listing["tasks"] == []


async def test_lock_and_diff_bad_input(make_client: AppFactory, settings: Any) -> None:
    client = await make_client(settings)
    status, unknown = await get_json(client, "/api/tasks/6f1c1f0e-4d1b-4b8e-9c39-0a4f3f0b7d11/lock")
    assert status == 404 and unknown["error"] == "unknown_task"
    status, bad = await get_json(client, "/api/tasks/../../etc/snapshot")
    assert status in (400, 404)
    status, bad = await get_json(client, "/api/tasks/not-a-uuid/lock")
    assert status == 400 and bad["field"] == "task_id"
    base = {"ssh_connection": "root@127.0.0.1 -p 9", "ui_home": "/workspace/ComfyUI"}
    for body, field in [
        ({**base}, "lock"),
        ({**base, "lock": a_lock(schema=2)}, "lock.schema"),
        ({**base, "lock": a_lock(), "ui_home": "/w; id"}, "ui_home"),
        ({**base, "lock": a_lock(), "python": "python3; id"}, "python"),
        ({**base, "lock": a_lock(), "extra": 1}, "extra"),
    ]:
        response = await client.post("/api/diff", json=body)
        answer = await response.json()
        assert response.status == 400, answer
        assert answer["field"] == field, answer
