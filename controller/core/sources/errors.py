"""The one error of this package: a source that cannot be used, naming its field."""

from __future__ import annotations

from controller.common.errors import InvalidRequest


class SourceError(InvalidRequest):
    """A workflow, snapshot, registry id or node database that cannot be used.

    A 400 through the API (the request named it), an error message in the CLI.
    """
