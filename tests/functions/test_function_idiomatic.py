"""The idiomatic stage for function-level programs (pipeline/function_idiomatic.py): the verified unidiomatic
program of numbers.c made safe one unit at a time, each step built and tested as a whole program.

The model is a scripted stand-in for the Model interface answering from the canned files of the simulator
layout (tests/functions/answers/numbers/idiomatic-functions/<label>-<N>.md); the toolchain, the sandbox and
the tests are real."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pipeline.build import Toolchain
from pipeline.c_program import CProgram, parse_program
from pipeline.c_types import translate_types
from pipeline.combine import combine
from pipeline.function_idiomatic import (
    MARKER,
    IdiomaticBook,
    Unit,
    idiomatic_by_function,
    split_answer,
    write_idiomatic_files,
)
from pipeline.records import Completion, TestSuite, Usage
from pipeline.rust_items import split_items
from pipeline.rust_source import first_unsafe_line
from pipeline.sandbox import Sandbox
from pipeline.task import Task
from pipeline.testing import load_test_suite, run_test_suite
from tests.functions.function_fixtures import RUST_FUNCTIONS, numbers_task
from tests.functions.test_function_stage import _env  # the same services, any scripted model

ANSWERS = Path(__file__).parent / "answers" / "numbers" / "idiomatic-functions"
#: Compiles, but forgets the first node: only the tests can tell.
SUM_WRONG = """----RUST BEGIN----
fn sum(node: Option<&Node>) -> i32 {
    match node {
        None => 0,
        Some(node) => sum(node.next.as_deref()),
    }
}

pub unsafe extern "C" fn sum(n: *const Node) -> libc::c_int {
    super::sum(list_from_raw(n).as_deref())
}
----RUST END----
"""
#: Still the unidiomatic function: cannot be accepted as the safe one.
SUM_UNSAFE = "----RUST BEGIN----\n" + RUST_FUNCTIONS[("function:sum",)].strip() + "\n----RUST END----\n"


def canned() -> dict[str, list[str]]:
    """label -> the canned answers in attempt order, from the simulator-layout files."""
    scripts: dict[str, list[str]] = {}
    for path in sorted(ANSWERS.glob("*.md")):
        label, _, number = path.stem.rpartition("-")
        scripts.setdefault(label, []).append((int(number), path.read_text()))  # type: ignore[arg-type]
    return {label: [text for _, text in sorted(answers)] for label, answers in scripts.items()}  # type: ignore[misc]


@dataclass
class ScriptedModel:
    """Answers each unit's prompts from its own script, in order (the last answer repeats); records every
    conversation by the label of the prompt's marker line."""

    scripts: dict[str, list[str]]
    seen: list[tuple[str, list[dict[str, str]]]] = field(default_factory=list)

    async def complete(self, messages: Sequence[Mapping[str, str]], *, purpose: str = "") -> Completion:
        match = re.search(rf"^{re.escape(MARKER)}(\S+)$", messages[1]["content"], re.MULTILINE)
        assert match is not None, messages[1]["content"][:300]
        self.seen.append((match.group(1), [dict(m) for m in messages]))
        script = self.scripts[match.group(1)]
        text = script.pop(0) if len(script) > 1 else script[0]
        return Completion(text, "stop", Usage(800, 200), 0.01, 0.0, 1)


@pytest.fixture
def task(tmp_path: Path) -> tuple[CProgram, str, TestSuite]:
    program, suite = numbers_task(tmp_path)
    return program, combine(program, translate_types(program), RUST_FUNCTIONS).source, suite


