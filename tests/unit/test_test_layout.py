"""The suite's own layout: test modules share code only through tests/helpers/ and conftest.py."""

from __future__ import annotations

import ast
import re

from tests.helpers import ROOT

TEST_MODULE = re.compile(r"(^|\.)(test_\w+|conftest)$")
CLASS_PATH = re.compile(r"^(test_\w+|conftest)\.[A-Z]\w*$")  # a config naming a class inside a test module


def test_no_test_module_imports_another():
    found = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and TEST_MODULE.search(node.module):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {node.module}")
            elif isinstance(node, ast.Import):
                found += [
                    f"{path.relative_to(ROOT)}:{node.lineno} imports {a.name}"
                    for a in node.names
                    if TEST_MODULE.search(a.name)
                ]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and CLASS_PATH.match(node.value):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} names {node.value}")
    assert not found, "move shared code into tests/helpers/ or a conftest.py fixture:\n" + "\n".join(found)


def test_every_test_module_is_unit_or_integration():
    stray = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "tests").rglob("test_*.py")
        if p.parent.name not in ("unit", "integration")
    ]
    assert not stray, f"tests live in tests/unit/ or tests/integration/: {stray}"
