"""The C program model (pipeline/c_program.py) on the multi-function examples: items, uses, order, groups."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.c_program import CProgram, load_program, parse_program
from pipeline.errors import TaskInputError
from tests.functions.conftest import FUNCTIONS


def _names(program: CProgram, kind: str) -> set[str]:
    return {item.name for item in program.items if item.kind == kind}


def test_every_kind_of_item_is_listed(inventory: CProgram) -> None:
    """Functions, structs, the union, enums, typedefs, globals and macros are all items with their text."""
    assert {"main", "tree_insert", "parse_sum", "cmp_value"} <= _names(inventory, "function")
    assert {"Item", "TreeNode", "Price", "Dims", "Value", "SortKey", "Cursor"} <= _names(inventory, "struct")
    assert _names(inventory, "union") == {"ValueData"}
    assert _names(inventory, "enum") == {"Category", "ValueKind"}
    assert {"cents_t", "item_cmp", "Item", "Category"} <= _names(inventory, "typedef")
    assert _names(inventory, "global") == {"g_head", "g_tail", "g_root", "g_count", "g_errors", "CATEGORY_NAMES",
                                          "SORT_KEYS"}
    assert {"MAX_NAME", "CLAMP", "ARRAY_LEN"} <= _names(inventory, "macro")
    assert inventory["macro:CLAMP"].function_like and not inventory["macro:MAX_NAME"].function_like
    cmp_name = inventory["function:cmp_name"]
    assert cmp_name.text.startswith("static int cmp_name(const void *a, const void *b) {")
    assert cmp_name.text.endswith("}") and cmp_name.is_static
    assert inventory["typedef:Item"].text.startswith("typedef struct Item {")
    assert inventory["typedef:Item"].text.endswith("} Item;")
    assert inventory["global:g_errors"].text == "int g_errors = 0;" and not inventory["global:g_errors"].is_static
    assert inventory["macro:MAX_NAME"].text == "#define MAX_NAME 24"
    for item in inventory.items:  # spans point into the source the model holds
        assert inventory.source[item.span.start:item.span.end].decode() in item.text


@pytest.mark.parametrize(
    ("program", "key", "uses"),
    [
        pytest.param("inventory", "function:cmd_discount",
                     {"function:lookup", "macro:CLAMP", "macro:MAX_DISCOUNT", "struct:Item", "struct:Price",
                      "typedef:Item"}, id="function-uses-macros-and-nested-struct-fields"),
        pytest.param("inventory", "global:SORT_KEYS",
                     {"function:cmp_name", "function:cmp_value", "function:cmp_quantity", "function:cmp_volume",
                      "typedef:SortKey"}, id="global-table-of-function-pointers"),
        pytest.param("inventory", "struct:Item",
                     {"macro:MAX_NAME", "typedef:Category", "typedef:Dims", "typedef:Price"}, id="nested-struct"),
        pytest.param("exprcalc", "macro:BUILTIN_COUNT", {"global:BUILTINS"}, id="macro-naming-a-global"),
        pytest.param("exprcalc", "function:find_builtin",
                     {"global:BUILTINS", "macro:BUILTIN_COUNT", "struct:Builtin"}, id="function-uses-macro"),
        pytest.param("exprcalc", "function:is_odd", {"function:is_even", "typedef:number_t"}, id="mutual"),
        pytest.param("exprcalc", "function:print_sorted_results",
                     {"function:cmp_numbers", "global:g_result_count", "global:g_results", "typedef:number_t"},
                     id="qsort-comparator-is-a-use"),
    ],
)
def test_what_each_item_uses(program: str, key: str, uses: set[str], request: pytest.FixtureRequest) -> None:
    """Each item's uses are exactly the program's items it refers to (calls, fields, types, macros, globals)."""
    model: CProgram = request.getfixturevalue(program)
    assert set(model[key].uses) == uses


def test_library_names_are_external_not_items(inventory: CProgram) -> None:
    """printf, qsort and friends are what a function takes from outside the program, not items."""
    print_sorted = inventory["function:print_sorted"]
    assert {"qsort", "malloc", "free", "printf"} <= print_sorted.external
    assert not any(use.endswith(":qsort") for use in print_sorted.uses)


def test_recursion_groups(inventory: CProgram, exprcalc: CProgram) -> None:
    """Mutually recursive functions form one group; self-recursive ones are flagged and stay alone."""
    assert inventory.recursive_groups() == (
        ("function:parse_atom", "function:parse_product", "function:parse_sum"),
    )
    assert exprcalc.recursive_groups() == (
        ("function:is_even", "function:is_odd"),
        ("function:parse_call", "function:parse_primary", "function:parse_power", "function:parse_unary",
         "function:parse_term", "function:parse_expr"),
    )
    recursive = {item.name for item in inventory.of_kind("function") if item.recursive}
    assert recursive == {"tree_insert", "tree_find", "tree_remove", "tree_height", "tree_print", "tree_free"}
    assert inventory["struct:Item"].recursive and inventory["struct:TreeNode"].recursive  # linked structs
    assert exprcalc["function:parse_unary"].recursive and exprcalc["function:eval"].recursive


@pytest.mark.parametrize("program", ["inventory", "exprcalc"])
def test_order_is_bottom_up_and_complete(program: str, request: pytest.FixtureRequest) -> None:
    """Every item appears once, after everything it uses (unless both are in one group); main comes last."""
    model: CProgram = request.getfixturevalue(program)
    groups = model.groups()
    flat = [key for group in groups for key in group]
    assert sorted(flat) == sorted(item.key for item in model.items)
    position = {key: i for i, group in enumerate(groups) for key in group}
    for item in model.items:
        for used in item.uses:
            assert position[used] <= position[item.key], (item.key, used)
            if position[used] == position[item.key]:
                assert item.key in model.closure(used)  # same group only when they reach each other
    assert model.function_groups()[-1] == ("function:main",)


def test_order_of_the_inventory_functions(inventory: CProgram) -> None:
    """The function order: callees first, ties in source order, the recursion group in one step."""
    order = [group[0].split(":")[1] if len(group) == 1 else "+".join(k.split(":")[1] for k in group)
             for group in inventory.function_groups()]
    assert order[:8] == ["report_error", "category_name", "parse_category", "valid_name", "skip_spaces",
                         "parse_atom+parse_product+parse_sum", "parse_quantity", "parse_money"]
    assert order.index("cmp_name") < order.index("cmp_value") < order.index("find_sort")
    assert order.index("lookup") < order.index("cmd_remove") < order.index("run_command") < order.index("main")


def test_prototypes_are_recorded_as_declarations(inventory: CProgram, exprcalc: CProgram) -> None:
    """A function declared ahead of its definition lists the prototype's range (the FFI harness edits it)."""
    (proto,) = inventory["function:parse_sum"].declarations
    assert inventory.source[proto.start:proto.end] == b"static long parse_sum(Cursor *cur);"
    assert len(exprcalc["function:parse_expr"].declarations) == 1
    assert inventory["function:parse_atom"].declarations == ()


