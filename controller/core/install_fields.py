"""How an install's fields are declared, once.

:class:`controller.core.schemas.InstallRequest` is the one table of an install's
fields: each is declared with :func:`option`, which gives pydantic its type,
default and constraints and records, beside them, what the rest of nodeferry
derives from that one entry:

- the help text (also the field's description in the API's JSON schema);
- its command-line flag: ``nodeferry install`` adds every flag from here
  (``controller/cli/install_flags.py``), so the single install and the fleet path
  pass the same options; :class:`Hand` marks the few the command reads itself
  (a file to read, the positional NODEs);
- whether it reaches the agent's spec (``protocol.InstallSpec``, same name): the
  launcher copies exactly those, and a test checks the set against InstallSpec;
- whether a retry carries it (``controller/core/retry.py`` reads those back from
  the task's spec, so a carried field must reach the spec).

``AsyncClient.start``/``start_fleet`` take every field by its API name, checked
against this table. Adding a field is one ``option(...)`` line in InstallRequest
(plus, when it reaches the spec, the field in InstallSpec for the agent).

This module holds only the vocabulary; it imports nothing of the controller, so
``schemas`` can use it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field
from pydantic_core import PydanticUndefined


@dataclass(frozen=True)
class Const:
    """A flag that sets its field to ``value`` (several of them are mutually exclusive)."""

    flag: str
    value: Any
    help: str


@dataclass(frozen=True)
class Valued:
    """A flag that takes a value and makes the field's value of it; beside other
    :class:`Const` or :class:`Valued` flags of the field, mutually exclusive with them.

    ``parse`` turns the text into the value (a ``ValueError`` says why a text is
    bad); ``choices`` limits the text. ``bare``: the value the flag means given
    alone (``--restart`` is ``--restart=auto``): its value then only ever follows
    ``=``, since an optional value would swallow the NODE after the flag."""

    flag: str
    help: str
    metavar: str
    parse: Callable[[str], Any] = str
    choices: tuple[str, ...] | None = None
    bare: str | None = None


#: The flags of a field that has several (mutually exclusive).
Flags = tuple[Const | Valued, ...]


@dataclass(frozen=True)
class Hand:
    """The install command reads this field itself (a file, the positional NODEs):
    ``flags`` names what it adds, so a test can check they are there."""

    flags: tuple[str, ...]


@dataclass(frozen=True)
class Declared:
    """What :func:`option` records beside pydantic's own field information."""

    help: str
    #: ``"--flag"`` (takes a value, or toggles a bool away from its default), a
    #: tuple of :class:`Const`/:class:`Valued` flags, :class:`Hand`, or None (no
    #: command-line flag: only the API and the clients take it).
    cli: str | Flags | Hand | None
    spec: bool
    retry: bool
    metavar: str | None = None
    #: What the default means, where the value alone does not say it (None: discovered).
    shown_default: str | None = None
    #: The flag's help when it differs from the field's (a ``--no-…`` toggle).
    flag_help: str | None = None


def option(
    default: Any = PydanticUndefined,
    *,
    help: str,
    cli: str | Flags | Hand | None,
    spec: bool,
    retry: bool,
    metavar: str | None = None,
    shown_default: str | None = None,
    flag_help: str | None = None,
    **constraints: Any,
) -> Any:
    """A field of the install request: pydantic's ``Field`` plus its declaration."""
    info = Field(default, description=help, **constraints)
    info.metadata.append(Declared(help, cli, spec, retry, metavar, shown_default, flag_help))
    return info


@dataclass(frozen=True)
class InstallField:
    """One row of the table, as the derivations read it."""

    name: str
    annotation: Any
    required: bool
    default: Any
    declared: Declared

    @property
    def help(self) -> str:
        return self.declared.help

    @property
    def cli(self) -> str | Flags | Hand | None:
        return self.declared.cli

    @property
    def spec(self) -> bool:
        return self.declared.spec

    @property
    def retry(self) -> bool:
        return self.declared.retry

    @property
    def default_text(self) -> str:
        """The default in words, for help texts."""
        if self.declared.shown_default is not None:
            return self.declared.shown_default
        if self.default is None:
            return "none"
        if isinstance(self.default, bool):
            return "on" if self.default else "off"
        if isinstance(self.default, float):
            return f"{self.default:g}"
        return str(self.default)


class UndeclaredField(TypeError):
    """A field of the install request declared without :func:`option`."""


def declared_fields(model: type[BaseModel]) -> tuple[InstallField, ...]:
    """The table: every field of ``model`` with its declaration, in order.

    Raises :class:`UndeclaredField` (at import, so nothing runs half-derived) for a
    field added with a bare type or ``Field``: it would silently miss the command
    line, the clients, the spec or a retry."""
    rows = []
    for name, info in model.model_fields.items():
        declared = [item for item in info.metadata if isinstance(item, Declared)]
        if len(declared) != 1:
            raise UndeclaredField(
                f"{model.__name__}.{name} is not declared with option(...): give its help, "
                "its command-line flag (cli=), whether it reaches the agent's spec (spec=) "
                "and whether a retry carries it (retry=)"
            )
        required = info.is_required()
        rows.append(
            InstallField(
                name=name,
                annotation=info.annotation,
                required=required,
                default=None if required else info.default,
                declared=declared[0],
            )
        )
    return tuple(rows)


def options_doc(fields: tuple[InstallField, ...]) -> str:
    """The options, one line each, for a docstring."""
    lines = ["", "", "Options (``controller.core.schemas.InstallRequest`` declares them):", ""]
    for field in fields:
        default = "" if field.required else f" (default: {field.default_text})"
        lines.append(f"- ``{field.name}``: {field.help}{default}")
    return "\n".join(lines) + "\n"
