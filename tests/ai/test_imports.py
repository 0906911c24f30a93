"""The AI package's arrows point one way: the interface needs nothing, the prompts only it."""

from __future__ import annotations

import ast
from pathlib import Path

import productflo.ai

PACKAGE = Path(productflo.ai.__file__).parent


def imported(module: str) -> set[str]:
    """The productflo.ai modules `module` imports, TYPE_CHECKING ones included."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    prefix = "productflo.ai."
    return {name.removeprefix(prefix) for name in names if name.startswith(prefix)}


def test_each_ai_module_imports_only_those_below_it() -> None:
    assert imported("interface") == set()
    assert imported("prompts") == {"interface"}
    assert imported("offline") == {"interface", "prompts"}
    assert imported("providers") == {"interface", "offline", "prompts"}
