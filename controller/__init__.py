"""The nodeferry controller: an aiohttp service that drives agents over SSH.

Grouped by role, with imports flowing one way (left may import right):

- ``api/``, ``cli/``: the HTTP service and dashboard; the terminal programs.
- ``client.py``: the Python client of the HTTP API.
- ``core/``: the task core (settings, errors, registry, the task service);
  ``ssh/`` and ``transports/`` reach the machines and belong to the core.
- ``sandbox/``: local stand-ins (git daemon, wheelhouse, fake ComfyUI) for the
  demo and the tests.
"""
