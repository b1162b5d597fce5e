"""The house is one-way: roles never import each other, and nothing imports back up.

chalicelib's modules stand on floors (README "How it works"): roles on top, each one a
Lambda handler's work; shared steps below them; the table, sources, results and the
data model at the bottom. A step two roles need moves down into a module named for what
it does. These tests read the imports from the code (ast, every import in a module,
including those inside functions), so a shortcut that would make a circle fails here
before it lands.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Each role is one handler's work (app.py calls one function of each).
ROLES = {"batcher", "planner", "processor", "finalizer", "sweeper", "deadletters", "redrive"}
# The tools around the product, none deployed: what each may import besides chalicelib.
TOOLS = {
    "batchdrain_local": set(),
    "batchdrain_deploy": {"batchdrain_local"},  # the event-source settings the local stack applies too
    "batchdrain_cli": {"batchdrain_deploy", "batchdrain_local"},
    "bench": {"batchdrain_local", "batchdrain_cli"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports (absolute names; `from package import module` counts the module)."""
    found: set[str] = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def graph(package: str) -> dict[str, set[str]]:
    """Module -> the modules of `package` it imports (itself and its own submodules left out)."""
    paths = sorted((ROOT / package).rglob("*.py"))
    modules = {module_name(path): path for path in paths}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges[name] = {
            target for target in imports_of(path) if target in modules and target != name and not target.startswith(name + ".")
        }
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One circle of imports, as the modules on it, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target) :] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_role_imports_another_role():
    edges = graph("chalicelib")
    crossings = sorted(
        f"{source} -> {target}"
        for source, targets in edges.items()
        for target in targets
        if source.rpartition(".")[2] in ROLES and target.rpartition(".")[2] in ROLES
    )
    assert crossings == [], "move the step both roles need down into a module named for what it does"


def test_no_lower_module_imports_a_role():
    edges = graph("chalicelib")
    upward = sorted(
        f"{source} -> {target}"
        for source, targets in edges.items()
        for target in targets
        if source.rpartition(".")[2] not in ROLES and target.rpartition(".")[2] in ROLES
    )
    assert upward == []


def test_chalicelib_has_no_circle():
    assert find_cycle(graph("chalicelib")) is None


def test_the_whole_tree_has_no_circle_and_the_product_imports_none_of_its_tools():
    packages = ["chalicelib", *TOOLS]
    edges: dict[str, set[str]] = {}
    for package in packages:
        for path in (ROOT / package).rglob("*.py"):
            edges.setdefault(package, set()).update(
                imported.split(".")[0] for imported in imports_of(path) if imported.split(".")[0] in packages
            )
        edges[package].discard(package)
    assert edges["chalicelib"] == set()
    for tool, allowed in TOOLS.items():
        assert edges.get(tool, set()) <= {"chalicelib", *allowed}, tool
    assert find_cycle(edges) is None


@pytest.mark.parametrize(
    ("edges", "cycle"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ],
)
def test_the_circle_finder_finds_circles(edges, cycle):
    """The check itself: a circle of three is found, a chain is not."""
    assert find_cycle(edges) == cycle


def test_the_import_reader_sees_imports_inside_functions(tmp_path):
    """A role importing another inside a function (to dodge a circle at import time) still counts."""
    module = ROOT / "chalicelib" / "planner.py"
    assert "chalicelib.work" in imports_of(module)
    source = tmp_path / "x.py"
    source.write_text("def f():\n    from chalicelib import finalizer\n")
    found = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.ImportFrom):
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    assert found == {"chalicelib.finalizer"}
