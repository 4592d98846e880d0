"""What a function-level prompt shows (pipeline/function_context.py), and the auto granularity decision."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.c_program import CProgram, parse_program
from pipeline.c_types import TypeTranslation, translate_types
from pipeline.function_context import choose_granularity, function_context
from tests.conftest import ROOT
from tests.functions.conftest import FUNCTIONS


@pytest.fixture(scope="module", params=["inventory", "exprcalc"])
def model(request: pytest.FixtureRequest) -> tuple[CProgram, TypeTranslation]:
    program: CProgram = request.getfixturevalue(request.param)
    return program, translate_types(program)


def test_each_context_holds_only_its_own_function_bodies(model: tuple[CProgram, TypeTranslation]) -> None:
    """For every function group, the rendered context has the group's C definitions and no other body."""
    program, types = model
    functions = program.of_kind("function")
    for group in program.function_groups():
        text = function_context(program, types, group).render()
        for item in functions:
            body = item.text[len(item.signature):]
            assert (body in text) == (item.key in group), (group, item.key)


def test_context_of_one_function(inventory: CProgram) -> None:
    """cmd_discount: its macros (CLAMP, MAX_DISCOUNT), Item and the types inside it in Rust, lookup's signature."""
    program = inventory
    context = function_context(program, translate_types(program), ["function:cmd_discount"])
    assert context.macros.splitlines() == [
        "#define MAX_DISCOUNT 90", "#define CLAMP(x, lo, hi) ((x) < (lo) ? (lo) : ((x) > (hi) ? (hi) : (x)))"]
    for name in ("pub struct Item {", "pub struct Price {", "pub struct Dims {", "pub type Category = ",
                 "pub type cents_t = "):
        assert name in context.rust_types, name
    assert "TreeNode" not in context.rust_types and "ValueData" not in context.rust_types
    assert context.callee_signatures == (
        "fn lookup(args: *mut *mut libc::c_char, nargs: libc::c_int, wanted: libc::c_int) -> *mut Item;")
    assert context.rust_globals == "" and context.c_types == {}
    assert context.c_definitions.startswith("static void cmd_discount(char **args, int nargs) {")


def test_globals_and_types_reached_through_signatures(exprcalc: CProgram) -> None:
    """A global's declaration and the types a callee's signature names are shown; a recursion group is one."""
    program = exprcalc
    types = translate_types(program)
    node_new = function_context(program, types, ["function:node_new"])
    assert node_new.rust_globals == "static mut g_nodes_alive: libc::c_int;"
    parser = function_context(program, types, program.recursive_groups()[1])
    assert parser.c_definitions.count("static Node *parse_") == 6
    assert "fn lex_next(lx: *mut Lexer);" in parser.callee_signatures
    assert "pub struct Lexer {" in parser.rust_types and "pub union Token_as {" in parser.rust_types
    assert "fn parse_expr" not in parser.callee_signatures  # inside the group, not a callee


def test_types_without_rust_are_shown_in_c(tmp_path: Path, include_dirs: tuple[str, ...]) -> None:
    """A bit-field struct c_types cannot write appears as C, for the model to define."""
    (tmp_path / "bits.c").write_text(
        "struct flags { unsigned ready : 1; unsigned count : 7; };\n"
        "static int ready(struct flags f) { return f.ready; }\n"
        "int main(void) { struct flags f = {1, 3}; return ready(f) - 1; }\n")
    program = parse_program(tmp_path / "bits.c", include_dirs=include_dirs)
    context = function_context(program, translate_types(program), ["function:ready"])
    assert context.c_types == {"struct:flags": "struct flags { unsigned ready : 1; unsigned count : 7; };"}
    assert "have no Rust definition yet" in context.render()


def test_function_contexts_are_a_fraction_of_the_whole_program(model: tuple[CProgram, TypeTranslation]) -> None:
    """Measured: the largest function-level context is well under the whole-file prompt of the same program."""
    program, types = model
    whole = choose_granularity("auto", program.source.decode(), max_model_len=None).program_tokens
    largest = max(function_context(program, types, group).tokens() for group in program.function_groups())
    assert largest * 2 < whole, (largest, whole)


@pytest.mark.parametrize(
    ("setting", "files", "max_model_len", "expected"),
    [
        pytest.param("auto", sorted((ROOT / "examples" / "corpus").glob("*.c")), 4096, "file",
                     id="bundled-examples-stay-whole"),
        pytest.param("auto", sorted(FUNCTIONS.glob("*.c")), 4096, "function", id="large-programs-split"),
        pytest.param("auto", sorted(FUNCTIONS.glob("*.c")), 32768, "file", id="large-context-keeps-whole"),
        pytest.param("auto", sorted(FUNCTIONS.glob("*.c")), None, "file", id="unknown-context-keeps-whole"),
        pytest.param("function", sorted((ROOT / "examples" / "corpus").glob("*.c")), None, "function",
                     id="explicit-function"),
        pytest.param("file", sorted(FUNCTIONS.glob("*.c")), 4096, "file", id="explicit-file"),
    ],
)
def test_granularity_choice(setting: str, files: list[Path], max_model_len: int | None, expected: str) -> None:
    """auto splits a program only when it and its answer do not fit the context with room to spare."""
    assert files
    for path in files:
        choice = choose_granularity(setting, path.read_text(), max_model_len=max_model_len)  # type: ignore[arg-type]
        assert choice.granularity == expected, (path.name, choice)
