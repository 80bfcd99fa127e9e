"""Another local user (uid 65534, "nobody") against a controller on its defaults:
it cannot read the token, and without it every API call is 401 and starts nothing."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.controller.conftest import AppFactory, make_settings

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a command as uid 65534"),
    pytest.mark.skipif(not shutil.which("setpriv"), reason="needs setpriv (util-linux)"),
]

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
PYTHON = "/usr/bin/python3"

#: What the other user runs: read the token file, then call the API without it.
ATTEMPT = """
import json, sys, urllib.error, urllib.request
url, token_file, body, control = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
open(control).read()  # the data dir itself is reachable: only the token is not
try:
    open(token_file).read()
    read = "read"
except OSError as exc:
    read = type(exc).__name__
answers = []
for method, path, data in (("GET", "/api/tasks", None),
                           ("POST", "/ssh/install-custom-nodes", body.encode())):
    request = urllib.request.Request(url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=20) as answer:
            answers.append([answer.status, json.load(answer)])
    except urllib.error.HTTPError as exc:
        answers.append([exc.code, json.load(exc)])
print(json.dumps({"token_file": read, "answers": answers}))
"""


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory the other user can traverse (pytest's tmp dirs are 0700), so
    only the token file's own mode (0600) keeps that user out."""
    path = Path(tempfile.mkdtemp(prefix="nodeferry-other-user-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.skipif(not os.path.exists(PYTHON), reason=f"needs {PYTHON}")
async def test_another_local_user_gets_401(
    make_client: AppFactory, client_key: Path, open_dir: Path
) -> None:
    settings = make_settings(open_dir, client_key)
    client: Any = await make_client(settings)
    settings.data_dir.chmod(0o755)
    control = settings.data_dir / "readable"
    control.write_text("anyone may read this")
    control.chmod(0o644)
    url = str(client.make_url("")).rstrip("/")
    body = json.dumps({"ssh_connection": "local", "ui_home": "/tmp/x", "nodes": ["https://h/a/b"]})
    process = await asyncio.create_subprocess_exec(
        *NOBODY,
        PYTHON,
        "-c",
        ATTEMPT,
        url,
        str(settings.data_dir / "token"),
        body,
        str(control),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), 40)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr.decode()
    seen = json.loads(stdout)
    assert seen["token_file"] == "PermissionError"
    for status, payload in seen["answers"]:
        assert status == 401, payload
        assert payload["error"] == "unauthorized"
    assert (await (await client.get("/api/tasks")).json())["tasks"] == []
