"""golfjax/'s module graph, built from the source's imports: no cycle, and a
config module that sits below the engine; and one class per name.

The graph reads every `import` and `from ... import` statement of every module
under golfjax/ (module level, inside functions, under `if TYPE_CHECKING`):
each is an edge from the importing module to the golfjax module it names.
Importing `a.b.c` first runs the `__init__` of the packages `a` and `a.b`, so
it is an edge to them too, except to the packages that enclose the importer
(Python has started those before it runs the importer); `from a.b import x`,
where `x` is not a submodule, reads `x` from `a.b`'s `__init__`, an edge to
`a.b` even when it encloses the importer.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).parent.parent
CONFIG = "golfjax.config"


def module_files(root: pathlib.Path = ROOT) -> dict[str, pathlib.Path]:
    """Every module under golfjax/ by dotted name (a package by its `__init__.py`)."""
    files = {}
    for path in sorted((root / "golfjax").rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path
    return files


def _prefixes(name: str) -> list[str]:
    """a.b.c -> [a, a.b, a.b.c]."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def imports_of(name: str, source: str, modules: set[str], is_package: bool) -> set[str]:
    """The golfjax modules that importing module `name` (of `source`) runs."""
    enclosing = set(_prefixes(name)[:-1])
    package = name if is_package else name.rpartition(".")[0]
    edges: set[str] = set()

    def add(target: str, *, chain: bool = True) -> None:
        for prefix in _prefixes(target) if chain else [target]:
            if prefix in modules and prefix != name and prefix not in enclosing:
                edges.add(prefix)

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            add(base)
            for alias in node.names:
                if f"{base}.{alias.name}" in modules:
                    add(f"{base}.{alias.name}", chain=False)
                elif base in modules and base != name:
                    edges.add(base)  # A name defined in `base` itself.
    return edges


def module_graph(root: pathlib.Path = ROOT) -> dict[str, set[str]]:
    files = module_files(root)
    names = set(files)
    return {name: imports_of(name, path.read_text(encoding="utf-8"), names,
                             path.name == "__init__.py")
            for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a path back to its start) per strongly connected component
    of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(component)
    return [_cycle_in(graph, component) for component in components]


def _cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A path from the component's first module back to itself, inside it."""
    start = min(component)
    paths = {start: [start]}
    todo = [start]
    while todo:  # Breadth first: the shortest way back.
        node = todo.pop(0)
        for child in sorted(graph[node] & component):
            if child == start:
                return paths[node] + [start]
            if child not in paths:
                paths[child] = paths[node] + [child]
                todo.append(child)
    raise AssertionError(f"{sorted(component)} is not strongly connected")


def reached(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module that `start` leads to, following the edges."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        for child in graph[todo.pop()]:
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return seen


def unit(name: str) -> str:
    """The module's part of golfjax: its first-level subpackage, or itself."""
    return ".".join(name.split(".")[:2])


def engine_imports_of_config(graph: dict[str, set[str]]) -> list[str]:
    """The modules config.py leads to that belong to a part of golfjax (a
    subpackage or a top-level module) whose modules lead to config.py."""
    importers = reached({m: {n for n in graph if m in graph[n]} for m in graph}, CONFIG)
    above = {unit(m) for m in importers}
    return sorted(m for m in reached(graph, CONFIG) if unit(m) in above)


@pytest.fixture(scope="module")
def graph():
    return module_graph()


def test_the_graph_reads_every_kind_of_import(tmp_path):
    # A made-up package exercising each rule of the module docstring.
    files = {
        "golfjax/__init__.py": "",
        "golfjax/top.py": "from golfjax.pkg import sub\n",
        "golfjax/pkg/__init__.py": "from golfjax.pkg.sub import VALUE\n",
        "golfjax/pkg/sub.py": ("from typing import TYPE_CHECKING\n"
                               "from golfjax.pkg.low import thing\n"
                               "if TYPE_CHECKING:\n    from golfjax import top\n"),
        "golfjax/pkg/low.py": "def f():\n    from . import NAME\n    import golfjax.other.deep\n",
        "golfjax/other/__init__.py": "",
        "golfjax/other/deep.py": "",
    }
    for path, text in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    graph = module_graph(tmp_path)
    assert graph == {
        "golfjax": set(),
        "golfjax.top": {"golfjax.pkg", "golfjax.pkg.sub"},
        "golfjax.pkg": {"golfjax.pkg.sub"},
        "golfjax.pkg.sub": {"golfjax.pkg.low", "golfjax.top"},
        "golfjax.pkg.low": {"golfjax.pkg", "golfjax.other", "golfjax.other.deep"},
        "golfjax.other": set(),
        "golfjax.other.deep": set(),
    }
    assert cycles(graph) == [["golfjax.pkg", "golfjax.pkg.sub", "golfjax.pkg.low", "golfjax.pkg"]]


def test_golfjax_has_no_import_cycle(graph):
    found = cycles(graph)
    assert not found, "import cycles in golfjax/: " + "; ".join(" -> ".join(c) for c in found)


def test_the_config_check_finds_an_engine_import():
    graph = {CONFIG: {"golfjax.train.state"}, "golfjax.train.state": set(),
             "golfjax.train.step": {CONFIG}, "golfjax.models": set()}
    assert engine_imports_of_config(graph) == ["golfjax.train.state"]
    graph[CONFIG] = {"golfjax.models"}
    assert engine_imports_of_config(graph) == []


def test_config_imports_nothing_from_the_engine(graph):
    found = engine_imports_of_config(graph)
    assert not found, (
        f"golfjax/config.py imports {', '.join(found)}, of parts of golfjax that import it")


def test_no_two_classes_share_a_name():
    where: dict[str, list[str]] = {}
    for name, path in module_files().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                where.setdefault(node.name, []).append(name)
    shared = {cls: modules for cls, modules in where.items() if len(modules) > 1}
    assert not shared, f"classes defined more than once in golfjax/: {shared}"
