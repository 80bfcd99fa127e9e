"""What to install, said the way a user already has it: node URLs and Comfy
Registry ids, a ComfyUI workflow (JSON in the UI or API format, or a PNG that
carries one), a ComfyUI-Manager snapshot, or the controller's ``default_nodes``.

``workflow``, ``png`` and ``snapshot`` parse those (untrusted input: sizes
capped, nothing reaches a shell); ``nodedb`` loads ComfyUI-Manager's node
database; ``registry`` turns registry ids into repositories; ``resolver`` makes
the deterministic, explained selection; ``selection`` merges every source of a request
into the node list an install spec takes (each entry still passes
``protocol.parse_node``). Part of ``controller.core``: imports ``protocol`` and
``controller.core``/``controller.transports`` only.
"""
