"""Imports point one way: services may import libs, libs never imports services, nothing
imports in a circle, and only people and the operators' CLI import the model tools.

libs/ is what the services share (and the operators' CLI, libs/cli, which runs
without any service): a module there that imports a service's internals ties the
shared code to one service's layout and pulls the service in wherever libs goes.
What a service and libs both need belongs in libs. Every import is checked, lazy
ones inside functions included.

A circle of imports (a imports b, which imports a, perhaps only inside a function)
means neither module can be understood, tested or moved without the other; the
graph below has an edge for every import statement at module level or inside a
function, relative imports resolved, for literal `import_module` calls, and for
"package.module:attr" references (the model registry's lazy loaders), which are
imports deferred to first use. Imports under `if TYPE_CHECKING:` are left out:
they never run, and are how a module names a type without depending on it.
Importing a submodule also runs its parent package's `__init__`; that implied
edge is left out too, as every import checker does (a package that re-exports
its submodules would otherwise be in a circle with each of them).

libs/modeltools (training, evaluation, validation before promotion) is for people
and the CLI: no service may reach it, directly or through libs, and libs/model,
what the decoder and safety load at run time, never imports it.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIBS = ROOT / "libs"
FORBIDDEN = "services"
GRAPH_ROOTS = ("libs", "services")
TOOLS = "libs.modeltools"
RUNTIME_MODEL = "libs.model"
_REFERENCE = re.compile(r"(\w+(?:\.\w+)+):\w+")
"""A "package.module:attr" string: a lazy import when it names a module of ours."""


def _imported(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) for every absolute import statement and literal `import_module`/`__import__` call."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def _is_forbidden(module: str) -> bool:
    return module == FORBIDDEN or module.startswith(f"{FORBIDDEN}.")


def test_the_check_sees_every_kind_of_import() -> None:
    source = (
        "import services.gateway\n"
        "from services.safety import domain\n"
        "def later():\n"
        "    from services.storage.domain import plan_storage\n"
        "    importlib.import_module('services.auth')\n"
        "from libs import services_like\n"
        "import servicesx\n"
    )
    forbidden = {module for _, module in _imported(ast.parse(source)) if _is_forbidden(module)}
    assert forbidden == {"services.gateway", "services.safety", "services.storage.domain", "services.auth"}


@pytest.mark.parametrize("path", sorted(LIBS.rglob("*.py")), ids=lambda p: str(p.relative_to(LIBS.parent)))
def test_no_module_under_libs_imports_a_service(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    offending = [f"line {line}: {module}" for line, module in _imported(tree) if _is_forbidden(module)]
    assert not offending, f"{path.relative_to(LIBS.parent)} imports services ({'; '.join(offending)})"


# ---------------------------------------------------------------------------------------------
# The import graph


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources(root: Path) -> dict[str, tuple[str, bool]]:
    """Module name -> (source, is a package) for every module under the graph's roots."""
    return {
        _module_name(path, root): (path.read_text(encoding="utf-8"), path.name == "__init__.py")
        for top in GRAPH_ROOTS
        for path in sorted((root / top).rglob("*.py"))
    }


def _runs(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of the tree except those under `if TYPE_CHECKING:`."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in (child, *_runs(child)))
            continue
        yield node
        yield from _runs(node)


def _names(module: str, is_package: bool, tree: ast.AST) -> Iterator[str]:
    """Every dotted name the module imports (a module, or a name inside one)."""
    for node in _runs(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                anchor = ".".join(package[: len(package) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            # A submodule when there is one of that name, else a name the base module defines.
            yield from (f"{base}.{alias.name}" if base else alias.name for alias in node.names)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                yield node.args[0].value
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            match = _REFERENCE.fullmatch(node.value)
            if match:
                yield match.group(1)


def import_graph(sources: dict[str, tuple[str, bool]]) -> dict[str, set[str]]:
    """Module -> the modules of ours it imports (each name resolved to its longest known module)."""
    graph: dict[str, set[str]] = {}
    for module, (source, is_package) in sources.items():
        edges: set[str] = set()
        for name in _names(module, is_package, ast.parse(source)):
            while name and name not in sources:
                name = name.rpartition(".")[0]
            if name and name != module:
                edges.add(name)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for after in sorted(graph[node]):
            if after not in index:
                visit(after)
                low[node] = min(low[node], low[after])
            elif after in on_stack:
                low[node] = min(low[node], index[after])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module that importing `start` may import, at once or later."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        for after in graph[todo.pop()]:
            if after not in seen:
                seen.add(after)
                todo.append(after)
    return seen


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(f"{package}.")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(_sources(ROOT))


def test_the_graph_sees_every_kind_of_import() -> None:
    sources = {
        "pkg": ("from pkg import a\n", True),
        "pkg.a": (
            "from . import b\n"  # relative, a module
            "from .c import thing\n"  # relative, a name in a module
            "def later():\n"
            "    import pkg.sub.d\n"  # inside a function
            "    importlib.import_module('pkg.e')\n"
            "LOADERS = {'f': 'pkg.f:load', 'x': 'not.ours:load'}\n"  # lazy references
            "if TYPE_CHECKING:\n"
            "    from pkg.g import G\n"  # never runs: not an edge
            "else:\n"
            "    from pkg import h\n",
            False,
        ),
        "pkg.sub": ("from ..a import x\nfrom . import d\n", True),
        "pkg.sub.d": ("from pkg.a import y\n", False),
    }
    sources |= {name: ("", False) for name in ("pkg.b", "pkg.c", "pkg.e", "pkg.f", "pkg.g", "pkg.h")}
    graph = import_graph(sources)
    assert graph["pkg.a"] == {"pkg.b", "pkg.c", "pkg.sub.d", "pkg.e", "pkg.f", "pkg.h"}
    assert graph["pkg.sub"] == {"pkg.a", "pkg.sub.d"}
    assert graph["pkg"] == {"pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.sub.d"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circles_under_libs_and_services(graph: dict[str, set[str]]) -> None:
    found = cycles(graph)
    assert not found, "import circles: " + "; ".join(" <-> ".join(circle) for circle in found)


def test_the_model_package_imports_no_implementation_from_its_interface(graph: dict[str, set[str]]) -> None:
    # The registry loads models by name; the interface they implement depends on none of them.
    assert not {m for m in graph["libs.model.interface"] if _in(m, "libs")}


def test_no_service_reaches_the_model_tools(graph: dict[str, set[str]]) -> None:
    offending = {
        service: sorted(m for m in reachable(graph, service) if _in(m, TOOLS))
        for service in graph
        if _in(service, FORBIDDEN)
    }
    offending = {service: tools for service, tools in offending.items() if tools}
    assert not offending, f"services that import {TOOLS} (directly or through libs): {offending}"


def test_the_run_time_model_never_imports_the_tools(graph: dict[str, set[str]]) -> None:
    offending = {
        module: sorted(m for m in reachable(graph, module) if _in(m, TOOLS))
        for module in graph
        if _in(module, RUNTIME_MODEL)
    }
    assert not {module: tools for module, tools in offending.items() if tools}
