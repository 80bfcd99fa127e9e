import re

_NODE_INDEX = re.compile(r"\bnodes\.(\d+)")


class ProtocolError(ValueError):
    """A document or a field of one is not valid.

    ``field`` is the dotted path of the offending field (``nodes.2.url``) so an
    API can answer with a message naming it.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


def count_nodes_from_one(text: str) -> str:
    """``nodes.0.url`` as a person counts the nodes on a command line: ``NODE 1.url``.

    Field paths index from 0, like the JSON list; the command lines number the
    nodes they were given from 1.
    """
    return _NODE_INDEX.sub(lambda m: f"NODE {int(m.group(1)) + 1}", text)
