import enum


class ExitCode(enum.IntEnum):
    """Exit statuses of the agent's subcommands: part of its argv contract."""

    OK = 0
    #: ``install``/``run``: the install finished but at least one node failed.
    INSTALL_FAILED = 1
    #: Bad arguments or an invalid spec; nothing was changed.
    INVALID = 2
    #: Another install holds the lock for this ComfyUI home.
    CONFLICT = 3
    #: No task with that id on this instance.
    UNKNOWN_TASK = 4
    #: The agent itself failed (a bug or an unusable machine); see the message.
    INTERNAL = 5
    #: The install was cancelled.
    CANCELLED = 6
    #: ``status``/``cancel``: the task exists but its progress document does not
    #: parse (not UTF-8, not JSON, not a document): unreadable, not missing.
    UNREADABLE_PROGRESS = 7
