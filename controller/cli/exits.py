"""The exit statuses of ``nodeferry``, as ``--help`` shows them."""

#: Also in README's command table; `python -m agent --help` lists the agent's.
EXIT_CODES_HELP = """exit status:
  0    done: every node installed (or was already there); other commands: it worked
  1    the install finished with a failed node, or the task failed or was lost
  2    bad arguments, a refused request or an ambiguous task id; nothing changed
  3    an install into that ComfyUI on that machine is already running
  4    no such task
  5    the controller could not be reached, or failed
  6    the install was cancelled
  124  install --timeout ran out (the install keeps running)
  130  detached with Ctrl-C (the install keeps running)"""
