"""Local stand-ins for the parts of a real install, shared by ``nodeferry demo``
and the tests: a ``git daemon`` on 127.0.0.1 (``gitserver``), hand-made wheels
(``wheels``), a fake ComfyUI folder with its own venv (``comfy``), and the demo's
ready-made playground of sample nodes built from them (``playground``).

Standard library only; imports nothing from ``controller.api`` or
``controller.cli``. Nothing here touches the network beyond loopback.
"""
