"""SSH to instances: host-key policy, a connection pool with SFTP, remote commands.

Imports ``controller.common`` only (of the controller): the task core builds on
it, never the reverse.
"""
