"""C type definitions to #[repr(C)] Rust (pipeline/c_types.py), checked against gcc's layouts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pipeline.build import Toolchain
from pipeline.c_program import CProgram, parse_program
from pipeline.c_types import TypeTranslation, rust_ident, translate_types, verify_layouts
from tests.functions.conftest import FUNCTIONS

#: Corners the examples do not reach: tags that differ from typedefs, const pointers, void and variadic
#: function pointers, a named struct defined inside another, arrays of records, library typedefs, bool,
#: floating point, a flexible array member, an enum with explicit values, and a bit-field (left to the model).
CORNERS_C = r"""
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef struct point_s { double x, y; } point_t, *point_ref;
typedef enum color_e { RED = -1, GREEN = 7, BLUE } color_t;
typedef void (*visit_fn)(const point_t *, void *);
typedef int (*log_fn)(const char *, ...);
typedef int handler_t(int);

struct outer {
    struct inner { uint8_t tag; int64_t value; } first;
    struct inner rest[3];
    union { float f; uint32_t bits; } word;
    struct { char code[3]; bool ok; } pairs[2];
    const char *const *names;
    FILE *log;
    size_t count;
    unsigned char bytes[5];
    long double *wide;
    visit_fn visit;
    handler_t *handler;
    color_t color;
    unsigned short flex[];
};

struct flags { unsigned ready : 1; unsigned count : 7; };

struct outer *global_outer;

int main(void) { printf("%zu\n", sizeof(struct outer)); return 0; }
"""


def _program(name: str, include_dirs: tuple[str, ...]) -> CProgram:
    return parse_program(FUNCTIONS / f"{name}.c", include_dirs=include_dirs)


@pytest.fixture(scope="module")
def corners(tmp_path_factory: pytest.TempPathFactory, include_dirs: tuple[str, ...]) -> CProgram:
    path = tmp_path_factory.mktemp("corners") / "corners.c"
    path.write_text(CORNERS_C)
    return parse_program(path, include_dirs=include_dirs)




def test_structs_unions_enums_and_typedefs_become_repr_c_rust(include_dirs: tuple[str, ...]) -> None:
    """Nested and linked structs, the union, enums and typedefs of inventory.c, written as c2rust would."""
    types = translate_types(_program("inventory", include_dirs))
    assert [key for key in types.unsupported if not key.startswith("global:")] == []
    assert types.code_for("struct:Item") == (
        "#[repr(C)]\n#[derive(Copy, Clone)]\npub struct Item {\n"
        "    pub name: [libc::c_char; 24],\n    pub category: Category,\n    pub quantity: libc::c_int,\n"
        "    pub price: Price,\n    pub dims: Dims,\n    pub next: *mut Item,\n}"
    )
    assert types.code_for("typedef:Item") == types.code_for("struct:Item")  # typedef struct Item {...} Item
    assert "pub union ValueData {" in types.code_for("union:ValueData")
    assert types.code_for("enum:Category").splitlines()[:2] == [
        "pub type Category = libc::c_uint;", "pub const CAT_FOOD: Category = 0;"]
    assert types.code_for("typedef:cents_t") == "pub type cents_t = libc::c_long;"
    assert types.code_for("typedef:item_cmp") == (
        'pub type item_cmp = Option<unsafe extern "C" fn(*const libc::c_void, *const libc::c_void) -> libc::c_int>;'
    )
    assert "    pub label: *const libc::c_char," in types.code_for("struct:Value")


def test_records_inside_records_get_owner_field_names(include_dirs: tuple[str, ...]) -> None:
    """exprcalc's Node: the union member `as` and the structs inside it become Node_as, Node_as_binary, ..."""
    types = translate_types(_program("exprcalc", include_dirs))
    node = types.code_for("struct:Node")
    assert node.index("pub struct Node_as_binary {") < node.index("pub union Node_as {") < node.index(
        "pub struct Node {")
    assert "    pub r#as: Node_as," in node and "    pub args: [*mut Node; 6]," in node
    assert "    pub r#fn: builtin_fn," in types.code_for("struct:Builtin")


def test_corner_cases_and_what_is_left_to_the_model(corners: CProgram) -> None:
    """Tags unlike their typedefs, const pointers, variadic callbacks, library typedefs; bit-fields refused."""
    types = translate_types(corners)
    assert types.unsupported == {
        "struct:flags": "flags.ready is a bit-field",
        "struct:outer": "the C type long double (longdouble) has no Rust translation here",
    }
    assert types.code_for("typedef:point_t") == "pub type point_t = point_s;"
    assert types.code_for("typedef:point_ref") == "pub type point_ref = *mut point_s;"
    assert types.code_for("typedef:color_t") == "pub type color_t = color_e;"
    assert "pub const RED: color_e = -1;" in types.code_for("enum:color_e")
    assert types.code_for("typedef:log_fn") == (
        'pub type log_fn = Option<unsafe extern "C" fn(*const libc::c_char, ...) -> libc::c_int>;')
    assert types.code_for("typedef:visit_fn") == (
        'pub type visit_fn = Option<unsafe extern "C" fn(*const point_t, *mut libc::c_void)>;')
    assert types.code_for("typedef:handler_t") == (
        'pub type handler_t = unsafe extern "C" fn(libc::c_int) -> libc::c_int;')


