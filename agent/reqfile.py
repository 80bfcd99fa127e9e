"""A node's requirements as packs really write them, split into what can be batched.

``requirements.txt`` files in the wild carry a BOM, CRLF endings, comments,
environment markers, index options, ``-e .``, relative paths and ``git+https``
lines; packs without one declare ``[project] dependencies`` in ``pyproject.toml``.
ComfyUI-Manager runs ``pip install -r requirements.txt`` with the node folder as
the working directory, so relative paths are relative to the node folder.

Plain requirements (markers, ``name @ url`` and ``git+`` lines included) go into
the one batched resolve; index options are added to the batch's options. What
cannot share a resolve safely (editable installs, local project folders, options
that change how everything else is built) is installed alone, and the node says so.
"""

import re
from pathlib import Path
from typing import List, Optional, Set

# Options whose value says where packages come from: safe to apply to the batch.
_SOURCE_OPTIONS = {
    "--extra-index-url": "--extra-index-url",
    "--index-url": "--extra-index-url",  # never replace the batch's index for one node
    "-i": "--extra-index-url",
    "--find-links": "--find-links",
    "-f": "--find-links",
    "--trusted-host": "--trusted-host",
    "--constraint": "-c",
    "-c": "-c",
}
_FLAG_OPTIONS = {"--pre": "--pre", "--prefer-binary": "--prefer-binary"}
_COMMENT = re.compile(r"(^|\s+)#.*$")
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
MAX_INCLUDE_DEPTH = 10


class NodeRequirements:
    """One node's requirements: the batchable lines, batch options and what runs alone."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self.lines: List[str] = []
        #: Options for the whole batch, each ``[flag]`` or ``[option, value]``.
        self.options: List[List[str]] = []
        #: Each an argv tail for its own ``pip install`` (``["-e", "/abs/dir"]``).
        self.alone: List[List[str]] = []
        self.notes: List[str] = []
        #: An option that cannot join a batch was found: install the file as is.
        self.as_written = False

    @property
    def empty(self) -> bool:
        return not self.lines and not self.alone

    def batch_text(self) -> str:
        return "".join(line + "\n" for line in self.lines)


def source_of(node_dir: Path) -> Optional[Path]:
    """The file a node declares its requirements in, if any."""
    for name in ("requirements.txt", "pyproject.toml"):
        candidate = node_dir / name
        if candidate.is_file():
            if name == "pyproject.toml" and not project_dependencies(candidate):
                return None
            return candidate
    return None


def read_node(node_dir: Path) -> Optional[NodeRequirements]:
    """The node's requirements, or None when it declares none."""
    source = source_of(node_dir)
    if source is None:
        return None
    reqs = NodeRequirements(source)
    if source.name == "pyproject.toml":
        reqs.lines = project_dependencies(source)
        reqs.notes.append("requirements from pyproject.toml [project] dependencies")
    else:
        _read_file(source, node_dir, reqs, set(), 0)
        if reqs.as_written:
            reqs.lines, reqs.options = [], []
            reqs.alone = [["-r", str(source)]]
    return None if reqs.empty else reqs


def _logical_lines(path: Path) -> List[str]:
    text = path.read_bytes().decode("utf-8-sig", "replace")  # drops a BOM
    out: List[str] = []
    pending = ""
    for raw in text.splitlines():  # \n, \r\n and \r alike
        line = pending + raw
        if line.endswith("\\"):
            pending = line[:-1]
            continue
        pending = ""
        out.append(line)
    if pending:
        out.append(pending)
    return out


def _option_value(line: str) -> "tuple[str, str]":
    """``--opt=value`` / ``--opt value`` / ``-ovalue`` as (option, value)."""
    if line.startswith("--"):
        option, sep, value = line.partition("=")
        if not sep:
            option, _space, value = line.partition(" ")
        return option.strip(), value.strip()
    option, value = line[:2], line[2:].strip()
    return option, value


def _local(value: str, base: Path) -> str:
    """A path in a requirements file, made absolute against the node folder."""
    if value.startswith("file:"):
        return value
    return str((base / value).resolve()) if not Path(value).is_absolute() else value


