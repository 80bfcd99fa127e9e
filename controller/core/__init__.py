"""The task core: the request schemas, the task registry and the task service,
split by role (``service`` is the facade; ``launcher`` starts tasks, ``reader``
reads their progress, ``retention`` keeps and removes them, ``live`` holds the
in-memory state they share).

Imports ``protocol``, ``controller.common``, ``controller.core.sources``,
``controller.transports`` and ``controller.ssh``; never ``controller.api`` or
``controller.cli``, which build on it.
"""
