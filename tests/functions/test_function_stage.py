"""The function-level stage (pipeline/function_stage.py): one prompt per function group, FFI-verified and
repaired, blocked by failed dependencies, resumed from the item book, then combined into pure Rust.

The model is a scripted stand-in for the Model interface (as in test_stage_loop.py); the toolchain, the sandbox,
gcc and the tests are real."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pipeline.build import Toolchain
from pipeline.c_program import CProgram
from pipeline.c_types import TypeTranslation, translate_types
from pipeline.extract import BEGIN_MARK, END_MARK
from pipeline.function_stage import FunctionEnv, translate_by_function
from pipeline.items import ItemBook
from pipeline.records import Completion, TestSuite, Usage
from pipeline.sandbox import Sandbox
from tests.functions.function_fixtures import EVEN_ODD, MAIN, PUSH, SUM, SUM_WRONG, function_env, numbers_task

ANSWERS = {"push": [PUSH], "sum": [SUM], "is_even+is_odd": [EVEN_ODD], "main": [MAIN]}


@dataclass
class ScriptedModel:
    """Answers each group's prompts from its own script, in order; records every conversation by group."""

    scripts: dict[str, list[str]]
    seen: list[tuple[str, list[dict[str, str]]]] = field(default_factory=list)

    async def complete(self, messages: Sequence[Mapping[str, str]], *, purpose: str = "", n: int = 1) -> Completion:
        match = re.search(r"Translate the C functions? (.+?) of the program", messages[1]["content"])
        assert match is not None, messages[1]["content"][:200]
        group = "+".join(re.findall(r"`(\w+)`", match.group(1)))
        self.seen.append((group, [dict(m) for m in messages]))
        script = self.scripts[group]
        code = script.pop(0) if len(script) > 1 else script[0]
        return Completion(f"Here it is.\n{BEGIN_MARK}\n{code.strip()}\n{END_MARK}\n", "stop", Usage(500, 100),
                          0.01, 0.0, 1)


@pytest.fixture
def task(tmp_path: Path) -> tuple[CProgram, TypeTranslation, TestSuite]:
    program, suite = numbers_task(tmp_path)
    return program, translate_types(program), suite




def _env(model: ScriptedModel, services: tuple[Toolchain, Sandbox]) -> FunctionEnv:
    return function_env(model, services)


async def test_every_group_verified_then_combined(
    task: tuple[CProgram, TypeTranslation, TestSuite], services: tuple[Toolchain, Sandbox], tmp_path: Path
) -> None:
    """Four prompts, bottom-up, each with one group's C bodies only; the combined program passes the tests."""
    program, types, suite = task
    model = ScriptedModel({k: list(v) for k, v in ANSWERS.items()})
    run = await translate_by_function(_env(model, services), program, types, suite, ItemBook.load(tmp_path / "r"))
    assert [group for group, _ in model.seen] == ["push", "sum", "is_even+is_odd", "main"]
    bodies = {item.name: item.text[len(item.signature):] for item in program.of_kind("function")}
    for group, messages in model.seen:
        prompt = messages[1]["content"]
        assert {name for name, body in bodies.items() if body in prompt} == set(group.split("+"))
    main_prompt = model.seen[-1][1][1]["content"]
    assert "fn push(head: *mut Node, value: libc::c_int) -> *mut Node;" in main_prompt  # callees, declared
    assert "static mut g_total: libc::c_int;" in main_prompt
    assert [o.status for o in run.outcomes] == ["verified"] * 4
    assert run.verified and run.requests == 4
    assert run.combined_source is not None and 'extern "C" {' not in run.combined_source


async def test_a_wrong_function_is_repaired_by_a_prompt_naming_it(
    task: tuple[CProgram, TypeTranslation, TestSuite], services: tuple[Toolchain, Sandbox], tmp_path: Path
) -> None:
    """sum that drops a node compiles and links; the FFI tests catch it; the repair turn names sum."""
    program, types, suite = task
    model = ScriptedModel({**{k: list(v) for k, v in ANSWERS.items()}, "sum": [SUM_WRONG, SUM]})
    run = await translate_by_function(_env(model, services), program, types, suite, ItemBook.load(tmp_path / "r"))
    assert run.verified
    sums = [messages for group, messages in model.seen if group == "sum"]
    assert len(sums) == 2
    repair = sums[1][-1]["content"]
    assert "With the Rust translation of `sum` linked into the C program, tests fail" in repair
    assert "Expected output:" in repair
    (outcome,) = [o for o in run.outcomes if o.group == ("function:sum",)]
    assert [stage for stage, _ in outcome.attempts] == ["tests", "passed"]


async def test_a_failed_function_blocks_its_callers_and_a_rerun_resumes(
    task: tuple[CProgram, TypeTranslation, TestSuite], services: tuple[Toolchain, Sandbox], tmp_path: Path
) -> None:
    """sum never right: main is blocked by it, the others verify; the rerun asks only for sum and main."""
    program, types, suite = task
    book_dir = tmp_path / "r"
    model = ScriptedModel({**{k: list(v) for k, v in ANSWERS.items()}, "sum": [SUM_WRONG]})
    run = await translate_by_function(_env(model, services), program, types, suite, ItemBook.load(book_dir))
    statuses = {o.group[0]: o.status for o in run.outcomes}
    assert statuses == {"function:push": "verified", "function:sum": "failed", "function:is_even": "verified",
                        "function:main": "blocked"}
    (main,) = [o for o in run.outcomes if o.group == ("function:main",)]
    assert main.blocked_by == "function:sum"
    assert run.combined is None and [g for g, _ in model.seen].count("sum") == 3
    assert ItemBook.load(book_dir).failure_info()["function:main"]["blocked_by"] == "function:sum"

    # The rerun: the failed item is asked again (a new run may succeed), verified ones are not.
    model = ScriptedModel({k: list(v) for k, v in ANSWERS.items()})
    rerun = await translate_by_function(_env(model, services), program, types, suite, ItemBook.load(book_dir))
    assert [g for g, _ in model.seen] == ["sum", "main"]
    assert [o.status for o in rerun.outcomes] == ["resumed", "verified", "resumed", "verified"]
    assert rerun.verified
