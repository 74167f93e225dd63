"""No import cycle anywhere in src/ or bench/ (issue 10, structure).

import-linter's contracts (pyproject.toml, run by `make lint`) hold the
layers and forbid cycles between the modules of each package; this test also
catches what they do not see: a package's ``__init__`` and one of its own
modules importing each other. Imports inside functions and under
``TYPE_CHECKING`` count: a cycle hidden in a function is still a cycle.
"""

from __future__ import annotations

import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]


def _graph() -> grimp.ImportGraph:
    for path in (ROOT / "src", ROOT):  # unbundled, and bench beside tests
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    return grimp.build_graph("unbundled", "bench", "tests", cache_dir=None)


def _cycles(graph: grimp.ImportGraph, modules: set[str]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(start: str) -> None:
        # Iterative, so a long import chain cannot hit the recursion limit.
        work = [(start, iter(sorted(graph.find_modules_directly_imported_by(start))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            module, children = work[-1]
            for child in children:
                if child not in modules:
                    continue
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append(
                        (child, iter(sorted(graph.find_modules_directly_imported_by(child))))
                    )
                    break
                if child in on_stack:
                    low[module] = min(low[module], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[module])
                if low[module] == index[module]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == module:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))

    for module in sorted(modules):
        if module not in index:
            visit(module)
    return found


def test_no_module_imports_itself_through_others() -> None:
    graph = _graph()
    ours = {m for m in graph.modules if m.split(".")[0] in ("unbundled", "bench")}
    assert len(ours) > 100, "the graph was not built from the sources"
    cycles = _cycles(graph, ours)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_benchmarks_import_no_test() -> None:
    graph = _graph()
    bench = {m for m in graph.modules if m.split(".")[0] == "bench"}
    reached = {
        (m, imported)
        for m in bench
        for imported in graph.find_modules_directly_imported_by(m)
        if imported.split(".")[0] == "tests"
    }
    assert not reached, f"bench imports tests: {sorted(reached)}"


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The finder itself, on a graph with one cycle (a <-> b) and a tail (c -> a)."""
    graph = grimp.ImportGraph()
    for module in ("x.a", "x.b", "x.c"):
        graph.add_module(module)
    graph.add_import(importer="x.a", imported="x.b")
    graph.add_import(importer="x.b", imported="x.a")
    graph.add_import(importer="x.c", imported="x.a")
    assert _cycles(graph, {"x.a", "x.b", "x.c"}) == [["x.a", "x.b"]]
