"""The import graph of `llm_relay`, read from the source (every import statement, at any depth of a module, type-only
ones included): the limits and the money they guard stay a package a maintainer can hold in one look. Its modules
never reach the pipeline, the stream or the reconciler; admission and settlement never reach each other; and the
stream knows nothing of the pipeline's side (the cancel registry, the pipeline itself)."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "functions/relay/llm_relay"


def module_name(path: Path) -> str:
    parts = ["llm_relay", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def _resolve(current: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = current.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


@cache
def imports(name: str) -> frozenset[str]:
    """The package's modules `name` imports directly (`from x import y` counts `x.y` when that is a module)."""
    path = MODULES[name]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(name, path.name == "__init__.py", node)
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        for target in targets:
            while target and target not in MODULES:  # `a.b.c` of a name c in module a.b
                target = target.rpartition(".")[0]
            if target.startswith("llm_relay") and target != name:
                found.add(target)
    return frozenset(found)


def reaches(start: str) -> set[str]:
    """Every module `start` imports, directly or through others."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        for target in imports(todo.pop()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


LIMITS = sorted(name for name in MODULES if name.startswith("llm_relay.limits"))


def test_the_graph_is_read_from_the_real_modules() -> None:
    # a graph that found nothing would let every check below pass
    assert "llm_relay.limits.admit" in LIMITS and "llm_relay.limits.settle" in LIMITS
    assert "llm_relay.dynamo" in imports("llm_relay.limits.admit")
    assert "llm_relay.pipeline" in reaches("llm_relay.app")
    assert "llm_relay.limits.rules" in reaches("llm_relay.pipeline")


@pytest.mark.parametrize("module", LIMITS)
def test_no_module_of_the_limits_reaches_the_pipeline_the_stream_or_the_reconciler(module: str) -> None:
    reached = reaches(module)
    assert not reached & {"llm_relay.pipeline", "llm_relay.stream", "llm_relay.reconciler"}, sorted(reached)


def test_admission_and_settlement_never_import_each_other() -> None:
    assert "llm_relay.limits.settle" not in reaches("llm_relay.limits.admit")
    assert "llm_relay.limits.admit" not in reaches("llm_relay.limits.settle")


def test_the_stream_imports_nothing_from_the_pipelines_side() -> None:
    reached = reaches("llm_relay.stream")
    assert not reached & {"llm_relay.pipeline", "llm_relay.cancellation", "llm_relay.app"}, sorted(reached)


def test_the_ledger_and_the_rules_are_pure_of_the_dynamodb_adapter() -> None:
    for module in ("llm_relay.ledger", "llm_relay.limits.rules", "llm_relay.limits.budgets"):
        assert not any(name.startswith("llm_relay.dynamo") for name in reaches(module)), module


def test_the_framings_of_other_apis_take_their_json_writer_from_a_neutral_module() -> None:
    for module in ("llm_relay.upstreams.ndjson", "llm_relay.apis.messages_events", "llm_relay.apis.responses_events"):
        assert "llm_relay.encoding" not in imports(module), module
