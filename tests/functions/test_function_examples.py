"""The multi-function example programs (examples/functions/): their tests pass against the gcc build."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from pipeline.config import SandboxSettings
from pipeline.discovery import discover
from pipeline.sandbox import Sandbox
from pipeline.task import Task
from pipeline.testing import load_test_suite, run_test_suite
from tests.functions.conftest import FUNCTIONS


async def _tasks() -> dict[str, Task]:
    return {t.id: t async for t in discover(FUNCTIONS, FUNCTIONS) if isinstance(t, Task)}


async def test_discovery_finds_both_programs_with_their_samples() -> None:
    """examples/functions holds two tasks in the flat layout, their samples files taken as data."""
    tasks = await _tasks()
    assert sorted(tasks) == ["exprcalc", "inventory"]
    assert tasks["exprcalc"].c_path.name == "exprcalc.c"


def test_programs_are_several_hundred_lines() -> None:
    """Each program is large enough that whole-file translation overflows a small context."""
    for name in ("inventory", "exprcalc"):
        source = (FUNCTIONS / f"{name}.c").read_text()
        assert source.count("\n") >= 450, name
        assert len(source) >= 17_000, name  # about 5,000+ tokens of C alone


@pytest.mark.parametrize("name", ["inventory", "exprcalc"])
async def test_every_test_passes_against_the_gcc_build(name: str) -> None:
    """Built with gcc -Wall -Werror, the program passes every test of its task."""
    task = (await _tasks())[name]
    suite = load_test_suite(task)
    assert len(suite.cases) >= 14
    async with Sandbox.open(SandboxSettings()) as sandbox, sandbox.build_dir() as build_dir:
        binary = Path(build_dir) / name
        await anyio.run_process(["gcc", "-O1", "-Wall", "-Wextra", "-Werror", "-o", str(binary), str(task.c_path)])
        verdict = await run_test_suite(binary, suite, sandbox=sandbox,
                                       limits=sandbox.limits(wall_seconds=20, output_bytes=100_000))
    assert verdict.passed, verdict.feedback()