async def test_every_unit_made_safe_and_the_end_program_has_no_unsafe(
    task: tuple[CProgram, str, TestSuite], services: tuple[Toolchain, Sandbox], tmp_path: Path
) -> None:
    """Four prompts bottom-up, each holding its own unit's unidiomatic body and no other function's body; the
    end program has no `unsafe`, no wrapper, and passes the tests; SACToR's per-item files are written."""
    program, source, suite = task
    model = ScriptedModel(canned())
    run = await idiomatic_by_function(_env(model, services), program, source, suite, IdiomaticBook.load(tmp_path))
    assert [label for label, _ in model.seen] == ["push", "sum", "is_even+is_odd", "main"]
    bodies = {"push": "(*n).next = head;", "sum": "(*n).value + sum((*n).next)",
              "is_even": "if n == 0 { 1 } else { is_odd(n - 1) }", "is_odd": "if n == 0 { 0 } else { is_even(",
              "main": "g_list = push(g_list", "safe push": "Some(Box::new(Node { value, next: head }))",
              "safe sum": "node.value + sum(node.next.as_deref())"}
    for label, messages in model.seen:
        shown = {name for name, body in bodies.items() if body in messages[1]["content"]}
        assert shown == set(label.split("+")), (label, shown)
    sum_prompt = model.seen[1][1][1]["content"]
    assert "unsafe fn list_from_raw(mut node: *const Node) -> Option<Box<super::Node>>;" in sum_prompt
    assert "struct Node {\n    value: i32,\n    next: Option<Box<Node>>,\n}" in sum_prompt  # the safe type
    main_prompt = model.seen[3][1][1]["content"]
    assert "fn sum(node: Option<&Node>) -> i32;" in main_prompt and "fn is_even(n: i32) -> bool;" in main_prompt
    assert "Globals only this step uses (replace them with safe state): `g_list`, `g_total`." in main_prompt
    assert [o.status for o in run.outcomes] == ["verified"] * 4
    assert run.verified and run.source is not None and run.requests == 4
    assert first_unsafe_line(run.source) is None
    assert "mod unidiomatic" not in run.source and "extern \"C\"" not in run.source
    toolchain, sandbox = services
    async with sandbox.build_dir() as out:
        built = await toolchain.build(run.source, out)
        assert built.binary is not None
        verdict = await run_test_suite(built.binary, suite, sandbox=sandbox,
                                       limits=sandbox.limits(wall_seconds=20, output_bytes=100_000))
    assert verdict.passed
    files = write_idiomatic_files(tmp_path / "translated_code_idiomatic", run)
    layout = {str(path.relative_to(tmp_path / "translated_code_idiomatic")) for path in files}
    assert {"functions/push.rs", "functions/is_odd.rs", "functions/main.rs", "structs/Node.rs",
            "combined.rs"} <= layout
    assert first_unsafe_line((tmp_path / "translated_code_idiomatic" / "functions" / "push.rs").read_text()) is None


async def test_a_wrong_safe_function_is_repaired_by_a_prompt_naming_it(
    task: tuple[CProgram, str, TestSuite], services: tuple[Toolchain, Sandbox], tmp_path: Path
) -> None:
    """A safe sum that drops a node compiles; the whole-program tests catch it; the repair names `sum`."""
    program, source, suite = task
    scripts = canned()
    scripts["sum"] = [SUM_WRONG, *scripts["sum"]]
    model = ScriptedModel(scripts)
    run = await idiomatic_by_function(_env(model, services), program, source, suite, IdiomaticBook.load(tmp_path))
    assert run.verified
    sums = [messages for label, messages in model.seen if label == "sum"]
    assert len(sums) == 2
    repair = sums[1][-1]["content"]
    assert "With the safe version of `sum` in the program, tests fail" in repair
    assert "Expected output:" in repair
    (outcome,) = [o for o in run.outcomes if o.label == "sum"]
    assert [attempt.kind for attempt in outcome.attempts] == ["test_failure", "verified"]
    result = run.stage_result()
    assert result.verified and result.code == run.source and result.requests == 5
    assert [a.message.split(":")[0] for a in result.attempts] == ["push", "sum", "sum", "is_even+is_odd", "main"]


