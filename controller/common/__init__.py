"""What every layer of the controller shares: settings (``config``), the error
hierarchy (``errors``), targets and their ``~/.ssh/config`` lookup (``target``,
``ssh_config``), the API token (``apitoken``) and counters (``stats``).

The bottom layer: imports ``protocol`` and third-party packages only, never
another ``controller`` package, so ``ssh``, ``transports`` and ``core`` all
build on it without importing each other upward.
"""
