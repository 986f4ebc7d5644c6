"""The import graph of tuner/ and trainables/, read from the source (ast; nothing is imported).

It keeps the run path one-directional: no import cycles, trainables/ free of the tuner,
Optuna and MLflow, the data modules free of everything that runs, and each execution stage
importing only the stages below it. Imports inside functions count: a lazy import is still
a dependency.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tuner", "trainables")

# Data: what a study is, its search space, where it lives. Imports no module that runs a study.
DATA = ("tuner.errors", "tuner.space", "tuner.study", "tuner.group", "tuner.locations")
EXECUTION = ("tuner.run", "tuner.storage", "tuner.journal", "tuner.tracking", "tuner.record_writer", "tuner.cli")
# The execution stages, lowest first: each may import only the stages before it.
STAGES = (
    "tuner.run.plan",
    "tuner.run.context",
    "tuner.run.models",
    "tuner.run.pruning",
    "tuner.run.adapter",
    "tuner.run.cohort",
    "tuner.run.backfill",
    "tuner.run.open",
    "tuner.run.launch",
    "tuner.run.execute",
    "tuner.run.finish",
    "tuner.run.group",
    "tuner.run.api",
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def imported(module: str, path: Path) -> Iterator[str]:
    """Every module `module` imports, at any depth of its code ("from a import b" yields a.b when that is a module)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    known = sources()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:  # a submodule by its own name, anything else from the module itself
                yield f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base


def graph() -> dict[str, set[str]]:
    """Edges between our own modules (by the longest of our module names that an import names)."""
    known = sources()
    edges: dict[str, set[str]] = {}
    for module, path in known.items():
        targets = set()
        for name in imported(module, path):
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        edges[module] = targets
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_graph_is_read_from_the_source() -> None:
    edges = graph()
    assert "tuner.run.plan" in edges["tuner.run.execute"]  # a top-level import
    assert "tuner.run.api" in edges["tuner.cli"]  # an import inside a function
    assert "trainables.config" in edges["trainables.loop"]


def test_there_is_no_import_cycle() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_trainables_import_nothing_of_tuner_optuna_or_mlflow() -> None:
    for module, path in sources().items():
        if module.startswith("trainables"):
            bad = [n for n in imported(module, path) if within(n, ("tuner", "optuna", "mlflow"))]
            assert not bad, f"{module} imports {bad}: trainables/ must run without the tuner"


@pytest.mark.parametrize("module", DATA)
def test_data_modules_import_nothing_that_runs(module: str) -> None:
    bad = sorted(t for t in graph()[module] if within(t, EXECUTION))
    assert not bad, f"{module} (data) imports {bad}, which open storages, track, spawn or train"


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_imports_only_the_stages_below_it(stage: str) -> None:
    assert set(STAGES) == {m for m in sources() if m.startswith("tuner.run.")}, "a new stage: give it its place"
    above = STAGES[STAGES.index(stage) + 1 :]
    bad = sorted(t for t in graph()[stage] if t in above or t == "tuner.cli")
    assert not bad, f"{stage} imports {bad}, which come later in the run path"
