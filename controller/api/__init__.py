"""The aiohttp service: ``create_app`` (``app``), its state keys (``appkeys``),
routes, thin handlers, the error and auth middleware, the event streams and
the dashboard with its ``static/`` files.

Imports ``controller.core`` (and ``ssh``/``transports`` to build them); never
``controller.cli``.
"""