def _looks_like_path(line: str) -> bool:
    return line.startswith((".", "/", "~")) or (
        "/" in line and not _URL.match(line) and " @ " not in line and "@" not in line
    )


def _read_file(
    path: Path, node_dir: Path, reqs: NodeRequirements, seen: Set[Path], depth: int
) -> None:
    resolved = path.resolve()
    if resolved in seen or depth > MAX_INCLUDE_DEPTH:
        return
    seen.add(resolved)
    for raw in _logical_lines(path):
        line = _COMMENT.sub("", raw).strip()
        if not line:
            continue
        if line.startswith("-"):
            _read_option(line, path, node_dir, reqs, seen, depth)
        elif _looks_like_path(line):
            target = Path(_local(line.split(";")[0].strip(), node_dir))
            if target.is_dir():
                reqs.alone.append([str(target)])
                reqs.notes.append(f"installed alone (a local project): {line}")
            else:
                reqs.lines.append(str(target))
        else:
            reqs.lines.append(line)


def _read_option(
    line: str, path: Path, node_dir: Path, reqs: NodeRequirements, seen: Set[Path], depth: int
) -> None:
    option, value = _option_value(line)
    if option in ("-r", "--requirement"):
        # pip reads a nested file relative to the file that names it.
        _read_file(path.parent / value, node_dir, reqs, seen, depth + 1)
    elif option in ("-e", "--editable"):
        target = (
            value if _URL.match(value) or "+" in value.split("/")[0] else _local(value, node_dir)
        )
        reqs.alone.append(["-e", target])
        reqs.notes.append(f"installed alone (editable): {line}")
    elif option in _SOURCE_OPTIONS:
        if option in ("-f", "--find-links", "-c", "--constraint") and not _URL.match(value):
            value = _local(value, node_dir)
        if option in ("-i", "--index-url"):
            reqs.notes.append(f"its index {value} is used as an extra index for the batch")
        reqs.options.append([_SOURCE_OPTIONS[option], value])
    elif option in _FLAG_OPTIONS:
        reqs.options.append([_FLAG_OPTIONS[option]])
    else:
        # --no-binary, --global-option and the like change how everything in a
        # resolve is built: the whole file is installed on its own, as written.
        reqs.as_written = True
        reqs.notes.append(f"installed alone as written (option {option} cannot be batched)")


def project_dependencies(pyproject: Path) -> List[str]:
    """``[project] dependencies`` from a pyproject.toml, without a TOML library.

    Python 3.8 has no tomllib; this reads the one array we need: strings inside
    ``dependencies = [ ... ]`` in the ``[project]`` table.
    """
    try:
        text = pyproject.read_bytes().decode("utf-8-sig", "replace")
    except OSError:
        return []
    table = ""
    collecting = False
    buffer = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not collecting and re.match(r"^\[[^\]]+\]\s*(#.*)?$", stripped):
            table = stripped.split("]")[0].strip("[ ")
            continue
        if table != "project":
            continue
        if not collecting:
            match = re.match(r"^dependencies\s*=\s*(.*)$", stripped)
            if not match:
                continue
            collecting = True
            stripped = match.group(1)
        buffer += " " + _strip_toml_comment(stripped)
        if _array_closed(buffer):
            break
    if not collecting:
        return []
    found = re.findall(r'"((?:[^"\\]|\\.)*)"|\'([^\']*)\'', buffer)
    # Basic strings unescape \" and \\; literal strings ('...') take text as is.
    values = [re.sub(r"\\(.)", r"\1", a) if a else b for a, b in found]
    return [value for value in values if value.strip()]


def _strip_toml_comment(line: str) -> str:
    quote = ""
    for i, char in enumerate(line):
        if quote:
            if char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
        elif char == "#":
            return line[:i]
    return line


def _array_closed(buffer: str) -> bool:
    depth = 0
    quote = ""
    for char in buffer:
        if quote:
            if char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
        elif char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth == 0:
                return True
    return False
