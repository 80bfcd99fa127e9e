"""The one declaration of an install (``InstallRequest`` with ``option(...)``) and
everything derived from it: the agent's spec, the command line, the clients and
retries each have every field, or these tests fail naming the one missing."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import pytest
from pydantic import BaseModel

from agent import cli as agent_cli
from controller.cli.install_flags import bare_flags, install_options
from controller.cli.main import build_parser
from controller.client import FLEET_OPTIONS, START_OPTIONS, _install_payload
from controller.core.install_fields import (
    Const,
    Hand,
    UndeclaredField,
    Valued,
    declared_fields,
    option,
)
from controller.core.retry import retry_request
from controller.core.schemas import (
    INSTALL_FIELDS,
    RETRIED_FIELDS,
    SPEC_FIELDS,
    InstallRequest,
    parse_body,
)
from protocol import InstallSpec
from protocol import fields as checks
from tests.support.options import command_line, non_default, with_flags

pytestmark = pytest.mark.timeout(30)

#: InstallSpec's fields the request has no say in: the controller makes the task id,
#: and file:// URLs are for a person on the instance only.
#: ``mode`` is the endpoint's (``/api/plan``), ``expect`` the controller's copy of the
#: plan a request's ``plan`` id names.
SPEC_ONLY = {"task_id", "allow_file_urls", "mode", "expect"}
NAMES = [field.name for field in INSTALL_FIELDS]


def _install_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices["install"]  # type: ignore[no-any-return]
    raise AssertionError("no install command")


def test_the_fields_that_reach_the_spec_are_install_specs_fields() -> None:
    spec_fields = {f.name for f in dataclasses.fields(InstallSpec)} - SPEC_ONLY
    assert set(SPEC_FIELDS) == spec_fields
    # and InstallSpec writes each of them into spec.json
    spec = InstallSpec.from_dict(
        {"task_id": checks.new_task_id(), "ui_home": "/c", "nodes": ["https://github.com/a/b"]}
    )
    assert set(spec.to_dict()) == (set(SPEC_FIELDS) - {"lock"}) | SPEC_ONLY


def test_the_request_and_the_spec_agree_on_every_default() -> None:
    spec_defaults = {
        f.name: f.default
        for f in dataclasses.fields(InstallSpec)
        if f.default is not dataclasses.MISSING
    }
    for field in INSTALL_FIELDS:
        # None in the request: the controller decides (discovered python,
        # default_pip_args, nodes from a lock), so the spec's default does not apply.
        if field.spec and field.default is not None:
            assert spec_defaults[field.name] == field.default, field.name
            assert type(spec_defaults[field.name]) is type(field.default), field.name


def test_a_retry_reads_only_what_the_spec_holds() -> None:
    # A carried field is read back from the task's spec; the target is the task's own.
    carried_elsewhere = {f.name for f in INSTALL_FIELDS if f.retry and not f.spec}
    assert carried_elsewhere == {"ssh_connection"}, (
        "a field a retry carries must reach the spec: retry_request reads it back from "
        "the task's spec (a controller-only field would need storing with the task)"
    )
    assert set(RETRIED_FIELDS) == {f.name for f in INSTALL_FIELDS if f.retry} - carried_elsewhere
    assert "nodes" not in RETRIED_FIELDS and "queue" not in RETRIED_FIELDS


def test_the_agents_own_install_command_takes_every_spec_field() -> None:
    # `AGENT install` builds a spec from its flags (a person on the instance, no
    # controller): a spec field without a flag there is one it cannot ask for.
    install = next(
        action.choices["install"]
        for action in agent_cli.build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    flags = set(install._option_string_actions) | {a.dest for a in install._actions}
    unusual = {
        "pip_args": {"--pip-arg"},
        "verify": {"--no-verify", "--verify-comfyui"},
        "low_priority": {"--no-low-priority"},
        "nodes": {"nodes"},
        "task_id": set(),  # made by the agent
        "mode": {"--plan"},
    }
    for field in dataclasses.fields(InstallSpec):
        wanted = unusual.get(field.name, {"--" + field.name.replace("_", "-")})
        assert wanted <= flags, f"AGENT install has no {wanted - flags} for {field.name}"


def test_a_field_declared_without_option_is_refused() -> None:
    class Declared(BaseModel):
        jobs: int = option(4, help="jobs", cli="--jobs", spec=True, retry=True)
        restart: str = "never"

    with pytest.raises(UndeclaredField, match=r"Declared\.restart is not declared"):
        declared_fields(Declared)


def test_every_option_is_a_flag_of_install_and_reads_back() -> None:
    parser = _install_parser()
    flags = set(parser._option_string_actions) | {a.dest for a in parser._actions}
    for field in INSTALL_FIELDS:
        if isinstance(field.cli, Hand):
            # read by the command itself (a file, the positional NODEs): still there
            assert set(field.cli.flags) <= flags, field.name
    options = with_flags(non_default(python="/usr/bin/python3", pip_args=["--no-index", "--pre"]))
    args = parser.parse_args(["--ui-home", "/c", *command_line(options)])
    assert install_options(args) == {**options, "ui_home": "/c"}
    # Nothing given, nothing sent: the controller's defaults apply.
    assert install_options(parser.parse_args(["--ui-home", "/c"])) == {"ui_home": "/c"}


#: A value for each flag of a field with several, beside the one non_default picks.
SAMPLES: dict[str, list[Any]] = {
    "--restart-command": [
        {"command": ["/opt/start.sh", "--port", "81 90"]},
        {"command": ["supervisorctl", "restart", "comfyui"]},
    ],
}


def test_each_of_a_fields_flags_reads_back_and_they_exclude_each_other() -> None:
    parser = _install_parser()
    for field in INSTALL_FIELDS:
        if not isinstance(field.cli, tuple):
            continue
        for flag in field.cli:
            if isinstance(flag, Const):
                values = [flag.value]
            elif flag.choices is not None:
                values = list(flag.choices)
            else:
                assert flag.flag in SAMPLES, f"SAMPLES has no value for {flag.flag}"
                values = SAMPLES[flag.flag]
            for value in values:
                args = parser.parse_args(["--ui-home", "/c", *command_line({field.name: value})])
                assert install_options(args) == {field.name: value, "ui_home": "/c"}, flag
        if len(field.cli) > 1:
            both = [command_line({field.name: _value_of(flag)})[0] for flag in field.cli[:2]]
            with pytest.raises(SystemExit):
                parser.parse_args(["--ui-home", "/c", *both])


def _value_of(flag: Const | Valued) -> Any:
    if isinstance(flag, Const):
        return flag.value
    return flag.choices[0] if flag.choices else SAMPLES[flag.flag][0]


def test_a_bare_flag_takes_its_own_value_and_leaves_the_node_after_it() -> None:
    parser = build_parser()
    bare = [
        (field.name, flag)
        for field in INSTALL_FIELDS
        if isinstance(field.cli, tuple)
        for flag in field.cli
        if isinstance(flag, Valued) and flag.bare is not None
    ]
    assert [name for name, _ in bare] == ["restart"]
    for name, flag in bare:
        words = ["install", "--ui-home", "/c", flag.flag, "https://github.com/a/b"]
        args = parser.parse_args(bare_flags(words))
        assert getattr(args, name) == flag.bare and args.nodes == ["https://github.com/a/b"]


def test_a_bad_restart_command_is_refused_before_anything_is_sent(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = _install_parser()
    for text, message in (("", "is empty"), ("'open", "cannot split it")):
        with pytest.raises(SystemExit):
            parser.parse_args(["--ui-home", "/c", f"--restart-command={text}"])
        assert f"--restart-command: {message}" in capsys.readouterr().err


def test_every_help_text_states_the_real_default() -> None:
    text = " ".join(_install_parser().format_help().split())
    for field in INSTALL_FIELDS:
        if field.cli is None or isinstance(field.cli, Hand) or field.required:
            continue
        if isinstance(field.default, bool) and not isinstance(field.cli, tuple):
            continue  # a toggle: leaving it out is the default
        assert f"(default: {field.default_text})" in text, field.name
    assert "--jobs N CPU-bound steps at a time" in text
    assert "--clone-jobs N git clones at a time (default: 16)" in text


def test_the_clients_take_every_option_and_send_what_differs() -> None:
    assert set(START_OPTIONS) == set(NAMES) - {"ssh_connection", "ui_home", "nodes"}
    assert set(FLEET_OPTIONS) == set(NAMES) - {"ssh_connection", "nodes"}
    options = non_default()
    given = {"ssh_connection": "local", "ui_home": "/c", "nodes": ["https://github.com/a/b"]}
    payload = _install_payload(given, options, START_OPTIONS)
    request = parse_body(InstallRequest, payload)
    for name, value in options.items():
        assert getattr(request, name) == value, name
    # Defaults and None stay out, so an older controller still takes the request.
    defaults = {name: START_OPTIONS[name].default for name in ("jobs", "update", "verify")}
    assert _install_payload(given, {**defaults, "python": None}, START_OPTIONS) == given
    with pytest.raises(TypeError, match=r"unknown install option.*clone_job"):
        _install_payload(given, {"clone_job": 4}, START_OPTIONS)


def _spec_of(request: InstallRequest, **extra: Any) -> dict[str, Any]:
    values = {name: getattr(request, name) for name in SPEC_FIELDS}
    values.pop("lock" if request.lock is None else "nodes")
    return InstallSpec.from_dict({**values, **extra, "task_id": checks.new_task_id()}).to_dict()


def test_a_retry_request_is_the_original_for_what_failed() -> None:
    options = non_default()
    original = InstallRequest.model_validate(
        {
            **options,
            "ssh_connection": "root@10.0.0.1",
            "ui_home": "/c",
            "nodes": ["https://github.com/a/one", "https://github.com/a/two@v2#Two"],
        }
    )
    retry = retry_request(_spec_of(original), "root@10.0.0.1:22", {"Two"}, False, 0)
    for name in RETRIED_FIELDS:
        assert getattr(retry, name) == getattr(original, name), name
    assert retry.nodes == [{"url": "https://github.com/a/two", "ref": "v2", "name": "Two"}]
    assert (retry.queue, retry.auto_retry, retry.ssh_connection) == (False, 0, "root@10.0.0.1:22")


def test_a_retry_of_a_lock_keeps_its_versions_for_the_nodes_that_failed() -> None:
    lock = {
        "schema": 1,
        "created_at": "2026-01-01T00:00:00.000Z",
        "ui_home": "/c",
        "nodes": [
            {"name": "one", "url": "https://github.com/a/one", "commit": "a" * 40},
            {"name": "two", "url": "https://github.com/a/two", "commit": "b" * 40},
        ],
        "packages": {"numpy": "1.26.4"},
    }
    original = InstallRequest.model_validate(
        {**non_default(), "ssh_connection": "local", "ui_home": "/c", "lock": lock}
    )
    retry = retry_request(_spec_of(original), "local", {"two"}, True, 1)
    assert retry.nodes is None and retry.lock is not None
    assert [n["name"] for n in retry.lock["nodes"]] == ["two"]
    assert retry.lock["packages"] == {"numpy": "1.26.4"}
    assert (retry.queue, retry.auto_retry) == (True, 1)
