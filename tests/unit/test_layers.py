"""The package's imports follow the layer order written in docs/design.md, and form no circle."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.helpers import ROOT

PACKAGE = "klear_lightning"


def declared_layers() -> list[list[str]]:
    """The layer block of docs/design.md (the first fenced block under `## Layers`), lowest first."""
    text = (ROOT / "docs" / "design.md").read_text()
    section = text.split("\n## Layers\n", 1)[1]
    block = re.search(r"```text\n(.*?)```", section, re.S)
    assert block, "docs/design.md: no ```text block under ## Layers"
    return [[name.strip() for name in line.split(",")] for line in block[1].strip().splitlines()]


def package_modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    found = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported package module, line) for every import in the file, at any depth (lazy ones too),
    plus `importlib.import_module("klear_lightning...")` calls."""
    is_package = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                out.append((sub if sub in known else module, node.lineno))
        elif isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            out.append((str(node.args[0].value), node.lineno))
    return [(m, line) for m, line in out if m == PACKAGE or m.startswith(PACKAGE + ".")]


def unit_of(module: str, layers: list[list[str]]) -> tuple[int, str] | None:
    """(layer index, name) of the longest declared name that `module` is or lies in."""
    best = None
    for index, names in enumerate(layers):
        for unit in names:
            full = f"{PACKAGE}.{unit}"
            if (module == full or module.startswith(full + ".")) and (best is None or len(unit) > len(best[1])):
                best = (index, unit)
    return best


def import_graph() -> dict[str, set[str]]:
    known = package_modules()
    return {name: {m for m, _ in imports(name, path, known) if m != name} for name, path in known.items()}


def test_layer_block_names_existing_modules_once():
    layers = declared_layers()
    names = [n for layer in layers for n in layer]
    assert len(names) == len(set(names)), "a name is declared twice"
    known = package_modules()
    missing = [n for n in names if f"{PACKAGE}.{n}" not in known]
    assert not missing, f"declared but not in the package: {missing}"


def test_every_module_has_a_layer():
    layers = declared_layers()
    orphans = [m for m in package_modules() if m != PACKAGE and unit_of(m, layers) is None]
    assert not orphans, f"modules without a layer (add them to docs/design.md ## Layers): {orphans}"


def test_no_import_goes_down_the_layer_order():
    layers = declared_layers()
    known = package_modules()
    wrong = []
    for name, path in known.items():
        mine = unit_of(name, layers)
        for module, line in imports(name, path, known):
            theirs = unit_of(module, layers)
            if mine is None or theirs is None:
                if module != PACKAGE:
                    wrong.append(f"{path.relative_to(ROOT)}:{line} imports {module}, which has no layer")
                continue
            if theirs[0] > mine[0]:
                wrong.append(
                    f"{path.relative_to(ROOT)}:{line} ({mine[1]}) imports {module} ({theirs[1]}), a higher layer"
                )
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_no_import_circle():
    graph = import_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert not circles, f"import circles: {circles}"
