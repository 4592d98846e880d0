"""The function-level unidiomatic stage: one prompt per function or recursion group, FFI-verified, then combined.

For a program too large for one prompt (:func:`~pipeline.function_context.choose_granularity`), the groups of
:meth:`~pipeline.c_program.CProgram.function_groups` are translated bottom-up. Each request shows one group's
C definitions and what they need in declared form (:mod:`pipeline.function_context`); each answer is checked
inside the running C program (:mod:`pipeline.ffi`), and a failure goes back to the model naming the function,
with the test output, until the attempts run out. A group that fails blocks the functions that need it, not
the others (:func:`~pipeline.items.blocked_items`). Verified groups are recorded in the task's item book
(:class:`~pipeline.items.ItemBook`) as they finish, so a rerun asks only for what is missing or changed.
When every group verified, the items are combined into one Rust program and verified with the tests
(:mod:`pipeline.combine`).

The engine calls :func:`translate_by_function` through :mod:`pipeline.function_task`, which builds the
:class:`FunctionEnv` from the run's services.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import anyio

from .build import Toolchain
from .c_program import CProgram
from .c_types import TypeTranslation
from .combine import CombineVerdict, combine, verify_combined
from .ffi import verify_function
from .function_context import function_context
from .global_stage import translate_leftovers
from .interfaces import Model
from .item_loop import Check, ask_until_verified
from .items import ItemBook, blocked_items, item_digests
from .prompts import FUNCTION_REPLY, function_request
from .records import TestSuite
from .rust_source import given_names, strip_given
from .sandbox import Limits, Sandbox

log = logging.getLogger(__name__)

def function_prompt(program: CProgram, translation: TypeTranslation, group: Sequence[str]) -> str:
    """The first request for ``group`` (:data:`pipeline.prompts.FUNCTION_REQUEST`): instructions, the marker
    line, then :meth:`FunctionContext.render`."""
    names = [key.split(":", 1)[1] for key in group]
    return function_request(label="+".join(names), names=", ".join(f"`{name}`" for name in names),
                            many=len(group) > 1, program=program.path.name,
                            context=function_context(program, translation, group).render())


@dataclass(frozen=True)
class FunctionEnv:
    """What the function-level stage needs; the engine will build it once per run."""

    model: Model
    toolchain: Toolchain
    sandbox: Sandbox
    limits: Limits
    max_attempts: int = 3
    system: str = "You translate C to Rust."
    salt: str = ""  # the settings fingerprint: other settings, other records
    record: Callable[[dict[str, Any]], None] = field(default=lambda event: None)
    #: Held around each FFI check and the combined build (the engine's CPU limiter); None: unbounded.
    cpu: anyio.CapacityLimiter | None = None


@dataclass(frozen=True)
class GroupOutcome:
    """One group's end: ``status`` verified, resumed (verified in an earlier run), failed or blocked."""

    group: tuple[str, ...]
    status: str
    attempts: tuple[tuple[str, str], ...] = ()  # (stage of the FFI verdict, its first line) per attempt
    rust: str | None = None
    reason: str = ""
    blocked_by: str | None = None
    requests: int = 0


@dataclass(frozen=True)
class FunctionRun:
    """The stage's result: each group's outcome, bottom-up, and the combined program's verdict (None when
    some group did not verify)."""

    outcomes: tuple[GroupOutcome, ...]
    combined: CombineVerdict | None
    combined_source: str | None
    seconds: float

    @property
    def requests(self) -> int:
        return sum(outcome.requests for outcome in self.outcomes)

    @property
    def verified(self) -> bool:
        return self.combined is not None and self.combined.passed


