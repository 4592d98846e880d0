"""Per-item bookkeeping (pipeline/items.py): resume digests, blocking by failed dependencies, the result layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.c_program import CProgram, parse_program
from pipeline.c_types import translate_types
from pipeline.errors import TaskInputError
from pipeline.items import BOOK, ItemBook, blocked_items, item_digests, write_item_files
from tests.functions.conftest import FUNCTIONS


def test_a_change_redoes_the_item_and_its_users_only(tmp_path: Path, include_dirs: tuple[str, ...],
                                                     inventory: CProgram) -> None:
    """Editing item_value changes its digest and its callers' (print_item, cmp_value, ...), not parse_money's."""
    before = item_digests(inventory)
    edited = (FUNCTIONS / "inventory.c").read_text().replace(
        "return unit_price(&item->price) * item->quantity;", "return item->quantity * unit_price(&item->price);")
    (tmp_path / "inventory.c").write_text(edited)
    after = item_digests(parse_program(tmp_path / "inventory.c", include_dirs=include_dirs))
    changed = {key for key in before if before[key] != after[key]}
    assert {"function:item_value", "function:print_item", "function:cmp_value", "function:collect_stats",
            "function:main"} <= changed
    assert not changed & {"function:parse_money", "function:unit_price", "struct:Item", "function:cmp_name",
                          "function:tree_insert"}
    assert item_digests(inventory) == before  # deterministic
    assert item_digests(inventory, salt="other model")["function:parse_money"] != before["function:parse_money"]
    group = inventory.recursive_groups()[0]
    assert len({before[key] for key in group}) == 1


def test_a_failed_function_blocks_its_callers_not_unrelated_ones(inventory: CProgram) -> None:
    """A failed cmp_name blocks the comparators, the sort table's users and up to main; the tree functions go on."""
    blocked = blocked_items(inventory, ["function:cmp_name"])
    assert blocked["function:cmp_value"] == "function:cmp_name"
    assert blocked["function:find_sort"] == "function:cmp_name"  # through the SORT_KEYS table
    assert blocked["function:run_command"] == "function:cmp_name"
    assert blocked["function:main"] == "function:cmp_name"
    assert "function:cmp_name" not in blocked
    assert not {"function:tree_insert", "function:parse_money", "function:item_value"} & set(blocked)
    both = blocked_items(inventory, ["function:cmp_name", "function:skip_spaces"])
    assert both["function:parse_sum"] == "function:skip_spaces"  # the whole recursion group
    assert both["function:cmd_add"] == "function:skip_spaces"  # first in source order of its blockers


def test_the_book_survives_a_restart_and_forgets_changed_items(tmp_path: Path, inventory: CProgram) -> None:
    """Recorded verified items come back after a reload; a changed digest makes the record stale."""
    digests = item_digests(inventory)
    book = ItemBook.load(tmp_path)
    assert book.records == {}
    book.record(["function:cmp_name"], "verified", digests, attempts=1, rust="fn cmp_name() {}")
    book.record(["function:cmp_value"], "failed", digests, attempts=3, reason="test 1 failed")
    book.record(["function:find_sort"], "blocked_by_failed_dependency", digests, blocked_by="function:cmp_value")
    again = ItemBook.load(tmp_path)
    assert again.verified_rust(["function:cmp_name"], digests) == "fn cmp_name() {}"
    assert again.verified_rust(["function:cmp_value"], digests) is None
    assert again.counts() == {"verified": 1, "failed": 1, "blocked_by_failed_dependency": 1}
    assert again.failure_info()["function:find_sort"] == {
        "status": "blocked_by_failed_dependency", "attempts": 0, "reason": "", "blocked_by": "function:cmp_value"}
    changed = {**digests, "function:cmp_name": "something else"}
    assert again.verified_rust(["function:cmp_name"], changed) is None
    assert again.forget_stale(changed) == ["function:cmp_name"]
    assert "function:cmp_name" not in ItemBook.load(tmp_path).records


def test_a_damaged_book_is_a_task_input_error_naming_the_file(tmp_path: Path) -> None:
    """A book that is not JSON, or of another version, is reported with its path and the fix."""
    (tmp_path / BOOK).write_text("{not json")
    with pytest.raises(TaskInputError, match=r"items\.json: cannot read the item records .* delete the file"):
        ItemBook.load(tmp_path)
    (tmp_path / BOOK).write_text(json.dumps({"version": 99, "items": []}))
    with pytest.raises(TaskInputError, match="not an item book of version 1"):
        ItemBook.load(tmp_path)


def test_sactor_result_layout(tmp_path: Path, inventory: CProgram) -> None:
    """One file per item in functions/, structs/, enums/, global_vars/; only verified functions."""
    types = translate_types(inventory)
    digests = item_digests(inventory)
    book = ItemBook.load(tmp_path)
    book.record(["function:cmp_name"], "verified", digests, rust="pub unsafe extern \"C\" fn cmp_name() {}")
    book.record(inventory.recursive_groups()[0], "verified", digests, rust="// the parser group")
    book.record(["function:cmp_value"], "failed", digests)
    stage = tmp_path / "translated_code_unidiomatic"
    written = write_item_files(stage, inventory, types, book)
    names = sorted(str(p.relative_to(stage)) for p in written)
    assert "functions/cmp_name.rs" in names and "functions/parse_sum.rs" in names
    assert "functions/cmp_value.rs" not in names
    assert {"structs/Item.rs", "structs/ValueData.rs", "structs/cents_t.rs", "enums/Category.rs",
            "global_vars/g_head.rs"} <= set(names)
    assert "global_vars/SORT_KEYS.rs" not in names  # its initializer is left to the model
    assert names.count("structs/Item.rs") == 1  # the typedef of the same name shares the struct's file
    assert (stage / "structs" / "Item.rs").read_text().startswith("#[repr(C)]\n#[derive(Copy, Clone)]\npub struct Item")
