class ProtocolError(ValueError):
    """A document or a field of one is not valid.

    ``field`` is the dotted path of the offending field (``nodes.2.url``) so an
    API can answer with a message naming it.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message