async def translate_by_function(
    env: FunctionEnv,
    program: CProgram,
    translation: TypeTranslation,
    suite: TestSuite,
    book: ItemBook,
) -> FunctionRun:
    """Translate ``program`` group by group (see the module docstring). Failures are outcomes; raises only
    fatal errors (the model's :class:`~pipeline.errors.FatalError`) and OSError from the item book."""
    started = time.perf_counter()
    digests = item_digests(program, env.salt)
    book.forget_stale(digests)
    # Globals and types the deterministic translation left go to the model first; the model's types serve
    # every later prompt and harness, its globals the combined program (in the FFI harness C keeps its own).
    leftovers = await translate_leftovers(env, program, translation, book, digests)
    translation = leftovers.translation
    # A group that failed in an earlier run is asked again (the model may do better now), so only this
    # run's failures block. A type the model failed blocks the functions that use it (their harness needs
    # it); a failed global only the combine (in the harness C keeps its own).
    failed: set[str] = {key for key in leftovers.failed if not key.startswith("global:")}
    outcomes: list[GroupOutcome] = [
        GroupOutcome((item.key,), item.status, item.attempts, item.rust, item.reason, requests=item.requests)
        for item in leftovers.outcomes
    ]
    code: dict[tuple[str, ...], str] = {}
    for group in program.function_groups():
        blockers = blocked_items(program, failed)
        blocker = next((blockers[key] for key in group if key in blockers), None)
        if blocker is not None:
            book.record(group, "blocked_by_failed_dependency", digests, blocked_by=blocker,
                        reason=f"needs {blocker}, which failed")
            outcomes.append(GroupOutcome(group, "blocked", blocked_by=blocker, reason=f"needs {blocker}"))
            continue
        earlier = book.verified_rust(group, digests)
        if earlier is not None:
            code[group] = earlier
            outcomes.append(GroupOutcome(group, "resumed", rust=earlier))
            continue
        outcome = await _translate_group(env, program, translation, suite, group)
        if outcome.rust is not None:
            code[group] = outcome.rust
            book.record(group, "verified", digests, attempts=len(outcome.attempts), rust=outcome.rust)
        else:
            failed.update(group)
            book.record(group, "failed", digests, attempts=len(outcome.attempts), reason=outcome.reason)
        outcomes.append(outcome)
    if len(code) != len(program.function_groups()) or leftovers.failed:
        return FunctionRun(tuple(outcomes), None, None, time.perf_counter() - started)
    combined = combine(program, translation, code, leftovers.globals_code)
    async with env.cpu or nullcontext():
        verdict = await verify_combined(combined, suite, toolchain=env.toolchain, sandbox=env.sandbox,
                                        limits=env.limits)
    return FunctionRun(tuple(outcomes), verdict, combined.source, time.perf_counter() - started)


async def _translate_group(
    env: FunctionEnv, program: CProgram, translation: TypeTranslation, suite: TestSuite, group: tuple[str, ...]
) -> GroupOutcome:
    label = "+".join(key.split(":", 1)[1] for key in group)
    # What the prompt gives in declared form (types, globals, other functions) is dropped from answers that
    # define it again: the harness and the combined program define it once.
    given = given_names(translation.rust_source()) | {
        item.name for item in program.items if item.kind in ("function", "global") and item.key not in group}

    async def check(code: str) -> Check:
        rust, removed = strip_given(code, given)
        if removed:
            log.debug("function_stage: %s: removed what the prompt gave: %s", label, ", ".join(removed))
        async with env.cpu or nullcontext():
            verdict = await verify_function(program, translation, group, rust, suite,
                                            toolchain=env.toolchain, sandbox=env.sandbox, limits=env.limits)
        return Check(verdict.stage, verdict.feedback if not verdict.passed else "", rust,
                     final=verdict.stage == "unsupported")

    end = await ask_until_verified(
        env.model, system=env.system, first=function_prompt(program, translation, group), reply=FUNCTION_REPLY,
        max_attempts=env.max_attempts, purpose=f"{program.path.name}:{label}", check=check, record=env.record,
        tag={"group": list(group)})
    return GroupOutcome(group, "verified" if end.rust is not None else "failed", end.attempts, rust=end.rust,
                        reason=end.reason, requests=end.requests)
