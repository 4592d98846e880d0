"""From verified items to one pure-Rust program (pipeline/combine.py), checked by the task's tests."""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pipeline.build import Toolchain
from pipeline.c_program import CProgram, parse_program
from pipeline.c_types import TypeTranslation, translate_types
from pipeline.combine import WHOLE_PROGRAM, combine, verify_combined
from pipeline.config import SandboxSettings, ToolchainSettings
from pipeline.ffi import verify_function
from pipeline.sandbox import Sandbox
from pipeline.task import Task
from pipeline.testing import TestSuite, load_test_suite

PROGRAM_C = r"""
#include <stdio.h>
#include <stdlib.h>

typedef struct Node { int value; struct Node *next; } Node;

static Node *g_list = NULL;
static int g_total = 0;

static Node *push(Node *head, int value) {
    Node *n = malloc(sizeof *n);
    n->value = value;
    n->next = head;
    return n;
}

static int sum(const Node *n) { return n == NULL ? 0 : n->value + sum(n->next); }

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        g_list = push(g_list, atoi(argv[i]));
        g_total++;
    }
    printf("%d numbers, sum %d\n", g_total, sum(g_list));
    return 0;
}
"""

PUSH = """
#[no_mangle]
pub unsafe extern "C" fn push(head: *mut Node, value: libc::c_int) -> *mut Node {
    let n = libc::malloc(std::mem::size_of::<Node>()) as *mut Node;
    (*n).value = value;
    (*n).next = head;
    n
}
"""
SUM = """
#[no_mangle]
pub unsafe extern "C" fn sum(n: *const Node) -> libc::c_int {
    if n.is_null() { 0 } else { (*n).value + sum((*n).next) }
}
"""
MAIN = """
fn main() {
    unsafe {
        for arg in std::env::args().skip(1) {
            let text = std::ffi::CString::new(arg).unwrap();
            g_list = push(g_list, libc::atoi(text.as_ptr()));
            g_total += 1;
        }
        libc::printf(b"%d numbers, sum %d\\n\\0".as_ptr() as *const libc::c_char, g_total, sum(g_list));
    }
}
"""
SAMPLES = [
    {"input": "1 2 3", "output": "3 numbers, sum 6"},
    {"input": "-5 10", "output": "2 numbers, sum 5"},
    {"input": "7", "output": "1 numbers, sum 7"},
]


@pytest.fixture
def task(tmp_path: Path) -> tuple[CProgram, TypeTranslation, TestSuite]:
    (tmp_path / "numbers.c").write_text(PROGRAM_C)
    (tmp_path / "numbers_samples.json").write_text(json.dumps(SAMPLES))
    found = subprocess.run(["gcc", "-print-file-name=include"], capture_output=True, text=True, check=True)
    program = parse_program(tmp_path / "numbers.c", include_dirs=(found.stdout.strip(),))
    suite = load_test_suite(Task("numbers", tmp_path / "numbers.c", tmp_path / "numbers_samples.json",
                                 test_kind="samples", feed="args"))
    return program, translate_types(program), suite


@pytest.fixture
async def services(cache_dir: Path) -> AsyncIterator[tuple[Toolchain, Sandbox]]:
    toolchain = await Toolchain.prepare(ToolchainSettings(cache_dir=str(cache_dir), clippy=False))
    async with Sandbox.open(SandboxSettings()) as sandbox:
        yield toolchain, sandbox


FUNCTIONS = {("function:push",): PUSH, ("function:sum",): SUM, ("function:main",): MAIN}


async def test_items_verified_one_by_one_combine_into_a_passing_rust_program(
    task: tuple[CProgram, TypeTranslation, TestSuite], services: tuple[Toolchain, Sandbox]
) -> None:
    """Each function passes inside the C program; together, with the globals written from C, they pass alone."""
    program, types, suite = task
    toolchain, sandbox = services
    limits = sandbox.limits(wall_seconds=20, output_bytes=100_000)
    for keys, code in FUNCTIONS.items():
        ffi = await verify_function(program, types, keys, code, suite, toolchain=toolchain, sandbox=sandbox,
                                    limits=limits)
        assert ffi.passed, ffi.feedback
    combined = combine(program, types, FUNCTIONS)
    assert combined.missing == ()
    assert "pub static mut g_list: *mut Node = std::ptr::null_mut();" in combined.source
    assert "pub static mut g_total: libc::c_int = 0 as libc::c_int;" in combined.source
    assert 'extern "C" {' not in combined.source  # no C left to call
    assert combined.source.index("fn push(") < combined.source.index("fn sum(") < combined.source.index("fn main(")
    verdict = await verify_combined(combined, suite, toolchain=toolchain, sandbox=sandbox, limits=limits)
    assert verdict.passed, verdict.feedback


async def test_items_without_rust_are_named(
    task: tuple[CProgram, TypeTranslation, TestSuite], services: tuple[Toolchain, Sandbox]
) -> None:
    """A function group never translated leaves the program incomplete, and the verdict names it."""
    program, types, suite = task
    toolchain, sandbox = services
    combined = combine(program, types, {k: v for k, v in FUNCTIONS.items() if k != ("function:sum",)})
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
    combined = combine(program, types, FUNCTIONS, {"global:g_total": "pub static mut g_total: f64 = 0.0;"})
    verdict = await verify_combined(combined, suite, toolchain=toolchain, sandbox=sandbox,
                                    limits=sandbox.limits(wall_seconds=20, output_bytes=100_000))
    assert verdict.stage == "build"
    assert set(verdict.per_item) <= {"function:main", "global:g_total", WHOLE_PROGRAM}
    assert "g_total" in verdict.per_item["function:main"]  # `g_total += 1` now meets an f64
    assert "function:push" not in verdict.per_item and "function:sum" not in verdict.per_item
