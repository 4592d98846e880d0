"""FFI verification of one function (pipeline/ffi.py): the Rust translation linked into the C program in place
of the C definition, judged by the task's tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pipeline.build import Toolchain
from pipeline.c_program import CProgram
from pipeline.c_types import TypeTranslation, translate_types
from pipeline.discovery import discover
from pipeline.ffi import FfiVerdict, drop_static, harness_c_source, harness_rust_source, verify_function
from pipeline.records import TestSuite
from pipeline.sandbox import Sandbox
from pipeline.task import Task
from pipeline.testing import load_test_suite
from tests.functions.conftest import FUNCTIONS

CMP_VALUE = """
#[no_mangle]
pub unsafe extern "C" fn cmp_value(a: *const libc::c_void, b: *const libc::c_void) -> libc::c_int {
    let x = *(a as *const *const Item);
    let y = *(b as *const *const Item);
    let (vx, vy) = (item_value(x), item_value(y));
    if vx != vy {
        return if vx < vy { 1 } else { -1 };
    }
    cmp_name(a, b)
}
"""
#: Compiles and links, but sorts by value ascending: a slip only the tests see.
CMP_VALUE_WRONG = CMP_VALUE.replace("if vx < vy { 1 } else { -1 }", "if vx < vy { -1 } else { 1 }")

REPORT_ERROR = """
#[no_mangle]
pub unsafe extern "C" fn report_error(what: *const libc::c_char, detail: *const libc::c_char) {
    g_errors += 1;
    libc::printf(b"error: %s %s\\n\\0".as_ptr() as *const libc::c_char, what, detail);
}
"""

EVEN_ODD = """
#[no_mangle]
pub unsafe extern "C" fn is_even(n: number_t) -> libc::c_int {
    if n == 0 { 1 } else { is_odd(n - 1) }
}

#[no_mangle]
pub unsafe extern "C" fn is_odd(n: number_t) -> libc::c_int {
    if n == 0 { 0 } else { is_even(n - 1) }
}
"""

INVENTORY_MAIN = """
extern "C" {
    static mut stdin: *mut libc::FILE;
}

fn main() {
    unsafe {
        let mut line = [0 as libc::c_char; 256];
        let mut args: [*mut libc::c_char; 8] = [std::ptr::null_mut(); 8];
        let mut lines = 0;
        while !libc::fgets(line.as_mut_ptr(), 256, stdin).is_null() {
            lines += 1;
            let nargs = split_line(line.as_mut_ptr(), args.as_mut_ptr(), 8);
            if nargs < 0 {
                report_error(b"too many words on line\0".as_ptr() as _, b"\0".as_ptr() as _);
                continue;
            }
            if nargs == 0 || *args[0] as u8 == b'#' {
                continue;
            }
            run_command(args.as_mut_ptr(), nargs);
        }
        libc::printf(b"%d lines, %d items, %d errors\n\0".as_ptr() as _, lines, g_count, g_errors);
        tree_free(g_root);
        while !g_head.is_null() {
            let next = (*g_head).next;
            libc::free(g_head as *mut libc::c_void);
            g_head = next;
        }
        std::process::exit(if g_errors > 0 { 1 } else { 0 });
    }
}
"""


@pytest.fixture(scope="module")
def inventory_model(inventory: CProgram) -> tuple[CProgram, TypeTranslation]:
    return inventory, translate_types(inventory)


@pytest.fixture(scope="module")
def exprcalc_model(exprcalc: CProgram) -> tuple[CProgram, TypeTranslation]:
    return exprcalc, translate_types(exprcalc)


async def _suite(name: str) -> TestSuite:
    tasks = {t.id: t async for t in discover(FUNCTIONS, FUNCTIONS) if isinstance(t, Task)}
    return load_test_suite(tasks[name])


async def _verify(
    model: tuple[CProgram, TypeTranslation], keys: list[str], code: str, task: str,
    services: tuple[Toolchain, Sandbox],
) -> FfiVerdict:
    program, types = model
    toolchain, sandbox = services
    return await verify_function(program, types, keys, code, await _suite(task), toolchain=toolchain,
                                 sandbox=sandbox, limits=sandbox.limits(wall_seconds=20, output_bytes=100_000))


def test_drop_static_touches_only_the_storage_class() -> None:
    """`static` before the name goes; a name or string that merely contains the word stays."""
    assert drop_static("static const char *static_name(void)", "static_name") == "const char *static_name(void)"
    assert drop_static("static int n = 0;", "n") == "int n = 0;"
    assert drop_static("int f(void)", "f") == "int f(void)"


def test_the_c_side_declares_the_function_and_exposes_what_rust_calls(
    inventory_model: tuple[CProgram, TypeTranslation], tmp_path: Path
) -> None:
    """cmp_value's body is gone (a prototype stays); its static callees and the rest compile as before."""
    program, _types = inventory_model
    c_source = harness_c_source(program, ["function:cmp_value"])
    assert "int cmp_value(const void *a, const void *b);" in c_source
    assert "static int cmp_value" not in c_source and "cents_t vx = item_value(x);" not in c_source
    assert "\nint cmp_name(const void *a, const void *b) {" in c_source  # called from Rust: linkable now
    assert "\ncents_t item_value(const Item *item) {" in c_source
    assert "\nstatic long item_volume(const Item *item) {" in c_source  # not called by cmp_value: untouched
    (tmp_path / "harness.c").write_text(c_source)
    subprocess.run(["gcc", "-std=gnu11", "-c", "-Werror=implicit-function-declaration", "-o",
                    str(tmp_path / "harness.o"), str(tmp_path / "harness.c")], check=True, timeout=60)


