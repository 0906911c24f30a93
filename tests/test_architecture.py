"""The package's shape, read from its source: where the log's SQL is, and which way imports go."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "productflo"

# SQL that names one of the log's tables. The keywords are upper case in this code base's SQL,
# which keeps prose ("events from the log") out; the two other tables are named nowhere but SQL.
_LOG_SQL = re.compile(
    r"\b(?:FROM|JOIN|INTO|UPDATE|TABLE|EXISTS)\s+(?:events|log_head|projection_checkpoints)\b"
    r"|\b(?:log_head|projection_checkpoints)\b"
)
# Modules that may still name the log's tables, each with the reason (none since issue 11).
_KNOWN: set[str] = set()


def _modules() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE).as_posix()
        yield name, ast.parse(path.read_text(), filename=str(path))


def _docstrings(tree: ast.Module) -> set[int]:
    """The ids of the module's, classes' and functions' docstring nodes."""
    found = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            found.add(id(body[0].value))
    return found


def _strings(tree: ast.Module) -> Iterator[tuple[int, str]]:
    skipped = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) not in skipped:
                yield node.lineno, node.value


def test_no_sql_names_the_log_tables_outside_events() -> None:
    """Only productflo/events/ names `events`, `log_head` and `projection_checkpoints` in SQL:
    everything else asks the store by the name of what it wants (STYLE.md 14)."""
    found = [
        f"productflo/{name}:{line}: {' '.join(text.split())[:80]}"
        for name, tree in _modules()
        if not name.startswith("events/") and name not in _KNOWN
        for line, text in _strings(tree)
        if _LOG_SQL.search(text)
    ]
    assert not found, "SQL naming the log's tables outside productflo/events/:\n" + "\n".join(found)


def test_the_known_exceptions_still_need_to_be_known() -> None:
    """An exception that no longer names the log's tables is taken off the list."""
    trees = dict(_modules())
    stale = [
        n for n in sorted(_KNOWN) if not any(_LOG_SQL.search(t) for _, t in _strings(trees[n]))
    ]
    assert not stale, f"no longer naming the log's tables, remove from _KNOWN: {stale}"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Each module of the package, and the package's modules it imports (under TYPE_CHECKING
    and inside functions too: a cycle there is still two modules that need each other)."""
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    targets.add(submodule if submodule in paths else node.module)
        graph[name] = {t for t in targets if t in paths and t != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_package_has_no_import_cycle() -> None:
    """Arrows point one way (STYLE.md 13): where two modules need each other, one of them is
    missing a Protocol."""
    graph = _imports()
    assert "productflo.events.store" in graph["productflo.hub"]  # the walk sees imports at all
    cycles = _cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_nothing_waits_with_asyncio_wait_for() -> None:
    """`asyncio.wait_for` on Python 3.11 returns what it waited for, dropping the cancellation,
    when both come in one turn of the event loop: a loop built on it may never stop (a tailer's
    did, hanging a stop for hours). `asyncio.timeout` keeps the cancellation."""
    found = [
        f"productflo/{name}:{node.lineno}"
        for name, tree in _modules()
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr == "wait_for"
    ]
    assert not found, "asyncio.wait_for in:\n" + "\n".join(found)
