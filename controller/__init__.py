"""The nodeferry controller: an aiohttp service that drives agents over SSH.

Grouped by role, in layers that import only downwards (docs/ARCHITECTURE.md's
"Layers", checked by tests/test_architecture.py): ``cli/``; ``api/`` and
``client.py``; ``core/`` (the task service) over ``core/sources/``;
``transports/`` over ``ssh/`` (reaching the machines); ``common/`` (settings,
errors, targets: what every layer shares) and ``sandbox/`` (local stand-ins for
the demo and the tests) at the bottom.
"""
