"""The sandbox's one error."""


class SandboxError(RuntimeError):
    """A sandbox part could not be built or served (git, a venv, the git daemon)."""
