"""The module graph: no import cycles and arrows that point down (docs/architecture.md draws the layers).

Every import counts, at module level and inside functions, except those under `if TYPE_CHECKING:`, which never run.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hypernet"
# The two documented convenience methods: Hypernetwork.save (fileformat) and Hypernetwork.compatibility (attach)
# import the modules that build on the network, when they are called.
ALLOWED_BACK_EDGES = {("hypernet.network", "Hypernetwork.save"), ("hypernet.network", "Hypernetwork.compatibility")}


def _modules() -> dict:
    """Dotted module name -> (path, is_package) for every module of the package."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


MODULES = _modules()


def _imports(tree: ast.Module):
    """(import node, 'Class.function' it sits in, or '') for every import that can run."""
    def walk(node, where):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for orelse in child.orelse:
                    yield from walk(orelse, where)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, where
            inner = where
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                inner = f"{where}.{child.name}" if where else child.name
            yield from walk(child, inner)
    yield from walk(tree, "")


def _targets(name: str, node) -> list:
    """The package modules an import statement in module `name` loads, each as the module that defines what it takes."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "hypernet"]
    package = name if MODULES[name][1] else name.rsplit(".", 1)[0]
    if node.level:
        base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    if base.split(".")[0] != "hypernet":
        return []
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]


def graph() -> dict:
    """Module -> {imported module: where the import sits} within the package."""
    edges: dict = {name: {} for name in MODULES}
    for name, (path, _) in MODULES.items():
        for node, where in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            for target in _targets(name, node):
                assert target in MODULES, f"{name} imports {target}, which does not exist"
                if (name, where) not in ALLOWED_BACK_EDGES and target != name:
                    edges[name].setdefault(target, where or "module level")
    return edges


def _cycles(edges: dict) -> list:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
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
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def _described(edges: dict, comp: list) -> str:
    return "; ".join(f"{a} -> {b} ({edges[a][b]})" for a in comp for b in edges[a] if b in comp)


def test_the_graph_is_read():
    edges = graph()
    assert len(edges) > 60 and sum(map(len, edges.values())) > 150
    assert "hypernet.fileformat.files" in edges["hypernet"]
    assert edges["hypernet.train.trainer"]  # imports inside functions count too
    assert "hypernet.attach" in edges["hypernet.ui.state"]


def test_no_import_cycle():
    edges = graph()
    cycles = _cycles(edges)
    assert not cycles, "\n".join(_described(edges, c) for c in cycles)


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b": ""}, "b": {"c": ""}, "c": {"a": ""}, "d": {"a": ""}}) == [["a", "b", "c"]]


def _layer(name: str) -> str:
    if name == "hypernet.__main__":
        return "apps"
    parts = name.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and MODULES[name][1]) else "core"


# What each layer may import besides itself; a module at the top of hypernet/ is "core".
MAY_USE = {
    "core": {"fileformat"},
    "fileformat": {"core"},
    "hosts": {"core", "fileformat"},
    "train": {"core", "fileformat"},
    "tiny": {"core", "fileformat", "hosts", "train"},
    "ui": {"core", "fileformat", "train"},
    "webui": {"core", "fileformat", "train", "ui", "hosts"},
    "apps": {"core", "fileformat", "train", "ui", "hosts", "tiny"},
}
# config.py validates schedule strings with the training schedules' parser, a module that imports only errors and
# bounds; the trainer takes the host it is given and so imports no host.
EXCEPTIONS = {("hypernet.config", "hypernet.train.schedule")}


def test_arrows_point_down():
    edges = graph()
    wrong = [f"{a} -> {b} ({where})" for a, targets in edges.items() for b, where in targets.items()
             if _layer(b) != _layer(a) and _layer(b) not in MAY_USE[_layer(a)] and (a, b) not in EXCEPTIONS]
    assert edges and not wrong, "\n".join(wrong)


def test_no_module_imports_from_a_package_init():
    edges = graph()
    packages = {name for name, (_, is_package) in MODULES.items() if is_package}
    assert {"hypernet", "hypernet.train", "hypernet.tiny"} <= packages
    wrong = [f"{a} -> {b}" for a, targets in edges.items() for b in targets if b in packages]
    assert not wrong, "\n".join(wrong)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib")
def test_the_console_script_names_a_function_that_exists():
    import importlib
    import tomllib

    scripts = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts
    for target in scripts.values():
        module, _, name = target.partition(":")
        assert callable(getattr(importlib.import_module(module), name)), target
