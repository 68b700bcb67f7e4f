"""The import graph of prefopt/, analysis/ and hydra_plugins/, read from the source with ``ast`` (nothing is
imported): every ``import`` and ``from ... import`` counts, at module level or inside a function, relative ones
resolved. The rules:

- no import cycle between modules (a package's ``__init__`` is a module of its own; ``import a.b.c`` imports
  the module ``a.b.c``; ``from a.b import c`` imports ``a.b.c`` when that is a module, else ``a.b``);
- ``prefopt/losses/`` imports nothing of prefopt outside itself, except ``prefopt.errors`` (the leaf module
  holding ``PrefoptError``), and ``prefopt.errors`` imports nothing of prefopt;
- no module imports an entry point (``prefopt.train``, ``prefopt.evaluate``): the entry points import the
  library, never the other way round, and never each other;
- ``analysis/`` reads run files: it imports neither the entry points nor ``prefopt.trainer``.

Imports under ``if TYPE_CHECKING:`` count for the layering rules but not for cycles (they never run).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TREES = ("prefopt", "analysis", "hydra_plugins")
ENTRY_POINTS = ("prefopt.train", "prefopt.evaluate", "prefopt.extrapolate", "prefopt.study.__main__")
LOSSES_MAY_IMPORT = ("prefopt.errors",)
ANALYSIS_MAY_NOT_IMPORT = ("prefopt.train", "prefopt.trainer", "prefopt.evaluate", "prefopt.extrapolate")


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module, resolved and absolute
    path: str  # the importing file, relative to the repository root
    line: int
    nested: bool  # inside a function (hidden from a reader of the module's top)
    type_only: bool  # under `if TYPE_CHECKING:`

    def __str__(self) -> str:
        where = " (inside a function)" if self.nested else ""
        return f"{self.source} imports {self.target} at {self.path}:{self.line}{where}"


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def find_modules(root: Path = ROOT, trees: tuple[str, ...] = TREES) -> dict[str, Path]:
    modules = {}
    for tree in trees:
        for path in sorted((root / tree).rglob("*.py")):
            if "__pycache__" not in path.parts:
                modules[module_name(path, root)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(source: str, module: str, is_package: bool, known: set[str] | frozenset[str] = frozenset(),
               path: str = "<string>") -> list[Import]:
    """Every import in `source` (the text of `module`), relative ones resolved against its package."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, nested: bool, type_only: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(module, alias.name, path, node.lineno, nested, type_only))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                if node.level - 1 > len(base):
                    raise ValueError(f"{path}:{node.lineno}: relative import beyond the top package")
                base = base[: len(base) - (node.level - 1)]
                parent = ".".join(base + ([node.module] if node.module else []))
            else:
                parent = node.module or ""
            for alias in node.names:
                candidate = f"{parent}.{alias.name}" if parent else alias.name
                target = candidate if candidate in known else parent
                found.append(Import(module, target, path, node.lineno, nested, type_only))
        nested_here = nested or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, nested_here, True)
            for child in node.orelse:
                visit(child, nested_here, type_only)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, nested_here, type_only)

    visit(ast.parse(source, filename=path), False, False)
    # One edge per (source, target): the first occurrence, which is what a reader finds first.
    unique: dict[tuple[str, bool], Import] = {}
    for imp in found:
        unique.setdefault((imp.target, imp.type_only), imp)
    return list(unique.values())