def test_parsing_is_deterministic(include_dirs: tuple[str, ...], inventory: CProgram) -> None:
    """The same text gives the same items and the same order."""
    again = parse_program(FUNCTIONS / "inventory.c", include_dirs=include_dirs)
    assert again.items == inventory.items and again.groups() == inventory.groups()


def test_local_includes_are_inlined(tmp_path: Path, include_dirs: tuple[str, ...]) -> None:
    """Items from a local header are items of the program, with text in the one inlined source."""
    (tmp_path / "shapes.h").write_text('#include "units.h"\ntypedef struct { unit_t w, h; } Box;\n'
                                       "static unit_t area(Box b) { return b.w * b.h; }\n")
    (tmp_path / "units.h").write_text("typedef long unit_t;\n#define SCALE 3\n")
    (tmp_path / "main.c").write_text('#include <stdio.h>\n#include "shapes.h"\n#include "units.h"\n'
                                     'int main(void) { Box b = {2, SCALE}; printf("%ld\\n", area(b)); return 0; }\n')
    model = parse_program(tmp_path / "main.c", include_dirs=include_dirs)
    assert {"function:area", "function:main", "typedef:Box", "typedef:unit_t", "macro:SCALE"} <= {
        item.key for item in model.items}
    assert model["function:main"].uses >= {"function:area", "typedef:Box", "macro:SCALE"}
    assert b"#include \"shapes.h\"" not in model.source and model.source.count(b"typedef long unit_t;") == 1
    assert model.function_groups() == (("function:area",), ("function:main",))


def test_a_program_that_does_not_parse_is_a_task_input_error(tmp_path: Path) -> None:
    """A C error is reported with the file and line, as the task's own problem."""
    (tmp_path / "bad.c").write_text("int main(void) {\n  return undefined_name;\n}\n")
    with pytest.raises(TaskInputError, match=r"bad\.c:2:10: use of undeclared identifier 'undefined_name'"):
        parse_program(tmp_path / "bad.c")


async def test_load_program_parses_off_the_event_loop() -> None:
    """The async entry finds the compiler's headers itself (limits.h) and returns the same model."""
    model = await load_program(FUNCTIONS / "exprcalc.c")
    assert model.recursive_groups()[0] == ("function:is_even", "function:is_odd")
