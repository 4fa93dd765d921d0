"""The package's import graph has no circles: data flows one way through ``src/cryojoint``.

Every ``import``/``from ... import`` of a cryojoint module counts, at module level or inside a function (a
deferred import is still a dependency, only a later one), and so do imports under ``TYPE_CHECKING``.
``from cryojoint.x import name`` depends on ``cryojoint.x``; ``from cryojoint import x`` on ``cryojoint.x`` when
``x`` is a module, else on the package ``cryojoint``. A package's own ``__init__`` running when one of its
submodules is imported is not counted (it would make every package a circle with its re-exported modules).
"""

from __future__ import annotations

import ast
from pathlib import Path

import cryojoint

PACKAGE_DIR = Path(cryojoint.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}


def _resolve_relative(module: str, is_package: bool, level: int, target: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([target] if target else []))


def import_graph() -> dict[str, set[str]]:
    """``{module: {cryojoint modules it imports}}`` for every module under ``src/cryojoint``."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = (_resolve_relative(name, is_package, node.level, node.module) if node.level
                        else node.module or "")
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    targets.append(submodule if submodule in modules else base)
            for target in targets:
                # ``import cryojoint.a.b`` with no module file of that name: its nearest module ancestor.
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle ``[a, b, ..., a]`` in ``graph``, or ``None`` when it is acyclic (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for succ in sorted(graph.get(node, ())):
            if state.get(succ) == 1:
                return [*path[path.index(succ):], succ]
            if succ not in state and (cycle := visit(succ)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def test_the_graph_sees_module_and_function_level_imports() -> None:
    graph = import_graph()
    assert "cryojoint.training" in graph and "cryojoint.io.coords" in graph
    assert "cryojoint.errors" in graph["cryojoint.config"]  # module level
    assert "cryojoint.training" in graph["cryojoint.cli"]  # inside a command function
    assert "cryojoint.io.coords" in graph["cryojoint.io"]  # a package's __init__


def test_find_cycle_reports_a_circle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_src_cryojoint_imports_have_no_circles() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])
