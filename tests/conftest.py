"""Project-wide test settings. Fixtures with real parts (git daemon, sshd, venvs)
live in tests/support and are wired up by each area's conftest."""