def test_a_prototyped_static_group_loses_static_everywhere(inventory_model: tuple[CProgram, TypeTranslation]) -> None:
    """parse_sum's forward declaration and the group's definitions all become external prototypes."""
    program, _types = inventory_model
    c_source = harness_c_source(program, ["function:parse_atom", "function:parse_product", "function:parse_sum"])
    assert c_source.count("long parse_sum(Cursor *cur);") == 2
    assert "static long parse_sum" not in c_source and "static long parse_atom" not in c_source
    assert "void skip_spaces(Cursor *cur) {" in c_source and "static void skip_spaces" not in c_source


def test_the_rust_side_declares_c_callees_and_globals(inventory_model: tuple[CProgram, TypeTranslation]) -> None:
    """The crate holds the types, an extern block for what stays in C, and the translation."""
    program, types = inventory_model
    rust = harness_rust_source(program, types, ["function:cmp_value"], CMP_VALUE)
    assert rust is not None
    assert "pub struct Item {" in rust
    assert "    pub fn cmp_name(a: *const libc::c_void, b: *const libc::c_void) -> libc::c_int;" in rust
    assert "    pub fn item_value(item: *const Item) -> cents_t;" in rust
    rust = harness_rust_source(program, types, ["function:report_error"], REPORT_ERROR)
    assert rust is not None and "    pub static mut g_errors: libc::c_int;" in rust


async def test_a_correct_function_passes_inside_the_c_program(
    inventory_model: tuple[CProgram, TypeTranslation], services: tuple[Toolchain, Sandbox]
) -> None:
    """A right cmp_value, called by C's qsort through the SORT_KEYS table, passes every inventory test."""
    verdict = await _verify(inventory_model, ["function:cmp_value"], CMP_VALUE, "inventory", services)
    assert verdict.passed, verdict.feedback
    assert verdict.verdict is not None and len(verdict.verdict.outcomes) == 14


async def test_a_wrong_function_fails_and_the_feedback_names_it(
    inventory_model: tuple[CProgram, TypeTranslation], services: tuple[Toolchain, Sandbox]
) -> None:
    """An ascending cmp_value compiles and links, and the tests that sort by value catch it."""
    verdict = await _verify(inventory_model, ["function:cmp_value"], CMP_VALUE_WRONG, "inventory", services)
    assert verdict.stage == "tests"
    assert verdict.feedback.startswith("With the Rust translation of `cmp_value` linked into the C program")
    assert verdict.verdict is not None
    assert [o.case.index for o in verdict.verdict.failures] == [1]  # the sample that runs "sort value"


async def test_a_function_using_a_global_and_printf(
    inventory_model: tuple[CProgram, TypeTranslation], services: tuple[Toolchain, Sandbox]
) -> None:
    """report_error counts in C's g_errors and prints through the same stdio buffer: output order holds."""
    verdict = await _verify(inventory_model, ["function:report_error"], REPORT_ERROR, "inventory", services)
    assert verdict.passed, verdict.feedback


async def test_a_mutually_recursive_group_is_verified_together(
    exprcalc_model: tuple[CProgram, TypeTranslation], services: tuple[Toolchain, Sandbox]
) -> None:
    """is_even and is_odd, translated together, replace both C definitions and pass exprcalc's tests."""
    verdict = await _verify(exprcalc_model, ["function:is_even", "function:is_odd"], EVEN_ODD, "exprcalc", services)
    assert verdict.passed, verdict.feedback


@pytest.mark.parametrize(
    ("code", "stage", "says"),
    [
        pytest.param(CMP_VALUE.replace("cmp_name(a, b)", "cmp_name(a, b, 0)"), "rust_build",
                     "The Rust translation of `cmp_value` does not compile", id="compile-error"),
        pytest.param(CMP_VALUE.replace("#[no_mangle]\n", ""), "link",
                     "The Rust translation of `cmp_value` does not link", id="no-mangle-missing"),
    ],
)
async def test_build_and_link_failures_are_verdicts(
    inventory_model: tuple[CProgram, TypeTranslation], services: tuple[Toolchain, Sandbox], code: str, stage: str,
    says: str,
) -> None:
    """A translation that does not compile or does not provide the symbol fails at that stage, named."""
    verdict = await _verify(inventory_model, ["function:cmp_value"], code, "inventory", services)
    assert verdict.stage == stage and verdict.feedback.startswith(says), verdict.feedback


async def test_a_rust_main_drives_the_c_functions(
    inventory_model: tuple[CProgram, TypeTranslation], services: tuple[Toolchain, Sandbox]
) -> None:
    """A plain `fn main()` reading stdin with libc and calling the C commands passes; one that cuts the
    closing count line short fails, named."""
    verdict = await _verify(inventory_model, ["function:main"], INVENTORY_MAIN, "inventory", services)
    assert verdict.passed, verdict.feedback
    short_summary = INVENTORY_MAIN.replace("%d lines, %d items, %d errors", "%d lines")
    verdict = await _verify(inventory_model, ["function:main"], short_summary, "inventory", services)
    assert verdict.stage == "tests" and verdict.feedback.startswith("With the Rust translation of `main`")


async def test_a_main_without_fn_main_is_refused(
    inventory_model: tuple[CProgram, TypeTranslation], services: tuple[Toolchain, Sandbox]
) -> None:
    """main must come as `fn main()`; anything else is a build failure saying so."""
    verdict = await _verify(inventory_model, ["function:main"], "pub fn start() {}", "inventory", services)
    assert verdict.stage == "rust_build" and "fn main()" in verdict.feedback


def test_only_functions_form_a_group(inventory_model: tuple[CProgram, TypeTranslation]) -> None:
    """A type or global in a group is a caller's mistake, raised as ValueError."""
    with pytest.raises(ValueError, match="struct:Item"):
        harness_c_source(inventory_model[0], ["struct:Item"])

