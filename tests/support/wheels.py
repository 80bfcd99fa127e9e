"""Moved to :mod:`controller.sandbox.wheels` (one implementation for the demo and
the tests); kept so ``tests.support.wheels`` imports still work."""

from controller.sandbox.wheels import (
    build_wheel,
    build_wheelhouse,
    normalize,
)

__all__ = [
    "build_wheel",
    "build_wheelhouse",
    "normalize",
]
