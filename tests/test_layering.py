"""The layering, read from the source with `ast` (nothing is imported, so it takes well under a second).

- `recsys` (the library) imports none of the applications `features`, `training`, `serving`;
  only its command line `recsys/cli/`, the composition root, wires them together.
- `serving` never imports `training`: the server loads registered models, it does not train.
- No import cycles between modules at module level; cycles that go through function-local
  imports are listed in `LOCAL_CYCLES`, each with why it is still there.

Both module-level and function-local imports count for the first two rules (a local import is
a dependency all the same); imports under `if TYPE_CHECKING:` count too, as local ones (they do
not run, so they make no cycle at import time).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("recsys", "features", "training", "serving")
APPLICATIONS = ("features", "training", "serving")

# Strongly connected groups of modules once function-local imports count. Remove an entry when its
# cycle is gone; a new cycle fails the test.
LOCAL_CYCLES: list[frozenset[str]] = []


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is a package `__init__`)."""
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


MODULES = _modules()


def _project_module(name: str) -> str | None:
    """The project module `name` refers to (`a.b.func` -> `a.b`), or None for third-party names."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str) -> Iterator[tuple[str, bool]]:
    """(imported name, at module level) for every import statement of `module`."""
    path, is_package = MODULES[module]

    def walk(node: ast.AST, local: bool) -> Iterator[tuple[str, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                yield from ((alias.name, not local) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative: from the package of this module, up level - 1
                    package = module.split(".") if is_package else module.split(".")[:-1]
                    base = ".".join(package[: len(package) - child.level + 1] + ([base] if base else []))
                yield base, not local
                yield from ((f"{base}.{alias.name}", not local) for alias in child.names)
            else:
                typing_only = isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test)
                inner = local or typing_only or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
                yield from walk(child, inner)

    yield from walk(ast.parse(path.read_text(), str(path)), False)


def _graph() -> dict[tuple[str, str], bool]:
    """(importer, imported) -> whether some import of it is at module level."""
    edges: dict[tuple[str, str], bool] = {}
    for module in MODULES:
        for name, module_level in _imports(module):
            target = _project_module(name)
            if target is not None and target != module:
                edges[module, target] = edges.get((module, target), False) or module_level
    return edges


EDGES = _graph()


def _cycles(edges: list[tuple[str, str]]) -> list[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    graph: dict[str, list[str]] = defaultdict(list)
    for a, b in edges:
        graph[a].append(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []
    for start in sorted(MODULES):
        if start in index:
            continue
        work = [(start, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            successors = graph[node]
            if i < len(successors):
                work.append((node, i + 1))
                nxt = successors[i]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if low[node] == index[node]:
                group = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == node:
                        break
                if len(group) > 1:
                    out.append(frozenset(group))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return out


def _top(module: str) -> str:
    return module.partition(".")[0]


def test_the_graph_is_read() -> None:
    assert {"recsys.cli.common", "features.jobs", "training.ranker", "serving.app"} <= set(MODULES)
    assert EDGES.get(("features.jobs", "features.definitions")) is True  # a module-level import
    assert ("recsys.cli.ranking", "training.ranker") in EDGES  # a function-local one


def test_recsys_imports_applications_only_from_its_cli() -> None:
    bad = sorted(
        f"{a} -> {b}"
        for a, b in EDGES
        if _top(a) == "recsys" and not (a == "recsys.cli" or a.startswith("recsys.cli."))
        and _top(b) in APPLICATIONS
    )
    assert not bad, "the library imports an application; move the code or wire it in recsys/cli/: " + (
        ", ".join(bad)
    )


def test_serving_never_imports_training() -> None:
    bad = sorted(f"{a} -> {b}" for a, b in EDGES if _top(a) == "serving" and _top(b) == "training")
    assert not bad, "serving imports training: " + ", ".join(bad)


def test_no_import_cycles_at_module_level() -> None:
    cycles = _cycles([edge for edge, module_level in EDGES.items() if module_level])
    assert not cycles, f"import cycles: {[sorted(c) for c in cycles]}"


def test_cycles_through_local_imports_are_the_known_ones() -> None:
    cycles = _cycles(list(EDGES))
    new = [sorted(c) for c in cycles if c not in LOCAL_CYCLES]
    assert not new, f"import cycles through function-local imports: {new}; break them (see LOCAL_CYCLES)"


def test_tarjan_finds_a_cycle() -> None:
    assert _cycles([("features.jobs", "features.store"), ("features.store", "features.jobs")]) == [
        frozenset({"features.jobs", "features.store"})
    ]
