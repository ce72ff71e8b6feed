"""Imports point one way: services may import libs, libs never imports services.

libs/ is what the services share (and the operators' CLI, libs/cli, which runs
without any service): a module there that imports a service's internals ties the
shared code to one service's layout and pulls the service in wherever libs goes.
What a service and libs both need belongs in libs. Every import is checked, lazy
ones inside functions included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIBS = Path(__file__).resolve().parents[2] / "libs"
FORBIDDEN = "services"


def _imported(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) for every import statement and literal `import_module`/`__import__` call."""
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
