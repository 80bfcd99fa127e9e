"""Credentials in URLs, masked: the one function every document, log and stream uses.

``https://user:PW@host/x.git`` and ``https://TOKEN@host/x`` (a token given as the
user name) become ``https://***@host/...``. An ``ssh://git@host`` login name is no
secret and stays; with a password it is masked too. The spec keeps the real URL
(git needs it to clone); every copy meant to be read (the progress document, the
lock, the log, the controller's answers and history) carries the masked one.
"""

import re

MASK = "***"

_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^/@\s]+)@")


def _mask(match: "re.Match[str]") -> str:
    scheme, userinfo = match.group(1), match.group(2)
    if ":" in userinfo or not scheme.lower().startswith(("ssh", "git+ssh", "git://")):
        return f"{scheme}{MASK}@"
    return match.group(0)


def mask_credentials(text: str) -> str:
    """``text`` with the user info of every ``scheme://user[:password]@`` masked."""
    if "@" not in text:
        return text
    return _USERINFO.sub(_mask, text)