def import_graph(root: Path = ROOT, trees: tuple[str, ...] = TREES) -> tuple[dict[str, Path], list[Import]]:
    modules = find_modules(root, trees)
    known = set(modules)
    edges = []
    for name, path in modules.items():
        edges += imports_of(path.read_text(encoding="utf-8"), name, path.name == "__init__.py", known,
                            str(path.relative_to(root)))
    return modules, edges


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a closed path, first node repeated at the end) per strongly connected component that
    has one; Tarjan's algorithm, iterative. Deterministic: nodes and neighbours are visited in sorted order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    nodes = sorted(set(graph) | {t for ts in graph.values() for t in ts})
    for start in nodes:
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph.get(node, ()):
                    components.append(sorted(component))
    cycles = []
    for component in sorted(components):
        members = set(component)
        first = component[0]
        # Shortest path from `first` back to itself inside the component (breadth first).
        previous: dict[str, str] = {}
        frontier = [first]
        found = None
        while frontier and found is None:
            following = []
            for node in frontier:
                for child in sorted(graph.get(node, ())):
                    if child == first:
                        found = node
                        break
                    if child in members and child not in previous:
                        previous[child] = node
                        following.append(child)
                if found is not None:
                    break
            frontier = following
        path = [first]
        node = found
        while node != first:
            path.append(node)
            node = previous[node]
        cycles.append([first] + path[1:][::-1] + [first])
    return cycles


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


class _Graph(tuple):
    def __repr__(self) -> str:  # a failure shows the message, not thousands of edges
        return f"<import graph: {len(self[0])} modules, {len(self[1])} imports>"


@pytest.fixture(scope="module")
def graph() -> tuple[dict[str, Path], list[Import]]:
    return _Graph(import_graph())


def test_the_graph_is_read(graph):
    modules, edges = graph
    assert "prefopt.losses" in modules and "prefopt.losses.dpo" in modules and "analysis" in modules
    assert any(e.source == "prefopt.losses.dpo" and _within(e.target, "prefopt.losses") for e in edges)


def test_no_import_cycle(graph):
    modules, edges = graph
    adjacency: dict[str, set[str]] = {}
    first_edge: dict[tuple[str, str], Import] = {}
    for e in edges:
        if e.target in modules and not e.type_only:
            adjacency.setdefault(e.source, set()).add(e.target)
            first_edge.setdefault((e.source, e.target), e)
    cycles = find_cycles(adjacency)
    report = []
    for cycle in cycles:
        steps = [str(first_edge[(a, b)]) for a, b in zip(cycle, cycle[1:], strict=False)]
        report.append(" -> ".join(cycle) + ":\n    " + "\n    ".join(steps))
    assert not cycles, f"{len(cycles)} import cycle(s):\n" + "\n".join(report)


def test_losses_import_nothing_of_prefopt_outside_losses(graph):
    _, edges = graph
    bad = [e for e in edges if _within(e.source, "prefopt.losses") and _within(e.target, "prefopt")
           and not _within(e.target, "prefopt.losses") and e.target not in LOSSES_MAY_IMPORT]
    assert not bad, ("prefopt/losses/ may import only itself and " + ", ".join(LOSSES_MAY_IMPORT) + ":\n  "
                     + "\n  ".join(map(str, bad)))


def test_errors_is_a_leaf(graph):
    modules, edges = graph
    if "prefopt.errors" not in modules:
        pytest.fail("prefopt/errors.py (the PrefoptError base the losses may import) is missing")
    bad = [e for e in edges if e.source == "prefopt.errors" and _within(e.target, "prefopt")]
    assert not bad, "prefopt.errors must import nothing of prefopt:\n  " + "\n  ".join(map(str, bad))


def test_no_module_imports_an_entry_point(graph):
    _, edges = graph
    bad = [e for e in edges if any(_within(e.target, ep) for ep in ENTRY_POINTS)]
    assert not bad, ("the entry points " + ", ".join(ENTRY_POINTS) + " import the library; nothing imports "
                     "them:\n  " + "\n  ".join(map(str, bad)))


