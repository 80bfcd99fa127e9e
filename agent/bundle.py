"""The agent as one self-contained zipapp: ``agent`` + ``protocol`` + ``__main__.py``.

The archive is byte-identical for the same source (sorted entries, fixed
timestamps and permissions), so its sha256 names the agent version: the
controller uploads ``~/.nodeferry/agent/<sha256>.pyz`` only when an instance
lacks that exact file.
"""

import functools
import hashlib
import io
import zipfile
from pathlib import Path
from typing import List, Tuple

PACKAGES = ("agent", "protocol")
SHEBANG = b"#!/usr/bin/env python3\n"
MAIN = b"import sys\n\nfrom agent.cli import main\n\nsys.exit(main())\n"
_EPOCH = (1980, 1, 1, 0, 0, 0)


class Bundle:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.sha256 = hashlib.sha256(data).hexdigest()

    @property
    def filename(self) -> str:
        return f"{self.sha256}.pyz"


def source_root() -> Path:
    """The directory holding the ``agent`` and ``protocol`` packages."""
    return Path(__file__).resolve().parent.parent


def _sources(root: Path) -> List[Tuple[str, bytes]]:
    files: List[Tuple[str, bytes]] = []
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            relative = path.relative_to(root)
            if "__pycache__" in relative.parts:
                continue
            files.append((relative.as_posix(), path.read_bytes()))
    files.append(("__main__.py", MAIN))
    return sorted(files)


def build_pyz(root: "Path | None" = None) -> bytes:
    """The zipapp's bytes; the same source gives the same bytes."""
    source = Path(root) if root is not None else source_root()
    buffer = io.BytesIO()
    buffer.write(SHEBANG)
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in _sources(source):
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            info.create_system = 3  # unix, whatever machine builds it
            archive.writestr(info, data, compresslevel=9)
    return buffer.getvalue()


@functools.lru_cache(maxsize=1)
def bundle() -> Bundle:
    """The bundle of the agent this process imports, built once."""
    return Bundle(build_pyz())
