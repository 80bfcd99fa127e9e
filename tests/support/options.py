"""Every option of an install at a value other than its default, from the one
declaration (``InstallRequest``), and the command line that asks for them: what
the tests use to show that each option travels the whole way (CLI or client →
controller → the instance's ``spec.json``, and on through a retry).

A field added to the declaration gets a non-default value here by its type;
one of a type this cannot guess fails :func:`non_default` with a message
asking for a value in its ``overrides``.
"""

from __future__ import annotations

import shlex
import sys
import types
import typing
from typing import Any, Literal

from controller.core.install_fields import Const, Hand, InstallField, Valued
from controller.core.schemas import INSTALL_FIELDS, InstallRequest

#: The fields that say where and what to install: each test gives its own.
WHERE_AND_WHAT = frozenset(
    {"ssh_connection", "ui_home", "nodes", "workflow", "snapshot", "lock", "plan"}
)
#: Values that still install: the fake ComfyUI homes have no venv (install.py runs
#: with this interpreter), and pip needs no network to be there.
INSTALLABLE: dict[str, Any] = {
    "python": sys.executable,
    "pip_args": ["--no-cache-dir", "--prefer-binary"],
    "installer": "pip",
    # Policies no test install breaks (nothing installs these names).
    "forbid_downgrade": ["nodeferry-never-downgraded"],
    "forbid": ["nodeferry-never-installed"],
    # Classes no fake home's ComfyUI could have; with none running the answer is a
    # note, not a failure, so the install still succeeds.
    "ready_classes": ["KSampler", "Seed (rgthree)"],
}
#: The text of a :class:`Valued` flag that has no ``choices``, for a value.
VALUED_TEXT: dict[str, Any] = {
    "--restart-command": lambda value: shlex.join(value["command"]),
}


def _bounds(name: str) -> tuple[float | None, float | None]:
    low = high = None
    for item in InstallRequest.model_fields[name].metadata:
        low = getattr(item, "ge", low)
        high = getattr(item, "le", high)
    return low, high


def _guess(field: InstallField) -> Any:
    annotation = field.annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = members[0] if len(members) == 1 else annotation
    if isinstance(field.cli, tuple):
        first = field.cli[0]
        if isinstance(first, Const):
            return first.value
        if first.choices:
            return next(choice for choice in first.choices if choice != field.default)
    if annotation is bool:
        return not field.default
    if annotation in (int, float):
        low, high = _bounds(field.name)
        value = (field.default or 0) + 1
        if high is not None and value > high:
            value = (field.default or 0) - 1
        assert low is None or value >= low
        return annotation(value)
    if typing.get_origin(annotation) is Literal:
        return next(choice for choice in typing.get_args(annotation) if choice != field.default)
    raise AssertionError(
        f"tests/support/options.py cannot guess a non-default value for {field.name} "
        f"({field.annotation!r}): pass one in overrides"
    )


def non_default(**overrides: Any) -> dict[str, Any]:
    """Every option but where and what, each at a value that is not its default."""
    values: dict[str, Any] = {}
    for field in INSTALL_FIELDS:
        if field.name in WHERE_AND_WHAT:
            continue
        if field.name in overrides:
            value = overrides[field.name]
        elif field.name in INSTALLABLE:
            value = INSTALLABLE[field.name]
        else:
            value = _guess(field)
        assert value != field.default or type(value) is not type(field.default), field.name
        values[field.name] = value
    unknown = set(overrides) - set(values)
    assert not unknown, f"not options: {unknown}"
    return values


def with_flags(options: dict[str, Any]) -> dict[str, Any]:
    """Those of ``options`` that ``nodeferry install`` has a flag for (``ready_classes``
    has none: ``--workflow`` fills it)."""
    by_name = {field.name: field for field in INSTALL_FIELDS}
    return {name: value for name, value in options.items() if by_name[name].cli is not None}


def command_line(options: dict[str, Any]) -> list[str]:
    """The flags of ``nodeferry install`` that ask for ``options``."""
    by_name = {field.name: field for field in INSTALL_FIELDS}
    argv: list[str] = []
    for name, value in options.items():
        field = by_name[name]
        cli = field.cli
        assert cli is not None and not isinstance(cli, Hand), f"{name} has no flag of its own"
        if isinstance(cli, tuple):
            argv.append(next(text for c in cli if (text := _flag_for(c, value)) is not None))
        elif isinstance(value, bool):
            assert value != field.default
            argv.append(cli)
        elif isinstance(value, list):
            argv += [f"{cli}={item}" for item in value]
        else:
            argv.append(f"{cli}={value}")
    return argv


def _flag_for(flag: Const | Valued, value: Any) -> str | None:
    """The word(s) of ``flag`` that ask for ``value``; None: another flag's value."""
    if isinstance(flag, Const):
        same = type(flag.value) is type(value) and flag.value == value
        return flag.flag if same else None
    if flag.choices is not None:
        return f"{flag.flag}={value}" if value in flag.choices else None
    if isinstance(value, str):
        return None
    assert flag.flag in VALUED_TEXT, f"tests/support/options.py: no text for {flag.flag}"
    text = VALUED_TEXT[flag.flag](value)
    assert flag.parse(text) == value, flag.flag
    return f"{flag.flag}={text}"
