"""The package's import graph, read from the source with `ast`: no cycles among trajhub_assets
modules (function-level imports count: they only hide a cycle until the function runs), and the
table declarations live in low schema modules."""

import ast
from pathlib import Path

import trajhub_assets

PACKAGE = Path(trajhub_assets.__file__).parent
LOW = {"trajhub_assets.store", "trajhub_assets.errors"}  # what a schema module may import besides schemas


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports_of(module: str) -> set[str]:
    """The trajhub_assets modules `module` imports, at any level of its code."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in MODULES:
            found.add(node.module)
            # `from package import submodule` imports the submodule too
            found.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in MODULES)
    found.discard(module)
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path [a, b, ..., a], or None."""
    state: dict[str, str] = {}  # "open" while on the DFS stack, then "done"
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_reports_the_path():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_among_trajhub_modules():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_tables_imports_only_schema_modules():
    assert GRAPH["trajhub_assets.tables"], "tables.py lists the tables it imports"
    assert all(m.endswith(".schema") for m in GRAPH["trajhub_assets.tables"]), GRAPH["trajhub_assets.tables"]


def test_schema_modules_are_low():
    for module in (m for m in GRAPH if m.endswith(".schema")):
        heavy = {m for m in GRAPH[module] if m not in LOW and not m.endswith(".schema")}
        assert not heavy, f"{module} imports {sorted(heavy)}: a schema module holds declarations only"
