"""A small multi-function C program with its tests and a hand-written Rust translation of every function, for
the function-level modules' tests (combine, the function stage)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from pipeline.build import Toolchain
from pipeline.c_program import CProgram, parse_program
from pipeline.function_stage import FunctionEnv
from pipeline.interfaces import Model
from pipeline.records import TestSuite
from pipeline.sandbox import Sandbox
from pipeline.task import Task
from pipeline.testing import load_test_suite

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

static int is_odd(int n);
static int is_even(int n) { return n == 0 ? 1 : is_odd(n - 1); }
static int is_odd(int n) { return n == 0 ? 0 : is_even(n - 1); }

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        g_list = push(g_list, atoi(argv[i]));
        g_total++;
    }
    int s = sum(g_list);
    printf("%d numbers, sum %d, %s\n", g_total, s, is_even(s < 0 ? -s : s) ? "even" : "odd");
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
#: Compiles and links, but forgets the first node: only the tests can tell.
SUM_WRONG = SUM.replace("(*n).value + sum((*n).next)", "sum((*n).next)")
EVEN_ODD = """
#[no_mangle]
pub unsafe extern "C" fn is_even(n: libc::c_int) -> libc::c_int {
    if n == 0 { 1 } else { is_odd(n - 1) }
}

#[no_mangle]
pub unsafe extern "C" fn is_odd(n: libc::c_int) -> libc::c_int {
    if n == 0 { 0 } else { is_even(n - 1) }
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
        let s = sum(g_list);
        let parity = if is_even(s.abs()) != 0 { b"even\\0".as_ptr() } else { b"odd\\0".as_ptr() };
        libc::printf(b"%d numbers, sum %d, %s\\n\\0".as_ptr() as *const libc::c_char, g_total, s,
                     parity as *const libc::c_char);
    }
}
"""
RUST_FUNCTIONS = {
    ("function:push",): PUSH,
    ("function:sum",): SUM,
    ("function:is_even", "function:is_odd"): EVEN_ODD,
    ("function:main",): MAIN,
}
SAMPLES = [
    {"input": "1 2 3", "output": "3 numbers, sum 6, even"},
    {"input": "-5 10", "output": "2 numbers, sum 5, odd"},
    {"input": "7", "output": "1 numbers, sum 7, odd"},
]


def write_task(directory: Path, name: str, c_source: str, samples: list[dict[str, str]]) -> tuple[CProgram, TestSuite]:
    """``NAME.c`` and its samples (fed as arguments) written into ``directory``, parsed, with its test suite."""
    (directory / f"{name}.c").write_text(c_source)
    (directory / f"{name}_samples.json").write_text(json.dumps(samples))
    found = subprocess.run(["gcc", "-print-file-name=include"], capture_output=True, text=True, check=True)
    program = parse_program(directory / f"{name}.c", include_dirs=(found.stdout.strip(),))
    suite = load_test_suite(Task(name, directory / f"{name}.c", directory / f"{name}_samples.json",
                                 test_kind="samples", feed="args"))
    return program, suite


def numbers_task(directory: Path) -> tuple[CProgram, TestSuite]:
    """numbers.c and its samples written into ``directory``, parsed, with its test suite."""
    return write_task(directory, "numbers", PROGRAM_C, SAMPLES)


def function_env(model: Model, services: tuple[Toolchain, Sandbox]) -> FunctionEnv:
    """The function stage's services for a test: the real toolchain and sandbox, ``model`` scripted."""
    toolchain, sandbox = services
    return FunctionEnv(model, toolchain, sandbox, sandbox.limits(wall_seconds=20, output_bytes=100_000))