async def test_corner_layouts_agree_once_long_double_is_gone(
    tmp_path: Path, include_dirs: tuple[str, ...], toolchain: Toolchain
) -> None:
    """Without the long double member, every corner type translates and gcc and rustc agree on its layout."""
    path = tmp_path / "corners.c"
    path.write_text(CORNERS_C.replace("    long double *wide;\n", ""))
    program = parse_program(path, include_dirs=include_dirs)
    types = translate_types(program)
    assert set(types.unsupported) == {"struct:flags"}
    code = types.code_for("struct:outer")
    for line in ("pub struct inner {", "    pub rest: [inner; 3],", "pub union outer_word {",
                 "    pub pairs: [outer_pairs; 2],", "    pub names: *const *const libc::c_char,",
                 "    pub log: *mut libc::FILE,", "    pub count: libc::size_t,", "    pub tag: u8,",
                 "    pub ok: bool,", "    pub handler: Option<unsafe extern \"C\" fn(libc::c_int) -> libc::c_int>,",
                 "    pub flex: [libc::c_ushort; 0],"):
        assert line in code, line
    report = await verify_layouts(program, types, toolchain, tmp_path / "work")
    assert report.ok, report
    assert report.checked >= 40


@pytest.mark.parametrize("name", ["inventory", "exprcalc"])
async def test_layouts_agree_with_gcc(name: str, include_dirs: tuple[str, ...], toolchain: Toolchain) -> None:
    """Every size, alignment and field offset rustc gives the translations is the one gcc gives the C types."""
    program = _program(name, include_dirs)
    report = await verify_layouts(program, translate_types(program), toolchain)
    assert report.ok, report
    assert report.checked >= 45


async def test_a_wrong_translation_is_caught_with_the_field_named(
    include_dirs: tuple[str, ...], toolchain: Toolchain, tmp_path: Path
) -> None:
    """A field given the wrong width shows up as size and offset mismatches naming the type and field."""
    program = _program("inventory", include_dirs)
    types = translate_types(program)
    wrong = TypeTranslation(tuple(
        dataclasses.replace(t, code=t.code.replace("pub quantity: libc::c_int", "pub quantity: libc::c_long"))
        for t in types.types
    ))
    report = await verify_layouts(program, wrong, toolchain, tmp_path)
    assert not report.ok
    assert "offset Item.price: C 32, Rust 40" in report.mismatches
    assert any(m.startswith("size Item: ") for m in report.mismatches)


async def test_a_probe_that_does_not_build_is_reported(include_dirs: tuple[str, ...], toolchain: Toolchain) -> None:
    """Rust that does not compile is an error in the report, not an exception."""
    program = _program("inventory", include_dirs)
    types = translate_types(program)
    broken = TypeTranslation(tuple(dataclasses.replace(t, code=t.code.replace("libc::c_int", "c_int_typo"))
                                   for t in types.types))
    report = await verify_layouts(program, broken, toolchain)
    assert not report.ok and report.error is not None
    assert report.error.startswith("the Rust layout probe does not build") and "c_int_typo" in report.error


def test_extern_declarations_and_simple_global_definitions(include_dirs: tuple[str, ...]) -> None:
    """Functions and globals get extern "C" declarations; globals with no or literal initializers get Rust
    definitions; table initializers are left to the model, with the reason."""
    types = translate_types(_program("inventory", include_dirs))
    assert types.signatures["function:item_value"] == "fn item_value(item: *const Item) -> cents_t"
    assert types.globals["global:CATEGORY_NAMES"] == "static CATEGORY_NAMES: [*const libc::c_char; 5]"
    assert types.global_definitions == {
        "global:g_head": "pub static mut g_head: *mut Item = std::ptr::null_mut();",
        "global:g_tail": "pub static mut g_tail: *mut Item = std::ptr::null_mut();",
        "global:g_root": "pub static mut g_root: *mut TreeNode = std::ptr::null_mut();",
        "global:g_count": "pub static mut g_count: libc::c_int = 0 as libc::c_int;",
        "global:g_errors": "pub static mut g_errors: libc::c_int = 0 as libc::c_int;",
    }
    assert types.unsupported == {
        "global:CATEGORY_NAMES": "the initializer of CATEGORY_NAMES is not a plain literal",
        "global:SORT_KEYS": "the initializer of SORT_KEYS is not a plain literal",
    }
    calc = translate_types(_program("exprcalc", include_dirs))
    assert calc.global_definitions["global:g_results"] == (
        "pub static mut g_results: [number_t; 32] = unsafe { std::mem::zeroed() };")


def test_rust_keywords_become_raw_identifiers() -> None:
    """Field names that are Rust keywords stay usable: raw where Rust allows it, else with a trailing _."""
    assert [rust_ident(n) for n in ("as", "fn", "type", "self", "value")] == ["r#as", "r#fn", "r#type", "self_",
                                                                              "value"]
