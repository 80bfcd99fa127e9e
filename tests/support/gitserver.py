"""Moved to :mod:`controller.sandbox.gitserver` (one implementation for the demo and
the tests); kept so ``tests.support.gitserver`` imports still work."""

from controller.sandbox.gitserver import (
    Content,
    GitServer,
    Repo,
    free_port,
    git,
    git_env,
)

__all__ = [
    "Content",
    "GitServer",
    "Repo",
    "free_port",
    "git",
    "git_env",
]
