"""The package's layout holds: imports run one way, no cycles, small modules (docs/design.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Lowest first: a module may import from its own layer and the layers below it, never above.
LAYERS = [
    ("ppo1.utils",),
    ("ppo1.config",),
    ("ppo1.core",),
    ("ppo1.tracking",),
    ("ppo1.report",),
    ("ppo1.tracked",),
    ("ppo1.sweep",),
    ("ppo1.train", "ppo1.evaluate", "ppo1.compare", "ppo1.dashboard", "ppo1.sweep_report"),
    ("benchmarks", "hydra_plugins"),
]
MAX_LINES = 350


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> list[Path]:
    return sorted(
        p
        for folder in ("ppo1", "benchmarks", "hydra_plugins")
        for p in (ROOT / folder).rglob("*.py")
    )


def layer(module: str) -> int:
    for rank, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(f"{p}.") for p in prefixes):
            return rank
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS and docs/design.md")


def project_imports(path: Path) -> set[str]:
    """The project modules `path` imports, at any depth (type-only imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]
            found |= {
                n if (ROOT / n.replace(".", "/")).with_suffix(".py").exists() else node.module
                for n in names
            }
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m for m in found if m.split(".")[0] in ("ppo1", "benchmarks")}


def test_every_import_runs_down_the_layers() -> None:
    upward = [
        f"{module_name(p)} imports {m}"
        for p in sources()
        for m in project_imports(p)
        if layer(m) > layer(module_name(p))
    ]
    assert upward == []


def test_no_import_cycle() -> None:
    graph = {module_name(p): project_imports(p) for p in sources()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        if state.get(module) == 1:
            raise AssertionError(" -> ".join([*path[path.index(module) :], module]))
        if state.get(module) == 2 or module not in graph:
            return
        state[module] = 1
        for dep in sorted(graph[module]):
            visit(dep, [*path, module])
        state[module] = 2

    for module in sorted(graph):
        visit(module, [])


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_stay_small(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{lines} lines: split it by what its parts do"