def test_analysis_does_not_import_the_trainer(graph):
    """Directly or through any chain of imports (importing ``a.b`` runs ``a/__init__`` too)."""
    modules, edges = graph
    adjacency: dict[str, set[str]] = {}
    for e in edges:
        targets = {e.target} | {e.target.rsplit(".", n)[0] for n in range(1, e.target.count(".") + 1)}
        adjacency.setdefault(e.source, set()).update(targets)
    bad = []
    for start in sorted(m for m in modules if _within(m, "analysis")):
        previous: dict[str, str | None] = {start: None}
        frontier = [start]
        while frontier:
            node = frontier.pop(0)
            if any(_within(node, forbidden) for forbidden in ANALYSIS_MAY_NOT_IMPORT):
                chain = [node]
                while previous[chain[-1]] is not None:
                    chain.append(previous[chain[-1]])
                bad.append(" -> ".join(reversed(chain)))
                continue
            for child in sorted(t for t in adjacency.get(node, set()) if t in modules or _within(t, "prefopt")):
                if child not in previous:
                    previous[child] = node
                    frontier.append(child)
    assert not bad, ("analysis/ reads run files; it may not import " + ", ".join(ANALYSIS_MAY_NOT_IMPORT)
                     + ", directly or through another module:\n  " + "\n  ".join(bad))


# The checker itself, on synthetic input, so a broken checker cannot pass silently.

def test_find_cycles_on_a_synthetic_graph():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"x": {"x"}}) == [["x", "x"]]
    # Two separate cycles, one with a shortcut: the shortest way round is reported.
    cycles = find_cycles({"a": {"b", "c"}, "b": {"c"}, "c": {"a"}, "p": {"q"}, "q": {"p"}})
    assert cycles == [["a", "c", "a"], ["p", "q", "p"]]


def test_imports_of_resolves_relative_and_nested_imports():
    known = {"pkg", "pkg.sub", "pkg.sub.mod", "pkg.sub.other", "pkg.top"}
    source = (
        "import os\n"
        "from . import other\n"
        "from .other import thing\n"
        "from .. import top\n"
        "from ..top import name\n"
        "import pkg.sub.other as o\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from pkg import top as t\n"
        "def f():\n"
        "    from pkg.sub import mod\n"
    )
    got = {(i.target, i.nested, i.type_only) for i in imports_of(source, "pkg.sub.mod", False, known)}
    assert got == {("os", False, False), ("pkg.sub.other", False, False), ("pkg.top", False, False),
                   ("typing", False, False), ("pkg.top", False, True), ("pkg.sub.mod", True, False)}
    # In a package's __init__, `from . import x` is relative to the package itself.
    got = {i.target for i in imports_of("from . import mod\nfrom .mod import y\n", "pkg.sub", True, known)}
    assert got == {"pkg.sub.mod"}


def test_the_rules_catch_a_synthetic_violation(tmp_path):
    (tmp_path / "prefopt" / "losses").mkdir(parents=True)
    (tmp_path / "analysis").mkdir()
    files = {
        "prefopt/__init__.py": "",
        "prefopt/errors.py": "",
        "prefopt/train.py": "def main():\n    from prefopt import evaluate\n",
        "prefopt/evaluate.py": "from prefopt.train import main\n",
        "prefopt/losses/__init__.py": "from . import dpo\n",
        "prefopt/losses/dpo.py": "from ..errors import E\nfrom prefopt.data import x\n",
        "analysis/__init__.py": "from prefopt.train import main\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).write_text(text)
    modules, edges = import_graph(tmp_path, ("prefopt", "analysis"))
    adjacency: dict[str, set[str]] = {}
    for e in edges:
        if e.target in modules:
            adjacency.setdefault(e.source, set()).add(e.target)
    assert find_cycles(adjacency) == [["prefopt.evaluate", "prefopt.train", "prefopt.evaluate"]]
    losses_out = {e.target for e in edges if _within(e.source, "prefopt.losses") and _within(e.target, "prefopt")
                  and not _within(e.target, "prefopt.losses") and e.target not in LOSSES_MAY_IMPORT}
    assert losses_out == {"prefopt.data"}
    nested = [e for e in edges if e.source == "prefopt.train"]
    assert len(nested) == 1 and nested[0].nested and "inside a function" in str(nested[0])
