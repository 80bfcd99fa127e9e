"""The terminal programs: the ``nodeferry`` entry point (``main``), the server side
(``server``: serve, hosts), the client side (``console``: install, status,
cancel, logs, tasks) with its live view (``display``), and ``demo``.

Imports ``controller.core``, ``controller.client``, ``controller.sandbox`` and
``controller.api`` (to serve or run the app in-process); nothing imports it.
"""
