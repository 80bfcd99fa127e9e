"""docs/ARCHITECTURE.md against the tree: the package map names every module and
nothing that is gone, and the imports keep to the layers it lists (read with ast:
no module is imported, so a cycle cannot hide behind import order)."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "ARCHITECTURE.md"
PACKAGES = ("controller", "agent", "protocol")


# -- the package map ---------------------------------------------------------------


def map_block(text: str) -> list[str]:
    """The lines of the fenced block that begins with ``controller/``."""
    match = re.search(r"```\ncontroller/\n(.*?)```", text, re.S)
    assert match, "ARCHITECTURE.md has no package map (a ``` block starting with controller/)"
    return match.group(1).splitlines()


def without_parentheses(text: str) -> str:
    out, depth = [], 0
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif depth == 0:
            out.append(char)
    assert depth == 0, f"unbalanced parentheses in the package map: {text!r}"
    return "".join(out)


def listed_modules(description: str) -> set[str]:
    """``label: a (what), b, c`` -> {a, b, c}; a label may also open a later item."""
    text = without_parentheses(description)
    _, colon, items = text.partition(":")
    assert colon, f"a package line needs 'label: modules': {description!r}"
    names = set()
    for item in items.split(","):
        name = item.rpartition(":")[2].strip()
        assert re.fullmatch(r"[a-z0-9_]+", name), f"not a module name: {item!r}"
        names.add(name)
    return names


def parse_map(lines: list[str]) -> dict[str, set[str]]:
    """Package path (``controller``, ``controller/core``, …) -> the entries listed in
    it: module names, and sub-packages as ``name/``."""
    entries: list[tuple[int, str, str]] = []  # indent, name, description
    for line in lines:
        indent = len(line) - len(line.lstrip())
        if not line.strip():
            continue
        if indent < 8:  # a new entry; deeper lines continue the one before
            name, _, rest = line.strip().partition(" ")
            entries.append((indent, name, rest.strip()))
        else:
            indent0, name, rest = entries[-1]
            entries[-1] = (indent0, name, f"{rest} {line.strip()}")
    listed: dict[str, set[str]] = {"controller": set()}
    parents: dict[int, str] = {0: "controller"}
    for indent, name, description in entries:
        parent = parents[max(level for level in parents if level < indent)]
        if name.endswith("/"):
            path = f"{parent}/{name.rstrip('/')}"
            listed[parent].add(name)
            listed[path] = listed_modules(description)
            parents = {level: p for level, p in parents.items() if level < indent}
            parents[indent] = path
        else:
            listed[parent].add(name)
    return listed


def tree(package: str) -> dict[str, set[str]]:
    """The same shape from the file system: modules and ``name/`` sub-packages."""
    found: dict[str, set[str]] = {}
    for init in sorted((ROOT / package).rglob("__init__.py")):
        folder = init.parent
        rel = folder.relative_to(ROOT).as_posix()
        found[rel] = {p.stem for p in folder.glob("*.py") if p.name != "__init__.py"} | {
            f"{d.name}/" for d in folder.iterdir() if (d / "__init__.py").is_file()
        }
    return found


def test_the_package_map_lists_every_module_and_nothing_gone() -> None:
    listed = parse_map(map_block(DOC.read_text()))
    real = tree("controller")
    problems = []
    for package in sorted(set(listed) | set(real)):
        missing = real.get(package, set()) - listed.get(package, set())
        gone = listed.get(package, set()) - real.get(package, set())
        if missing:
            problems.append(f"{package}/ has {sorted(missing)}, not in the map")
        if gone:
            problems.append(f"the map lists {sorted(gone)} in {package}/, which has none")
    assert not problems, "docs/ARCHITECTURE.md's package map:\n" + "\n".join(problems)


def test_the_map_parser_sees_labels_parentheses_and_continuations() -> None:
    lines = [
        "  client       (one module: not a package)",
        "  cli/         nodeferry: main (entry, point), console",
        "               (install: status), history",
        "    sub/       x: a, and then: b",
        "  api/         the service: app",
    ]
    assert parse_map(lines) == {
        "controller": {"client", "cli/", "api/"},
        "controller/cli": {"main", "console", "history", "sub/"},
        "controller/cli/sub": {"a", "b"},
        "controller/api": {"app"},
    }
    with pytest.raises(AssertionError, match="not a module name"):
        listed_modules("label: two words")


# -- layers ------------------------------------------------------------------------


def doc_layers(text: str) -> list[list[str]]:
    """The numbered list under ``## Layers``: top first, each a list of packages."""
    section = text.split("\n## Layers\n", 1)[1].split("\n## ", 1)[0]
    layers = []
    for line in section.splitlines():
        match = re.match(r"\d+\. (.*?):", line)
        if match:
            layers.append(re.findall(r"`([\w.]+)`", match.group(1)))
    assert layers, "ARCHITECTURE.md's ## Layers has no numbered list"
    return layers


