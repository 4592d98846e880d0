"""From verified items to one pure-Rust program (pipeline/combine.py), checked by the task's tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.build import Toolchain
from pipeline.c_program import CProgram
from pipeline.c_types import TypeTranslation, translate_types
from pipeline.combine import WHOLE_PROGRAM, combine, verify_combined
from pipeline.ffi import verify_function
from pipeline.records import TestSuite
from pipeline.sandbox import Sandbox
from tests.functions.function_fixtures import RUST_FUNCTIONS, numbers_task


@pytest.fixture
def task(tmp_path: Path) -> tuple[CProgram, TypeTranslation, TestSuite]:
    program, suite = numbers_task(tmp_path)
    return program, translate_types(program), suite




async def test_items_verified_one_by_one_combine_into_a_passing_rust_program(
    task: tuple[CProgram, TypeTranslation, TestSuite], services: tuple[Toolchain, Sandbox]
) -> None:
    """Each function passes inside the C program; together, with the globals written from C, they pass alone."""
    program, types, suite = task
    toolchain, sandbox = services
    limits = sandbox.limits(wall_seconds=20, output_bytes=100_000)
    for keys, code in RUST_FUNCTIONS.items():
        ffi = await verify_function(program, types, keys, code, suite, toolchain=toolchain, sandbox=sandbox,
                                    limits=limits)
        assert ffi.passed, ffi.feedback
    combined = combine(program, types, RUST_FUNCTIONS)
    assert combined.missing == ()
    assert "pub static mut g_list: *mut Node = std::ptr::null_mut();" in combined.source
    assert "pub static mut g_total: libc::c_int = 0 as libc::c_int;" in combined.source
    assert 'extern "C" {' not in combined.source  # no C left to call
    order = [combined.source.index(f"fn {name}(") for name in ("push", "sum", "is_even", "main")]
    assert order == sorted(order)
    verdict = await verify_combined(combined, suite, toolchain=toolchain, sandbox=sandbox, limits=limits)
    assert verdict.passed, verdict.feedback


async def test_items_without_rust_are_named(
    task: tuple[CProgram, TypeTranslation, TestSuite], services: tuple[Toolchain, Sandbox]
) -> None:
    """A function group never translated leaves the program incomplete, and the verdict names it."""
    program, types, suite = task
    toolchain, sandbox = services
    combined = combine(program, types, {k: v for k, v in RUST_FUNCTIONS.items() if k != ("function:sum",)})
    assert combined.missing == ("function:sum",)
    verdict = await verify_combined(combined, suite, toolchain=toolchain, sandbox=sandbox,
                                    limits=sandbox.limits(wall_seconds=20, output_bytes=100_000))
    assert verdict.stage == "missing" and "function:sum" in verdict.feedback


async def test_a_combination_failure_is_reported_per_item(
    task: tuple[CProgram, TypeTranslation, TestSuite], services: tuple[Toolchain, Sandbox]
) -> None:
    """A global given the wrong type fails the build; each error is filed under the item rustc points at (main,
    which uses it), never under the unrelated functions."""
    program, types, suite = task
    toolchain, sandbox = services
    combined = combine(program, types, RUST_FUNCTIONS, {"global:g_total": "pub static mut g_total: f64 = 0.0;"})
    verdict = await verify_combined(combined, suite, toolchain=toolchain, sandbox=sandbox,
                                    limits=sandbox.limits(wall_seconds=20, output_bytes=100_000))
    assert verdict.stage == "build"
    assert set(verdict.per_item) <= {"function:main", "global:g_total", WHOLE_PROGRAM}
    assert "g_total" in verdict.per_item["function:main"]  # `g_total += 1` now meets an f64
    assert "function:push" not in verdict.per_item and "function:sum" not in verdict.per_item
