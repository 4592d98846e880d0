"""Globals and types the deterministic translation leaves (pipeline/global_stage.py), asked of the model one
item at a time inside translate_by_function; and answers repeating what the prompt gave, stripped.

A small program with a bit-field struct and a table global; the model is scripted per item, the toolchain,
gcc's layout probe, the FFI harness and the tests are real."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pipeline.build import Toolchain
from pipeline.c_program import CProgram
from pipeline.c_types import TypeTranslation, translate_types
from pipeline.extract import BEGIN_MARK, END_MARK
from pipeline.function_stage import translate_by_function
from pipeline.items import ItemBook, write_item_files
from pipeline.records import Completion, TestSuite, Usage
from pipeline.rust_source import strip_given, strip_repeated
from pipeline.sandbox import Sandbox
from tests.functions.function_fixtures import function_env, write_task
from tests.functions.test_example_answers import prompt_item

FLAGS_C = r"""
#include <stdio.h>

struct Flags {
    unsigned lo : 4;
    unsigned hi : 4;
    int count;
};

static const char *const NAMES[] = {"zero", "one", "two"};
static struct Flags g_flags;

int main(int argc, char **argv) {
    (void)argv;
    g_flags.count = argc - 1;
    g_flags.lo = 3;
    printf("%s %d %u\n", NAMES[(argc - 1) % 3], g_flags.count, g_flags.lo);
    return 0;
}
"""
SAMPLES = [{"input": "a", "output": "one 1 3"}, {"input": "a b c d", "output": "one 4 3"},
           {"input": "a b", "output": "two 2 3"}]

FLAGS = """
#[repr(C)]
#[derive(Copy, Clone)]
pub struct Flags {
    pub lo_hi: libc::c_uint,
    pub count: libc::c_int,
}
"""
#: Twice too wide for C's 4-byte bit-field unit: count lands at offset 8, not 4.
FLAGS_WRONG = FLAGS.replace("pub lo_hi: libc::c_uint", "pub lo_hi: u64")
NAMES = """
pub static mut NAMES: [*const libc::c_char; 3] = [
    b"zero\\0".as_ptr() as *const libc::c_char,
    b"one\\0".as_ptr() as *const libc::c_char,
    b"two\\0".as_ptr() as *const libc::c_char,
];
"""
#: Compiles alone, but is not the declared type (the C array has three entries).
NAMES_WRONG = """
pub static mut NAMES: [*const libc::c_char; 2] = [b"zero\\0".as_ptr() as *const libc::c_char,
                                                  b"one\\0".as_ptr() as *const libc::c_char];
