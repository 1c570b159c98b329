"""The package's folders are its layers (docs/architecture.md): a module imports only from its own layer or
the layers below, and no modules import each other in a circle. Imports inside functions count too: a
lazy import that runs upward is still an upward dependency."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "alignkit"

# Top to bottom; a module may import from its own layer and any layer after it in this list.
LAYERS = [
    ("cli", "__main__", "api"),
    ("commands",),
    ("training", "train"),
    ("generation",),
    ("algorithms",),
    ("vision",),
    ("models",),
    ("config",),
    ("data",),
    ("losses",),
    ("errors", "__init__"),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    for index, names in enumerate(LAYERS):
        if top in names:
            return index
    raise AssertionError(f"{module} is in no layer of tests/test_layering.py; place its folder in LAYERS")


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The alignkit modules ``path`` imports (``from alignkit.x import y`` counts alignkit.x.y when y is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("alignkit")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("alignkit"):
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in modules else node.module)
    return found & modules


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    graph = {module_name(p): imports_of(p, modules) for p in paths}
    for module, imported in graph.items():
        # A package's __init__ re-exporting its own modules is not a dependency of those modules on it.
        imported.discard(module)
    return graph


def test_every_module_belongs_to_a_layer():
    for module in import_graph():
        layer_of(module)


def test_no_module_imports_from_a_layer_above_it():
    upward = [f"{module} (layer {LAYERS[layer_of(module)][0]}) imports {target} (layer {LAYERS[layer_of(target)][0]})"
              for module, targets in import_graph().items() for target in sorted(targets)
              if layer_of(target) < layer_of(module)]
    assert not upward, "imports that run up the layers:\n" + "\n".join(upward)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def without_package_reexports(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """A package __init__ that re-exports its modules is a door, not a dependency: count `x -> pkg` as `x -> the
    modules pkg re-exports`, and drop the __init__'s own edges into its package."""
    packages = {m for m in graph if (PACKAGE.parent / m.replace(".", "/") / "__init__.py").exists()}
    out = {}
    for module, targets in graph.items():
        expanded = set()
        for target in targets:
            expanded |= {t for t in graph[target] if t.startswith(target + ".")} if target in packages else {target}
        out[module] = {t for t in expanded if not (module in packages and t.startswith(module + "."))}
    return out


def test_no_import_circles():
    cycle = find_cycle(without_package_reexports(import_graph()))
    assert cycle is None, "modules that import each other in a circle: " + " -> ".join(cycle)


def test_the_checks_catch_an_upward_import_and_a_circle():
    graph = {"alignkit.models.a": {"alignkit.training.b"}, "alignkit.training.b": {"alignkit.models.a"}}
    assert layer_of("alignkit.training.b") < layer_of("alignkit.models.a")
    assert find_cycle(graph) == ["alignkit.models.a", "alignkit.training.b", "alignkit.models.a"]


def test_every_module_imports():
    """A name moved between modules fails here at once, not in the one test that happens to reach it."""
    import importlib

    for module in sorted(import_graph()):
        if module != "alignkit.__main__":  # runs the CLI
            importlib.import_module(module)
