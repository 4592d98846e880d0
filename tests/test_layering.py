"""The layering the architecture promises, read from the code's imports (ast): records and bookkeeping never
depend on the services (model client, sandbox, toolchain) or the stage loop."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PIPELINE = Path(__file__).resolve().parent.parent / "pipeline"
SERVICES = {"llm", "llm_errors", "sandbox", "build", "stages", "translate", "verifier", "engine", "simulator"}
#: Modules that import nothing but each other: what the interfaces may be written in.
LOW = {"records", "errors", "task"}


def imported_modules(path: Path) -> set[str]:
    """Top-level pipeline modules a file imports (relative or absolute), including imports inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 1 and module:
                found.add(module.split(".")[0])
            elif node.level == 1:
                found.update(alias.name for alias in node.names)
            elif module.startswith("pipeline."):
                found.add(module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("pipeline."))
    return found


@pytest.mark.parametrize("module", ["records", "ledger", "results", "task", "errors"])
def test_low_modules_do_not_import_the_services(module: str) -> None:
    """records, ledger and results read and write plain values; they must not pull in the client or sandbox."""
    assert not imported_modules(PIPELINE / f"{module}.py") & SERVICES


def test_records_import_nothing_of_the_pipeline() -> None:
    """records.py is the bottom: plain values (task inputs and tests, verdicts, results) and no pipeline import."""
    assert imported_modules(PIPELINE / "records.py") == set()


def test_interfaces_import_only_low_modules() -> None:
    """The Model and Verifier interfaces speak in records only: nothing of testing, the services or the stages."""
    assert imported_modules(PIPELINE / "interfaces.py") <= LOW


def test_stage_loop_knows_only_the_interfaces() -> None:
    """The stage loop depends on the Model and Verifier interfaces, not on their implementations."""
    assert not imported_modules(PIPELINE / "stages.py") & {"llm", "sandbox", "build", "verifier", "testing_run"}
    assert not imported_modules(PIPELINE / "translate.py") & {"llm", "sandbox", "build", "verifier", "ledger"}


def test_the_checker_sees_imports() -> None:
    """The reader itself: the engine does import the client (else every assertion above would pass vacuously)."""
    assert {"llm", "sandbox", "stages"} <= imported_modules(PIPELINE / "engine.py")


def test_architecture_document_matches_the_code() -> None:
    """docs/architecture.md's graph is the one the code's imports give, and every module has a layer."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("architecture", PIPELINE.parent / "scripts" / "architecture.py")
    assert spec is not None and spec.loader is not None
    architecture = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(architecture)
    graph = architecture.mermaid()
    assert "unplaced" not in graph, "a new module needs a layer in scripts/architecture.py"
    assert graph in (PIPELINE.parent / "docs" / "architecture.md").read_text(), \
        "run `python scripts/architecture.py --write` and commit docs/architecture.md"


#: asyncio calls that start a task nobody's scope owns (or join them by hand); anyio task groups replace them.
UNSTRUCTURED = {"ensure_future", "create_task", "gather", "run_in_executor", "wait"}


def test_no_task_outlives_its_scope() -> None:
    """Structured concurrency only: no module of pipeline/ (the simulator included) starts tasks with asyncio's
    ensure_future/create_task or joins them with gather/wait; every task belongs to an anyio task group."""
    found = []
    for path in sorted(PIPELINE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in ("asyncio", "loop")
                    and node.func.attr in UNSTRUCTURED):
                found.append(f"{path.relative_to(PIPELINE.parent)}:{node.lineno} {node.func.attr}")
    assert not found, found
