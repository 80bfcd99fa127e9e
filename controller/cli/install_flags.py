"""``nodeferry install``'s option flags, derived from the install's declaration
(:data:`controller.core.schemas.INSTALL_FIELDS`): one flag per field, its help
ending in the real default, and :func:`install_options` reading them back as the
client's keyword arguments, the same for one instance and for a fleet.

A flag the person does not give stays ``None`` and is left out of the request,
so the controller applies its own default (``default_pip_args``, say).
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, Literal

from controller.core.install_fields import Const, Hand, InstallField, Valued
from controller.core.schemas import INSTALL_FIELDS


def _value_type(field: InstallField) -> Any:
    """The one non-None type of ``field``'s annotation."""
    annotation = field.annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation


def _add(parser: argparse.ArgumentParser, field: InstallField) -> None:
    cli = field.cli
    declared = field.declared
    if isinstance(cli, tuple):
        group = parser.add_mutually_exclusive_group()
        for flag in cli:
            if isinstance(flag, Const):
                group.add_argument(
                    flag.flag,
                    dest=field.name,
                    action="store_const",
                    const=flag.value,
                    default=None,
                    help=f"{flag.help} (default: {field.default_text})",
                )
            else:
                group.add_argument(
                    flag.flag,
                    dest=field.name,
                    type=_parser(flag.parse, flag.flag),
                    choices=flag.choices,
                    metavar=flag.metavar,
                    default=None,
                    help=f"{flag.help} (default: {field.default_text})",
                )
        return
    if not isinstance(cli, str):
        raise TypeError(f"{field.name}: cli must be a flag, Const flags, Hand or None")
    value_type = _value_type(field)
    if value_type is bool:
        # A toggle away from the default: --queue (off by default), --no-low-priority.
        parser.add_argument(
            cli,
            dest=field.name,
            action="store_const",
            const=not field.default,
            default=None,
            help=declared.flag_help or field.help,
        )
        return
    help_text = field.help if field.required else f"{field.help} (default: {field.default_text})"
    options: dict[str, Any] = {"dest": field.name, "help": help_text}
    if declared.metavar:
        options["metavar"] = declared.metavar
    if field.required:
        options["required"] = True
    if typing.get_origin(value_type) is list:
        (item,) = typing.get_args(value_type)
        options.update(action="append", type=item, default=None)
    elif typing.get_origin(value_type) is Literal:
        options.update(choices=typing.get_args(value_type), default=None)
    elif value_type in (int, float, str):
        options.update(type=value_type, default=None)
    else:
        raise TypeError(
            f"InstallRequest.{field.name} ({field.annotation!r}) has no command-line form of "
            "its own: declare it with Const flags, Hand (the command reads it) or cli=None"
        )
    parser.add_argument(cli, **options)


def _parser(parse: Callable[[str], Any], flag: str) -> Callable[[str], Any]:
    """``parse`` for argparse: its ``ValueError`` becomes the flag's own error message."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = flag  # what argparse names in "invalid … value"
    return convert


def _bare_values() -> dict[str, str]:
    return {
        flag.flag: flag.bare
        for field in INSTALL_FIELDS
        if isinstance(field.cli, tuple)
        for flag in field.cli
        if isinstance(flag, Valued) and flag.bare is not None
    }


def bare_flags(words: Sequence[str]) -> list[str]:
    """The command line with each declared bare flag given its value: ``--restart``
    alone is ``--restart=auto`` (an optional value would swallow the NODE after it)."""
    bare = _bare_values()
    return [f"{word}={bare[word]}" if word in bare else word for word in words]


def add_install_flags(parser: argparse.ArgumentParser) -> None:
    """Every declared flag; the :class:`Hand` ones are the command's own."""
    for field in INSTALL_FIELDS:
        if field.cli is not None and not isinstance(field.cli, Hand):
            _add(parser, field)


def install_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options given on the command line, by API name (``None``: not given)."""
    options = {}
    for field in INSTALL_FIELDS:
        if field.cli is None or isinstance(field.cli, Hand):
            continue
        value = getattr(args, field.name)
        if value is not None:
            options[field.name] = value
    return options
