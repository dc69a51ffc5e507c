"""genrec's import graph (every ``import`` / ``from ... import`` in genrec/**/*.py, at module
level and inside functions, read with ``ast``) has no cycle, and no genrec module imports
:mod:`genrec.cli`, the command-line dispatcher. Imports under ``if TYPE_CHECKING:`` are left
out: they never run."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "genrec"


def module_name(path: Path, root: Path) -> str:
    """``genrec/stages/fit.py`` -> ``genrec.stages.fit``; a package's ``__init__.py`` -> the package."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_modules(source: str, module: str, modules: set[str], package: bool = False) -> set[str]:
    """The modules of ``modules`` that ``source`` (the module ``module``, a package's
    ``__init__`` when ``package``) imports anywhere in its body, functions included:
    ``from a.b import c`` counts ``a.b``, and ``a.b.c`` too when that is a module; relative
    imports are resolved against ``module``'s package."""
    found: set[str] = set()
    parts = module.split(".") if package else module.split(".")[:-1]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*parts[: len(parts) - node.level + 1], *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return {name for name in found if name in modules and name != module}


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the genrec modules it imports, over every ``.py`` file under ``root``."""
    files = {module_name(path, root): path for path in sorted(root.rglob("*.py"))}
    modules = set(files)
    return {name: imported_modules(path.read_text(), name, modules, package=path.name == "__init__.py") for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or ``None`` (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target):], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_is_read_from_module_and_function_level_imports():
    graph = import_graph()
    assert {"genrec.cli", "genrec.pipeline", "genrec.stages.fit", "genrec.stages.parsing"} <= set(graph)
    assert "genrec.stages.fit" in graph["genrec.pipeline"]  # module level
    assert "genrec.stages.data" in graph["genrec.recommender"]  # inside a function
    assert "genrec.scaling_law" in graph["genrec.scaling"]


def test_genrec_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_nothing_in_genrec_imports_the_cli():
    importers = sorted(name for name, targets in import_graph().items() if "genrec.cli" in targets)
    assert importers == [], f"these modules import genrec.cli (the dispatcher must stay a leaf): {importers}"


def test_a_cycle_is_found(tmp_path):
    """The check fails when a cycle is added: a tiny synthetic package whose ``b`` imports ``c``
    inside a function and ``c`` imports ``a`` imports ``b``; and a graph given directly."""
    package = tmp_path / "genrec"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from genrec.sub import b\n")
    (package / "sub" / "b.py").write_text("def f():\n    import genrec.c\n")
    (package / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import genrec.sub.b\nfrom genrec import a\n")
    graph = import_graph(package)
    assert graph["genrec.a"] == {"genrec.sub", "genrec.sub.b"} and graph["genrec.sub.b"] == {"genrec.c"}
    assert graph["genrec.c"] == {"genrec", "genrec.a"}  # the TYPE_CHECKING import is left out
    assert find_cycle(graph) == ["genrec.a", "genrec.sub.b", "genrec.c", "genrec.a"]
    (package / "c.py").write_text("from .sub import b\n")  # relative: genrec.sub, genrec.sub.b
    assert import_graph(package)["genrec.c"] == {"genrec.sub", "genrec.sub.b"}
    assert find_cycle(import_graph(package)) == ["genrec.sub.b", "genrec.c", "genrec.sub.b"]
    (package / "c.py").write_text("X = 1\n")
    assert find_cycle(import_graph(package)) is None
    assert find_cycle({"x": {"y"}, "y": {"z"}, "z": {"x"}}) == ["x", "y", "z", "x"]
    assert find_cycle({"x": {"y"}, "y": {"z"}, "z": set()}) is None


def test_the_cli_dispatches_to_the_stages():
    assert {"genrec.stages.fit", "genrec.stages.data", "genrec.pipeline", "genrec.scaling"} <= import_graph()["genrec.cli"]
