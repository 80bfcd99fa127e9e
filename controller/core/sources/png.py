"""The ``workflow`` / ``prompt`` text chunks ComfyUI writes into the PNGs it saves.

Standard library only: the chunk layout is simple and a decoder library would
only add attack surface. Compressed chunks are inflated with a hard output cap.
"""

from __future__ import annotations

import struct
import zlib

from controller.core.sources.errors import SourceError

SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Largest PNG looked at, and largest text a chunk may inflate to.
MAX_PNG_BYTES = 64 * 1024 * 1024
MAX_TEXT_BYTES = 16 * 1024 * 1024
KEYS = ("workflow", "prompt")


def is_png(data: bytes) -> bool:
    return data.startswith(SIGNATURE)


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, MAX_TEXT_BYTES + 1)
    except zlib.error as exc:
        raise SourceError("workflow", f"a compressed PNG text chunk is corrupt: {exc}") from None
    if len(out) > MAX_TEXT_BYTES:
        raise SourceError("workflow", f"a PNG text chunk inflates past {MAX_TEXT_BYTES} bytes")
    return out


def _text_chunk(kind: bytes, body: bytes) -> tuple[str, str] | None:
    """(keyword, text) of a tEXt, zTXt or iTXt chunk."""
    keyword, sep, rest = body.partition(b"\0")
    if not sep:
        return None
    key = keyword.decode("latin-1")
    if kind == b"tEXt":
        return key, rest.decode("latin-1")
    if kind == b"zTXt":
        return key, _inflate(rest[1:]).decode("latin-1")
    # iTXt: compression flag, method, language tag \0, translated keyword \0, text
    if len(rest) < 2:
        return None
    compressed = rest[0] == 1
    _language, _, rest = rest[2:].partition(b"\0")
    _translated, _, text = rest.partition(b"\0")
    if compressed:
        text = _inflate(text)
    return key, text.decode("utf-8", "replace")


def text_chunks(data: bytes) -> dict[str, str]:
    """The PNG's ``workflow`` and ``prompt`` texts (absent keys left out)."""
    if len(data) > MAX_PNG_BYTES:
        raise SourceError("workflow", f"the PNG is larger than {MAX_PNG_BYTES} bytes")
    if not is_png(data):
        raise SourceError("workflow", "is not a PNG file")
    found: dict[str, str] = {}
    offset = len(SIGNATURE)
    while offset + 8 <= len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        if len(body) < length:
            raise SourceError("workflow", "the PNG is truncated")
        offset += 12 + length  # length, type, data, CRC
        if kind in (b"tEXt", b"zTXt", b"iTXt"):
            chunk = _text_chunk(kind, body)
            if chunk is not None and chunk[0] in KEYS and chunk[0] not in found:
                found[chunk[0]] = chunk[1]
        elif kind == b"IEND":
            break
    return found
