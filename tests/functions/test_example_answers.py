"""The bundled multi-function examples translated function by function from canned answers, end to end.

The answers are files in the simulator's layout (issue 12): ``answers/<task>/functions/<label>-<N>.md`` and
``answers/<task>/globals/<name>-<N>.md``, each the whole assistant message for attempt N of that item's
prompt (a later attempt gets the last file). ``answers_repair/`` overlays a wrong-but-compiling first answer
for one function and its correction. The model below serves them by the item named in each prompt; the
toolchain, the FFI harness, gcc and the example's tests are real. One run of inventory.c takes about 65 s
on a quiet 2-core machine (46 FFI builds and test runs, then the combined build; 4 min at load 15),
exprcalc.c about 60 s (2 min at load 15): their timeouts are raised, and they stay part of ``make test``."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pipeline.build import Toolchain
from pipeline.c_program import CProgram
from pipeline.c_types import translate_types
from pipeline.extract import extract_rust
from pipeline.function_stage import translate_by_function
from pipeline.items import ItemBook
from pipeline.records import Completion, TestSuite, Usage
from pipeline.sandbox import Sandbox
from pipeline.testing import load_test_suite
from tests.functions.conftest import FUNCTIONS
from tests.functions.function_fixtures import function_env

HERE = Path(__file__).parent
ANSWERS = HERE / "answers"
REPAIR = HERE / "answers_repair"
_MARKERS = {"functions": "Function-level item: ", "globals": "Global-level item: "}


def prompt_item(prompt: str) -> tuple[str, str]:
    """(folder, label) of the item a first request asks for: its marker line, or (function prompts without
    one) the function names the first sentence gives, joined with '+'."""
    for folder, marker in _MARKERS.items():
        match = re.search(rf"^{re.escape(marker)}(\S+)\s*$", prompt, re.MULTILINE)
        if match:
            return folder, match.group(1)
    match = re.search(r"Translate the C functions? (.+?) of the program", prompt)
    assert match is not None, prompt[:300]
    return "functions", "+".join(re.findall(r"`(\w+)`", match.group(1)))


def answer_file(roots: Sequence[Path], task: str, folder: str, label: str, attempt: int) -> Path:
    """The file answering attempt ``attempt`` for ``label``: from the first root that has any answer for it,
    ``<label>-<attempt>.md``, or its last one when there are fewer."""
    for root in roots:
        found = {}
        for path in (root / task / folder).glob(f"{label}-*.md"):
            number = path.name[len(label) + 1:-3]
            if number.isdigit():
                found[int(number)] = path
        if found:
            return found[max(n for n in found if n <= attempt)] if min(found) <= attempt else found[min(found)]
    raise AssertionError(f"no canned answer for {task}/{folder}/{label}")


@dataclass
class AnswerModel:
    """Serves the canned answers of ``task`` by the item each conversation asks for; records every request."""

    roots: tuple[Path, ...]
    task: str
    seen: list[tuple[str, str, list[dict[str, str]]]] = field(default_factory=list)

    async def complete(self, messages: Sequence[Mapping[str, str]], *, purpose: str = "") -> Completion:
        folder, label = prompt_item(messages[1]["content"])
        attempt = 1 + sum(1 for f, lab, _ in self.seen if (f, lab) == (folder, label))
        self.seen.append((folder, label, [dict(m) for m in messages]))
        text = answer_file(self.roots, self.task, folder, label, attempt).read_text()
        return Completion(text, "stop", Usage(len(messages[-1]["content"]) // 3, len(text) // 3), 0.01, 0.0, 1)

    def asked(self, folder: str) -> list[str]:
        return [label for f, label, _ in self.seen if f == folder]


def _suite(program: CProgram) -> TestSuite:
    from pipeline.task import Task

    name = program.path.stem
    return load_test_suite(Task(name, program.path, FUNCTIONS / f"{name}_samples.json", test_kind="samples",
                                feed="stdin" if name == "inventory" else "args"))


def test_every_item_of_both_examples_has_a_canned_answer(inventory: CProgram, exprcalc: CProgram) -> None:
    """One answer file per function group (label as the prompt names it) and per model-translated global;
    each holds Rust between the extract marks."""
    for program in (inventory, exprcalc):
        task = program.path.stem
        if not (ANSWERS / task).is_dir():
            continue
        translation = translate_types(program)
        labels = {"+".join(k.split(":", 1)[1] for k in g) for g in program.function_groups()}
        globals_ = {key.split(":", 1)[1] for key in translation.unsupported if key.startswith("global:")}
        for folder, wanted in (("functions", labels), ("globals", globals_)):
            files = {p.name.rsplit("-", 1)[0] for p in (ANSWERS / task / folder).glob("*.md")}
            assert files == wanted, (task, folder, files ^ wanted)
            for path in (ANSWERS / task / folder).glob("*.md"):
                assert extract_rust(path.read_text()).code, path


@pytest.mark.timeout(600)  # about 65 s: 46 FFI builds and test runs
async def test_inventory_translated_function_by_function_to_verified_pure_rust(
    inventory: CProgram, services: tuple[Toolchain, Sandbox], tmp_path: Path
) -> None:
    """inventory.c: the two table globals from global prompts, every one of its 43 groups FFI-verified (the
    parser's recursion group in one prompt; an answer repeating given types and extern declarations is
    stripped before building), a wrong-but-compiling unit_price caught by the tests and repaired by a prompt
    naming it, then the combined program passes every test as pure Rust. A rerun asks for nothing."""
    translation = translate_types(inventory)
    suite = _suite(inventory)
    model = AnswerModel((REPAIR, ANSWERS), "inventory")
    book_dir = tmp_path / "items"
    env = function_env(model, services)
    run = await translate_by_function(env, inventory, translation, suite, ItemBook.load(book_dir))

    assert model.asked("globals") == ["CATEGORY_NAMES", "SORT_KEYS"]
    global_prompt = next(m for f, lab, m in model.seen if lab == "SORT_KEYS")[1]["content"]
    assert "pub static mut SORT_KEYS: [SortKey; 4];" in global_prompt
    assert "fn cmp_name(a: *const libc::c_void, b: *const libc::c_void) -> libc::c_int;" in global_prompt
    groups = ["+".join(k.split(":", 1)[1] for k in g) for g in inventory.function_groups()]
    assert "parse_atom+parse_product+parse_sum" in groups
    assert model.asked("functions") == [*groups[:groups.index("unit_price") + 1], "unit_price",
                                        *groups[groups.index("unit_price") + 1:]]
    repair = [m for f, lab, m in model.seen if lab == "unit_price"][1][-1]["content"]
    assert "With the Rust translation of `unit_price` linked into the C program, tests fail" in repair

    failing = [(o.group, o.attempts) for o in run.outcomes if o.status != "verified"]
    assert failing == [], failing
    (unit,) = [o for o in run.outcomes if o.group == ("function:unit_price",)]
    assert [stage for stage, _ in unit.attempts] == ["tests", "passed"]
    (lookup,) = [o for o in run.outcomes if o.group == ("function:lookup",)]
    assert lookup.rust is not None and "pub struct Item" not in lookup.rust
    assert 'extern "C" {' not in lookup.rust and "#![allow" not in lookup.rust
    assert run.combined is not None and run.combined.passed, run.combined and run.combined.feedback
    assert run.combined_source is not None
    for item in inventory.of_kind("function"):
        assert len(re.findall(rf"\bfn {item.name}\(", run.combined_source)) == 1, item.name
    assert run.combined_source.count("pub struct SortKey") == 1
    records = ItemBook.load(book_dir).records
    assert records["global:SORT_KEYS"].status == "verified"

    rerun_model = AnswerModel((ANSWERS,), "inventory")
    rerun = await translate_by_function(function_env(rerun_model, services), inventory, translation, suite,
                                        ItemBook.load(book_dir))
    assert rerun_model.seen == [] and rerun.verified


@pytest.mark.timeout(600)  # about 60 s: 34 FFI builds and test runs
async def test_exprcalc_translated_function_by_function_to_verified_pure_rust(
    exprcalc: CProgram, services: tuple[Toolchain, Sandbox], tmp_path: Path
) -> None:
    """exprcalc.c: BUILTINS from a global prompt, its 33 groups FFI-verified first time (the six-function
    parser group and is_even+is_odd in one prompt each), and the combined program passes every test as
    pure Rust, although two answers both declare C's `stderr` (the program keeps one)."""
    translation = translate_types(exprcalc)
    model = AnswerModel((ANSWERS,), "exprcalc")
    run = await translate_by_function(function_env(model, services), exprcalc, translation, _suite(exprcalc),
                                      ItemBook.load(tmp_path / "items"))
    groups = ["+".join(k.split(":", 1)[1] for k in g) for g in exprcalc.function_groups()]
    assert "parse_call+parse_primary+parse_power+parse_unary+parse_term+parse_expr" in groups
    assert model.asked("globals") == ["BUILTINS"] and model.asked("functions") == groups
    assert [o.status for o in run.outcomes] == ["verified"] * (len(groups) + 1)
    assert run.combined is not None and run.combined.passed, run.combined.feedback
    assert run.combined_source is not None and run.combined_source.count("static mut stderr") == 1
