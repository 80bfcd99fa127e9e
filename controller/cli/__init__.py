"""The terminal programs: the ``nodeferry`` entry point (``main``), the server side
(``server``: serve, hosts), the client side (``console``: install, status,
cancel, logs, tasks) with its live view (``display``), ``demo`` and
``bundle`` (agent-bundle).

Imports ``controller.core``, ``controller.client``, ``controller.sandbox``,
``controller.api`` (to serve or run the app in-process) and ``agent.bundle``;
nothing imports it.
"""
