"""Tiny pure-Python wheels built by hand (a zip with METADATA, WHEEL, RECORD).

No build backend and no network: ``build_wheel(wheelhouse, "foo", "1.0")`` writes
``foo-1.0-py3-none-any.whl`` that pip and uv install like any other. The
package imports as ``foo`` and has ``__version__``.

Used by ``nodeferry demo`` (through ``playground``), the tests and the benchmark.
"""

from __future__ import annotations

import base64
import hashlib
import re
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

_EPOCH = (1980, 1, 1, 0, 0, 0)


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _record_hash(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def build_wheel(
    wheelhouse: str | Path,
    name: str,
    version: str,
    *,
    requires: Sequence[str] = (),
    modules: Mapping[str, str] | None = None,
) -> Path:
    """Write the wheel for ``name==version`` into ``wheelhouse``; returns its path.

    ``requires`` become ``Requires-Dist`` lines. ``modules`` maps file names in
    the wheel to their text; by default one package ``<name>/__init__.py``.
    """
    wheelhouse = Path(wheelhouse)
    wheelhouse.mkdir(parents=True, exist_ok=True)
    dist = normalize(name)
    dist_info = f"{dist}-{version}.dist-info"
    if modules is None:
        modules = {f"{dist}/__init__.py": f'__version__ = "{version}"\n'}
    metadata = "Metadata-Version: 2.1\nName: {}\nVersion: {}\n{}".format(
        name, version, "".join(f"Requires-Dist: {req}\n" for req in requires)
    )
    wheel = (
        "Wheel-Version: 1.0\nGenerator: nodeferry-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    files: list[tuple[str, bytes]] = [(path, text.encode()) for path, text in modules.items()]
    files.append((f"{dist_info}/METADATA", metadata.encode()))
    files.append((f"{dist_info}/WHEEL", wheel.encode()))
    record_lines = [f"{path},{_record_hash(data)},{len(data)}" for path, data in files]
    record_lines.append(f"{dist_info}/RECORD,,")
    files.append((f"{dist_info}/RECORD", ("\n".join(record_lines) + "\n").encode()))
    target = wheelhouse / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, data in files:
            info = zipfile.ZipInfo(path, date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return target


def build_wheelhouse(
    wheelhouse: str | Path,
    packages: Mapping[str, Sequence[str]],
    requires: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, list[Path]]:
    """Several wheels at once: ``{"torch": ["1.0.0", "2.0.0"], "tinydep": ["1.0"]}``.

    ``requires`` maps ``name==version`` (or just ``name``, for every version) to
    that wheel's requirements.
    """
    requires = requires or {}
    built: dict[str, list[Path]] = {}
    for name, versions in packages.items():
        for version in versions:
            reqs = requires.get(f"{name}=={version}", requires.get(name, ()))
            built.setdefault(name, []).append(build_wheel(wheelhouse, name, version, requires=reqs))
    return built