async def test_a_unit_that_cannot_be_made_safe_fails_with_a_reason_and_blocks_its_callers(
    task: tuple[CProgram, str, TestSuite], services: tuple[Toolchain, Sandbox], tmp_path: Path
) -> None:
    """sum answered with `unsafe` every time: it fails with the reason, main (which calls it) is blocked,
    the others are safe; the last verified program is kept; a rerun asks only for sum and main."""
    program, source, suite = task
    scripts = canned()
    scripts["sum"] = [SUM_UNSAFE]
    model = ScriptedModel(scripts)
    run = await idiomatic_by_function(_env(model, services), program, source, suite, IdiomaticBook.load(tmp_path))
    assert not run.verified and run.stage == "incomplete" and run.source is None
    assert {o.label: o.status for o in run.outcomes} == {"push": "verified", "sum": "failed",
                                                         "is_even+is_odd": "verified", "main": "blocked"}
    info = run.failure_info()
    assert info["function:sum"]["status"] == "failed"
    assert "`sum` is not safe Rust (`unsafe` on line" in info["function:sum"]["reason"]
    assert info["function:main"] == {"status": "blocked_by_failed_dependency", "attempts": 0,
                                     "reason": "calls sum, which could not be made safe", "blocked_by": "sum"}
    assert "function:push" not in info
    assert [label for label, _ in model.seen].count("sum") == 3
    repair = [m for label, m in model.seen if label == "sum"][1][-1]["content"]
    assert "For `sum`: `sum` is not safe Rust" in repair
    assert run.partial_source is not None and "fn is_even(n: i32) -> bool" in run.partial_source

    model = ScriptedModel(canned())
    rerun = await idiomatic_by_function(_env(model, services), program, source, suite, IdiomaticBook.load(tmp_path))
    assert [label for label, _ in model.seen] == ["sum", "main"]
    assert [o.status for o in rerun.outcomes] == ["resumed", "verified", "resumed", "verified"]
    assert rerun.verified


COUNTER_C = r"""
#include <stdio.h>
#include <stdlib.h>

static int g_calls = 0;

static int twice(int x) { g_calls++; return 2 * x; }

int main(int argc, char **argv) {
    int s = 0;
    for (int i = 1; i < argc; i++) s += twice(atoi(argv[i]));
    printf("%d after %d calls\n", s, g_calls);
    return 0;
}
"""
COUNTER_RUST = {
    ("function:twice",): """
#[no_mangle]
pub unsafe extern "C" fn twice(x: libc::c_int) -> libc::c_int {
    g_calls += 1;
    2 * x
}
""",
    ("function:main",): """
fn main() {
    unsafe {
        let mut s: libc::c_int = 0;
        for arg in std::env::args().skip(1) {
            let text = std::ffi::CString::new(arg).unwrap();
            s += twice(libc::atoi(text.as_ptr()));
        }
        libc::printf(b"%d after %d calls\\n\\0".as_ptr() as *const libc::c_char, s, g_calls);
    }
}
""",
}
COUNTER_ANSWERS = {
    "twice": ["""----RUST BEGIN----
fn twice(x: i32) -> i32 {
    set_g_calls(get_g_calls() + 1);
    2 * x
}

pub unsafe extern "C" fn twice(x: libc::c_int) -> libc::c_int {
    super::twice(x)
}
----RUST END----
"""],
    "main": ["""----RUST BEGIN----
fn main() {
    let s: i32 = std::env::args().skip(1).map(|arg| twice(arg.trim().parse().unwrap_or(0))).sum();
    println!("{} after {} calls", s, get_g_calls());
}
----RUST END----
"""],
}


