"""No import cycles in ad_fast, and no method importing another method: a static check of every import statement
(module level and inside functions; ``if TYPE_CHECKING:`` blocks, which never run, are skipped)."""

from __future__ import annotations

import ast
from pathlib import Path

import ad_fast
from ad_fast.models import BUILTIN_METHODS

PACKAGE = Path(ad_fast.__file__).parent


def _modules() -> dict[str, tuple[Path, bool]]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def _imports(node: ast.AST):
    """The import statements under ``node``, skipping ``if TYPE_CHECKING:`` blocks (their ``else`` runs)."""
    if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
        for child in node.orelse:
            yield from _imports(child)
        return
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
    for child in ast.iter_child_nodes(node):
        yield from _imports(child)


def import_graph() -> dict[str, set[str]]:
    """module -> the ad_fast modules it imports (``from pkg import name`` counts as importing ``pkg.name`` when that
    is a module, else ``pkg``; compiled extensions are leaves and left out)."""
    modules = _modules()
    graph = {}
    for module, (path, is_package) in modules.items():
        base = module.split(".") if is_package else module.split(".")[:-1]
        targets = set()
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                parent = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else [])) \
                    if node.level else (node.module or "")
                names = []
                for alias in node.names:
                    candidate = f"{parent}.{alias.name}"
                    if candidate in modules:
                        names.append(candidate)
                    elif not list(PACKAGE.parent.joinpath(*parent.split(".")).glob(f"{alias.name}.*.so")):
                        names.append(parent)
            for name in names:
                while name not in modules and "." in name:
                    name = name.rsplit(".", 1)[0]
                if name in modules and name != module:
                    targets.add(name)
        graph[module] = targets
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_checker_finds_a_cycle_and_resolves_relative_imports():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    graph = import_graph()
    assert "ad_fast.models.base" in graph["ad_fast.models.dmad.model"]
    assert "ad_fast.ops" in graph["ad_fast.models.dmad.model"]


def test_no_import_cycle_in_ad_fast():
    assert _cycles(import_graph()) == []


def test_no_method_imports_another_method():
    graph = import_graph()
    for method in BUILTIN_METHODS:
        family = f"ad_fast.models.{method}"
        others = [f"ad_fast.models.{m}" for m in BUILTIN_METHODS if m != method]
        for module, targets in graph.items():
            if module == family or module.startswith(family + "."):
                bad = [t for t in targets if any(t == o or t.startswith(o + ".") for o in others)]
                assert not bad, f"{module} imports {bad}"
