"""nodeferry's agent: installs ComfyUI custom nodes on the instance it runs on.

Standard library only and importable on Python 3.8: it is shipped to instances
as one zipapp (see :mod:`agent.bundle`) and run by whatever Python they have.
"""

from protocol import __version__

__all__ = ["__version__"]