async def test_a_counter_shared_by_two_units_is_reached_through_accessors_and_ends_as_safe_state(
    services: tuple[Toolchain, Sandbox], tmp_path: Path, include_dirs: tuple[str, ...]
) -> None:
    """A scalar global used by two functions does not merge them: each prompt offers get_/set_ accessors
    (over the static mut while unconverted code uses it), and the end program keeps it in a thread_local
    Cell, with no `unsafe`, passing the tests."""
    (tmp_path / "counter.c").write_text(COUNTER_C)
    (tmp_path / "counter_samples.json").write_text(
        '[{"input": "1 2 3", "output": "12 after 3 calls"}, {"input": "5", "output": "10 after 1 calls"}]')
    program = parse_program(tmp_path / "counter.c", include_dirs=include_dirs)
    suite = load_test_suite(Task("counter", tmp_path / "counter.c", tmp_path / "counter_samples.json",
                                 test_kind="samples", feed="args"))
    source = combine(program, translate_types(program), COUNTER_RUST).source
    model = ScriptedModel({k: list(v) for k, v in COUNTER_ANSWERS.items()})
    run = await idiomatic_by_function(_env(model, services), program, source, suite, IdiomaticBook.load(tmp_path))
    assert [label for label, _ in model.seen] == ["twice", "main"]
    for _, messages in model.seen:
        assert "fn get_g_calls() -> libc::c_int;\nfn set_g_calls(value: libc::c_int);" in messages[1]["content"]
    assert run.verified and run.source is not None, run.reason
    assert first_unsafe_line(run.source) is None
    assert "static g_calls: std::cell::Cell<libc::c_int> = std::cell::Cell::new(0 as libc::c_int);" in run.source


def test_an_answer_is_taken_apart_by_item() -> None:
    """Safe items go to the root, `unsafe`/`extern "C"`/`super::` ones to the module; a written-out
    `mod unidiomatic` is unpacked; items repeating the program's own are dropped; a member left unsafe or a
    missing wrapper is named."""
    unit = Unit("sum", ("function:sum",), ("sum",), (), "", ("sum",), ())
    given = split_items("#[repr(C)]\npub struct Node {\n    pub value: libc::c_int,\n}")
    answer = """#[repr(C)]
pub struct Node {
    pub value: libc::c_int,
}

use std::cell::Cell;

fn sum(node: Option<&Node>) -> i32 { node.map_or(0, |n| n.value + sum(n.next.as_deref())) }

pub mod unidiomatic {
    use super::*;
    pub extern "C" fn sum(n: *const Node) -> libc::c_int { 0 }
}
"""
    safe, transitional, problem = split_answer(unit, answer, given)
    assert problem is None
    assert [(i.kind, i.name) for i in split_items(safe)] == [("use", "std::cell::Cell"), ("fn", "sum")]
    assert [(i.kind, i.name) for i in split_items(transitional)] == [("fn", "sum")]
    _, _, problem = split_answer(unit, SUM_UNSAFE.split("\n", 1)[1].rsplit("----RUST END", 1)[0])
    assert problem == ("`sum` is not safe Rust (`unsafe` on line 2 of it): write it without `unsafe`, raw "
                       "pointers, `static mut` or `super::`, and its wrapper separately")
    _, _, problem = split_answer(unit, "fn sum(n: Option<&Node>) -> i32 { 0 }")
    assert problem is not None and "add a wrapper with exactly that signature that calls `super::sum`" in problem


def test_rust_items_split_at_the_top_level() -> None:
    """extern blocks, statics with struct initializers, impls and macros are one item each."""
    source = """extern "C" {
    fn f(x: i32) -> i32;
    static mut stdin: *mut libc::FILE;
}
pub static KEYS: [Key; 1] = [Key { name: "a", f: Some(f) }];
impl Key { fn new() -> Self { Key { name: "", f: None } } }
thread_local! { static COUNT: std::cell::Cell<i32> = std::cell::Cell::new(0); }
/// doc
#[inline]
pub(crate) unsafe extern "C" fn g(p: *mut i32) -> i32 { *p }
"""
    items = split_items(source)
    assert [(i.kind, i.name) for i in items] == [("extern", ""), ("static", "KEYS"), ("impl", "Key"),
                                                 ("thread_local", "COUNT"), ("fn", "g")]
    assert items[-1].signature() == 'pub(crate) unsafe extern "C" fn g(p: *mut i32) -> i32;'
    assert items[-1].text.startswith("/// doc")