"""
MAIN = """
#![allow(unused)]
#[repr(C)]
#[derive(Copy, Clone)]
pub struct Flags {
    pub lo_hi: libc::c_uint,
    pub count: libc::c_int,
}
extern "C" {
    static NAMES: [*const libc::c_char; 3];
    static mut g_flags: Flags;
}
fn main() {
    unsafe {
        let argc = std::env::args().count() as libc::c_int;
        g_flags.count = argc - 1;
        g_flags.lo_hi = (g_flags.lo_hi & !0xf) | 3;
        libc::printf(b"%s %d %u\\n\\0".as_ptr() as *const libc::c_char, NAMES[((argc - 1) % 3) as usize],
                     g_flags.count, g_flags.lo_hi & 0xf);
    }
}
"""


@dataclass
class ItemModel:
    """Answers each item (function group, global or type, by the prompt's marker or names) from its script."""

    scripts: dict[str, list[str]]
    seen: list[tuple[str, list[dict[str, str]]]] = field(default_factory=list)

    async def complete(self, messages: Sequence[Mapping[str, str]], *, purpose: str = "") -> Completion:
        _, label = prompt_item(messages[1]["content"])
        self.seen.append((label, [dict(m) for m in messages]))
        script = self.scripts[label]
        code = script.pop(0) if len(script) > 1 else script[0]
        return Completion(f"{BEGIN_MARK}\n{code.strip()}\n{END_MARK}\n", "stop", Usage(300, 80), 0.01, 0.0, 1)


@pytest.fixture
def flags(tmp_path: Path) -> tuple[CProgram, TypeTranslation, TestSuite]:
    program, suite = write_task(tmp_path, "flags", FLAGS_C, SAMPLES)
    return program, translate_types(program), suite


async def test_a_bit_field_type_and_a_table_global_come_from_the_model_and_the_program_combines(
    flags: tuple[CProgram, TypeTranslation, TestSuite], services: tuple[Toolchain, Sandbox], tmp_path: Path
) -> None:
    """The type's first answer has the wrong layout: gcc's probe catches it and the repair prompt says which
    offset differs; the global is asked with the marker line and its declared type; main's answer repeats
    the type and the externs (stripped); combined.rs defines Flags and NAMES once and passes."""
    program, types, suite = flags
    assert set(types.unsupported) == {"struct:Flags", "global:NAMES"}
    model = ItemModel({"Flags": [FLAGS_WRONG, FLAGS], "NAMES": [NAMES], "main": [MAIN]})
    book_dir = tmp_path / "items"
    run = await translate_by_function(function_env(model, services), program, types, suite, ItemBook.load(book_dir))
    assert [label for label, _ in model.seen] == ["Flags", "Flags", "NAMES", "main"]
    first = model.seen[0][1][1]["content"]
    assert "\nGlobal-level item: Flags\n" in first and "unsigned lo : 4;" in first
    names_prompt = model.seen[2][1][1]["content"]
    assert "pub static mut NAMES: [*const libc::c_char; 3];" in names_prompt
    repair = model.seen[1][1][-1]["content"]
    assert "does not have the C layout" in repair and "offset Flags.count: C 4, Rust 8" in repair
    assert [(o.group, o.status) for o in run.outcomes] == [
        (("struct:Flags",), "verified"), (("global:NAMES",), "verified"), (("function:main",), "verified")]
    assert run.verified and run.combined_source is not None
    assert run.combined_source.count("pub struct Flags") == 1
    assert run.combined_source.count("pub static mut NAMES") == 1
    book = ItemBook.load(book_dir)
    assert book.records["global:NAMES"].status == "verified"
    written = write_item_files(tmp_path / "out", program, types, book)
    assert {p.relative_to(tmp_path / "out").as_posix() for p in written} == {
        "structs/Flags.rs", "global_vars/NAMES.rs", "global_vars/g_flags.rs", "functions/main.rs"}
    assert "pub static mut NAMES" in (tmp_path / "out" / "global_vars" / "NAMES.rs").read_text()


async def test_a_global_the_model_gets_wrong_blocks_the_combine_not_the_functions(
    flags: tuple[CProgram, TypeTranslation, TestSuite], services: tuple[Toolchain, Sandbox], tmp_path: Path
) -> None:
    """NAMES with the wrong array length, three times: recorded as failed with the reason, main still
    verified through FFI (C keeps its NAMES there), no combined program; the rerun asks for NAMES only."""
    program, types, suite = flags
    model = ItemModel({"Flags": [FLAGS], "NAMES": [NAMES_WRONG], "main": [MAIN]})
    book_dir = tmp_path / "items"
    run = await translate_by_function(function_env(model, services), program, types, suite, ItemBook.load(book_dir))
    statuses = {o.group[0]: o.status for o in run.outcomes}
    assert statuses == {"struct:Flags": "verified", "global:NAMES": "failed", "function:main": "verified"}
    assert run.combined is None and run.combined_source is None
    info = ItemBook.load(book_dir).failure_info()["global:NAMES"]
    assert info["status"] == "failed" and info["attempts"] == 3
    assert "not verified after 3 attempts" in info["reason"] and "NAMES" in info["reason"]
    repair = [m for label, m in model.seen if label == "NAMES"][1][-1]["content"]
    assert "mismatched types" in repair

    model = ItemModel({"NAMES": [NAMES]})
    rerun = await translate_by_function(function_env(model, services), program, types, suite, ItemBook.load(book_dir))
    assert [label for label, _ in model.seen] == ["NAMES"] and rerun.verified


async def test_a_type_the_model_gets_wrong_blocks_the_functions_that_use_it(
    flags: tuple[CProgram, TypeTranslation, TestSuite], services: tuple[Toolchain, Sandbox], tmp_path: Path
) -> None:
    """Flags with the wrong layout three times: failed with the layout mismatch as reason; main, which uses
    it, is blocked by it and never asked."""
    program, types, suite = flags
    model = ItemModel({"Flags": [FLAGS_WRONG], "NAMES": [NAMES], "main": [MAIN]})
    env = function_env(model, services)
    run = await translate_by_function(env, program, types, suite, ItemBook.load(tmp_path / "b"))
    assert [label for label, _ in model.seen] == ["Flags", "Flags", "Flags", "NAMES"]
    (main,) = [o for o in run.outcomes if o.group == ("function:main",)]
    assert main.status == "blocked" and main.blocked_by == "struct:Flags"
    info = ItemBook.load(tmp_path / "b").failure_info()
    assert "offset Flags.count: C 4, Rust 8" in info["struct:Flags"]["reason"]
    assert info["function:main"]["blocked_by"] == "struct:Flags" and run.combined is None


def test_strip_given_drops_repeated_types_externs_and_inner_attributes() -> None:
    """What the prompt gave, written again by the answer, goes; the answer's own items and helpers stay."""
    answer = """#![allow(dead_code)]
use std::ffi::CStr;

/// The item, again.
#[repr(C)]
#[derive(Copy, Clone)]
pub struct Item { pub name: [libc::c_char; 24], pub next: *mut Item }
pub type cents_t = libc::c_long;
pub const CAT_FOOD: Category = 0;
extern "C" {
    fn tree_find(node: *const TreeNode, name: *const libc::c_char) -> *mut Item;
    static mut g_root: *mut TreeNode;
    fn strlen(s: *const libc::c_char) -> usize;
}
unsafe fn helper(s: &str) -> &str { "} struct Item {" }
#[no_mangle]
pub unsafe extern "C" fn lookup(name: *const libc::c_char) -> *mut Item {
    tree_find(g_root, name)
}
"""
    code, removed = strip_given(answer, {"Item", "cents_t", "CAT_FOOD", "tree_find", "g_root", "report_error"})
    assert removed == ["#![allow(dead_code)]", "struct Item", "type cents_t", "const CAT_FOOD", "extern tree_find",
                       "extern g_root"]
    assert "pub struct Item" not in code and "The item, again" not in code and "#![" not in code
    assert 'extern "C" {\n' in code and "fn strlen" in code and "fn tree_find(node" not in code
    assert 'unsafe fn helper(s: &str) -> &str { "} struct Item {" }' in code
    assert "pub unsafe extern \"C\" fn lookup" in code and "use std::ffi::CStr;" in code


def test_strip_repeated_keeps_the_first_of_shared_declarations() -> None:
    """Across a program's items: a library extern declared twice, and a helper written twice alike, once."""
    seen: dict[str, str] = {}
    first = ('extern "C" {\n    static mut stderr: *mut libc::FILE;\n}\n'
             'fn text(s: &[u8]) -> *const i8 { s.as_ptr() as _ }\n')
    assert strip_repeated(first, seen) == (first, [])
    second = ('extern "C" {\n    static mut stderr: *mut libc::FILE;\n}\n'
              'fn text(s: &[u8]) -> *const i8 {\n    s.as_ptr() as _\n}\nfn other() {}\n')
    code, removed = strip_repeated(second, seen)
    assert removed == ["extern stderr", "fn text"] and code.strip() == "fn other() {}"
    different = "fn text(s: &[u8]) -> *const u8 { s.as_ptr() }\n"
    assert strip_repeated(different, seen) == (different, [])

