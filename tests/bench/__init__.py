"""nodeferry's benchmarks: ``python -m tests.bench [--smoke] [--json PATH]``.

Every figure is measured in one run against a baseline measured in the same run,
on loopback, against real sshd instances, a real git daemon and real venvs that
the script starts itself. See docs/BENCHMARKS.md for the results and how to read
them.
"""