def modules() -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            yield ".".join(parts), path


def imported(path: Path, name: str) -> Iterator[tuple[str, int]]:
    """Every module ``path`` imports, anywhere in it (function level too), absolute."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            yield module, node.lineno
            for alias in node.names:  # `from pkg import submodule`
                yield f"{module}.{alias.name}", node.lineno


def unit_of(module: str, units: set[str]) -> str | None:
    """The listed package (longest prefix) a module belongs to."""
    best = None
    for unit in units:
        if (module == unit or module.startswith(unit + ".")) and (
            best is None or len(unit) > len(best)
        ):
            best = unit
    return best


def package_graph(units: set[str]) -> dict[str, dict[str, list[str]]]:
    """unit -> unit it imports -> where (``module:line``)."""
    known = dict(modules())
    graph: dict[str, dict[str, list[str]]] = {}
    for name, path in known.items():
        source = unit_of(name, units)
        if source is None and name == "controller":
            continue  # the root package only holds its sub-packages
        assert source, f"{name} belongs to no package of ARCHITECTURE's ## Layers"
        for target, line in imported(path, name):
            while target and target not in known:  # `from m import function` -> m
                target = target.rpartition(".")[0]
            destination = unit_of(target, units) if target else None
            if not destination or destination == source:
                continue
            places = graph.setdefault(source, {}).setdefault(destination, [])
            if f"{name}:{line}" not in places:
                places.append(f"{name}:{line}")
    return graph


def cycles(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    found, state = [], {}  # 1 on the stack, 2 done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                found.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def layer_problems(layers: list[list[str]]) -> list[str]:
    rank = {unit: index for index, layer in enumerate(layers) for unit in layer}
    graph = package_graph(set(rank))
    problems = [" -> ".join(cycle) for cycle in cycles(graph)]
    for source, targets in sorted(graph.items()):
        for target, where in sorted(targets.items()):
            if rank[target] <= rank[source]:
                problems.append(
                    f"{source} imports {target} (layer {rank[target] + 1} is not "
                    f"below {rank[source] + 1}): {', '.join(where)}"
                )
    return problems


def required_units() -> set[str]:
    """What ## Layers must name: every package of controller/ and its top-level
    modules; agent and protocol as wholes."""
    names = set(PACKAGES) - {"controller"}
    for name, path in modules():
        top_module = name.count(".") == 1 and path.name != "__init__.py"
        if name.startswith("controller.") and (path.name == "__init__.py" or top_module):
            names.add(name)
    return names


def test_imports_follow_the_layers_and_packages_have_no_cycle() -> None:
    layers = doc_layers(DOC.read_text())
    listed = {unit for layer in layers for unit in layer}
    assert required_units() <= listed, f"not in ## Layers: {sorted(required_units() - listed)}"
    assert listed <= required_units(), (
        f"gone, but in ## Layers: {sorted(listed - required_units())}"
    )
    problems = layer_problems(layers)
    assert not problems, "imports against docs/ARCHITECTURE.md's layers:\n" + "\n".join(problems)


def test_the_layer_check_catches_an_upward_import_and_a_cycle() -> None:
    # The real tree with ssh moved above the core: the core's imports of ssh are
    # now upward, and the two imports a cycle would need are reported as such.
    layers = doc_layers(DOC.read_text())
    moved = [[u for u in layer if u != "controller.ssh"] for layer in layers]
    moved.insert(0, ["controller.ssh"])
    problems = layer_problems([layer for layer in moved if layer])
    assert any(p.startswith("controller.core imports controller.ssh") for p in problems)
    graph = {"a": {"b": ["a.x:1"]}, "b": {"c": ["b.y:2"]}, "c": {"a": ["c.z:3"]}}
    assert cycles(graph) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b": []}, "b": {}}) == []
