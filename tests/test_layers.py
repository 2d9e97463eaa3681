"""The package's layers, enforced: no module imports a layer above its own,
siblings in one layer do not import each other, and there are no cycles.

ARCHITECTURE.md draws the same map.  Every import counts, including the ones
inside functions (a lazy import is still a dependency)."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent / "vault_raft"

# Bottom to top.  A module may import its own package and any package in a
# lower layer; packages that share a layer are independent of each other.
LAYERS: list[set[str]] = [
    {"errors", "limits", "logs"},
    {"core", "crypto"},
    {"storage"},
    {"raft"},
    {"api"},
    {"trust"},
    {"fleet"},
    {"node", "client"},
    {"ops"},
    {"chaos", "bench"},
    {"cli"},
    {"__main__", "__init__"},  # the entry point and the public API
]
RANK = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = p.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _imports(mod: str, path: pathlib.Path) -> set[str]:
    """Every vault_raft module ``mod`` imports (a name imported from a
    package counts as that submodule when there is one)."""
    tree = ast.parse(path.read_text(), str(path))
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    deps: set[str] = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom):
            if n.level:
                base = pkg.split(".")[: len(pkg.split(".")) - (n.level - 1)]
                m = ".".join(base + ([n.module] if n.module else []))
            else:
                m = n.module or ""
            if m != "vault_raft" and not m.startswith("vault_raft."):
                continue
            for a in n.names:
                sub = f"{m}.{a.name}"
                deps.add(sub if sub in MODULES else m)
        elif isinstance(n, ast.Import):
            deps.update(a.name for a in n.names if a.name.startswith("vault_raft"))
    deps.discard(mod)
    return deps


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _top(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_package_has_a_layer():
    missing = sorted({_top(m) for m in MODULES} - set(RANK))
    assert not missing, f"packages with no layer in LAYERS: {missing}"


def test_no_module_imports_a_layer_above_or_a_sibling():
    bad = []
    for mod, deps in GRAPH.items():
        me = _top(mod)
        for d in deps:
            them = _top(d)
            if them == me or d == "vault_raft":
                continue
            if RANK[them] >= RANK[me]:
                bad.append(f"{mod} -> {d}")
    assert not bad, "imports against the layer order:\n" + "\n".join(sorted(bad))


def test_no_import_cycles():
    """Tarjan's strongly connected components over the module graph."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in GRAPH.get(v, ()):
            if w not in GRAPH:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize("planted", ["vault_raft.cli.main", "vault_raft.node.main"])
def test_the_checker_sees_an_upward_import(planted):
    """The check can fail: a storage module importing an upper layer is caught."""
    mod = "vault_raft.storage.journal"
    saved = GRAPH[mod]
    GRAPH[mod] = saved | {planted}
    try:
        with pytest.raises(AssertionError, match="against the layer order"):
            test_no_module_imports_a_layer_above_or_a_sibling()
    finally:
        GRAPH[mod] = saved
