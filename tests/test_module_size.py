"""Modules and functions stay small enough to read.

A module over MODULE_LINES lines says why it is one module, in a paragraph of
its docstring that begins ``Why one module:``.  In the layers that carry the
guess limit's safety (node/, raft/, storage/) no function is over
FUNCTION_LINES lines: a function that long hides its own invariants."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent / "vault_raft"
MODULE_LINES = 400
FUNCTION_LINES = 60
SHORT_FUNCTION_PACKAGES = ("node", "raft", "storage")
FILES = sorted(ROOT.rglob("*.py"))


def _long_modules(files, root=ROOT) -> list[str]:
    out = []
    for p in files:
        src = p.read_text()
        if src.count("\n") <= MODULE_LINES:
            continue
        doc = ast.get_docstring(ast.parse(src)) or ""
        if "Why one module:" not in doc:
            out.append(f"{p.relative_to(root.parent)} ({src.count(chr(10))} lines)")
    return out


def _long_functions(files, root=ROOT) -> list[str]:
    out = []
    for p in files:
        rel = p.relative_to(root)
        if rel.parts[0] not in SHORT_FUNCTION_PACKAGES:
            continue
        for f in ast.walk(ast.parse(p.read_text())):
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = (f.end_lineno or f.lineno) - f.lineno + 1
                if n > FUNCTION_LINES:
                    out.append(f"{rel}:{f.lineno} {f.name} ({n} lines)")
    return out


def test_long_modules_say_why():
    assert _long_modules(FILES) == []


def test_no_long_functions_in_the_safety_layers():
    assert _long_functions(FILES) == []


@pytest.mark.parametrize("doc", ['"""Short."""\n', '"""Long.\n\nWhy one module: a reason."""\n'])
def test_the_check_sees_a_planted_long_module(tmp_path, doc):
    p = tmp_path / "planted.py"
    p.write_text(doc + "x = 1\n" * (MODULE_LINES + 1))
    assert bool(_long_modules([p], tmp_path)) == ("Why one module" not in doc)


def test_the_check_sees_a_planted_long_function(tmp_path):
    pkg = tmp_path / "node"
    pkg.mkdir()
    p = pkg / "planted.py"
    p.write_text("def f():\n" + "    x = 1\n" * FUNCTION_LINES)
    assert _long_functions([p], tmp_path) == [f"node/planted.py:1 f ({FUNCTION_LINES + 1} lines)"]
