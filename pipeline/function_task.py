"""Function-level translation inside a batch task: the granularity a program gets, the function stage run
with the run's services, and what the task's results learn from it.

:func:`plan_task` decides per task (``[pipeline] granularity`` / ``--granularity``):

* ``file``: the whole-file stages, as before function-level translation existed;
* ``function``: one prompt per function or recursion group (:mod:`pipeline.function_stage`); a program
  libclang cannot parse fails its task with the reason;
* ``auto`` (the default): whole-file unless the whole-file request and an answer as long as the program
  cannot fit the server's ``max_model_len`` (the smallest of several servers):
  :func:`~pipeline.function_context.choose_granularity` with :data:`AUTO_ANSWER_RATIO` and
  :data:`AUTO_CONTEXT_SHARE`. A program that needs function-level but that libclang cannot parse, or that has
  a single function group (function-level would send the same program), goes whole-file with a log line.
  Function-level costs three to four times the prompt tokens, so auto takes it only when whole-file
  cannot work: the bundled examples, the shared corpus and the real-vLLM suite (max_model_len 2048) stay
  whole-file.

:func:`translate_functions` runs the unidiomatic stage function by function with the run's model client
(token totals, retries, fatal stops as for whole-file requests), toolchain, sandbox and CPU limiter, keeps
the item book (``items.json``) in the task's result folder so a rerun never asks for a verified function
again, writes SACToR's per-item layout there, and returns an ordinary :class:`~pipeline.records.StageResult`
whose ``code`` is the combined pure-Rust program (written as ``translated_code_unidiomatic/combined.rs``).

:func:`idiomatic_stage` runs the idiomatic stage of function-level programs (:mod:`pipeline.function_idiomatic`):
the combined program made safe unit by unit, each step built and tested, with its own book
(``idiomatic_items.json``) and SACToR's per-item layout under ``translated_code_idiomatic/``.

With ``--executor ray`` the FFI checks and the combined build run on this machine (the engine says so in a
log line).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio

from .build import Toolchain
from .c_program import CProgram, compiler_include_dirs, parse_program
from .c_types import TypeTranslation, translate_types
from .errors import ConfigError, TaskFailure, TaskInputError
from .function_context import Granularity, choose_granularity
from .items import ItemBook, write_item_files
from .llm import estimate_tokens
from .prompts import conversation, first_prompt
from .records import STAGE_SPECS, Attempt, AttemptKind, StageResult, TestSuite, Usage
from .results import ITEM_FOLDERS
from .sandbox import Sandbox

# The stages themselves (function_stage, function_idiomatic) are imported when a task goes function-level:
# a run's first requests need only plan_task (pipeline.startup).
if TYPE_CHECKING:
    from .function_stage import FunctionEnv, FunctionRun
    from .stages import StageEnv

log = logging.getLogger(__name__)

#: auto: the expected answer is as long as the program (the estimate of :func:`~pipeline.llm.estimate_tokens`
#: already counts code generously), and the request with its answer may fill the whole context.
AUTO_ANSWER_RATIO = 1.0
AUTO_CONTEXT_SHARE = 1.0
#: The FFI check's stages (pipeline/ffi.py) as the attempt kinds of the task's records.
_KINDS: dict[str, AttemptKind] = {
    "passed": "verified", "tests": "test_failure", "rust_build": "compile_error", "link": "compile_error",
    "unsupported": "refused", "no_code": "no_code", "truncated": "truncated", "request_failed": "request_failed",
}


@dataclass(frozen=True)
class FunctionLevel:
    """The run's services the function-level stage uses, built once by the engine (``StageEnv.functions``)."""

    toolchain: Toolchain
    sandbox: Sandbox
    cpu: anyio.CapacityLimiter
    max_model_len: int | None  # the smallest of the servers' context lengths; None when none says
    salt: str  # the settings fingerprint, mixed into the item digests


@dataclass(frozen=True)
class Plan:
    """How one task is cut for the model: ``granularity`` with the ``reason``, and for function-level the
    parsed program and its deterministic type translation."""

    granularity: Literal["file", "function"]
    reason: str
    program: CProgram | None = None
    translation: TypeTranslation | None = None

    def record(self, items: dict[str, int] | None = None) -> dict[str, Any]:
        """The task record's ``granularity`` entry (batch_summary.json, result.json)."""
        return {"granularity": self.granularity, "reason": self.reason, **({"items": items} if items else {})}


def _whole_file_overhead(env: StageEnv, name: str) -> int:
    """Tokens of the whole-file request without its program: system message and instructions."""
    messages = conversation(env.config.translation.system_message,
                            first_prompt("unidiomatic", name=name, c_source=""), [])
    return estimate_tokens(messages)


async def plan_task(
    env: StageEnv, c_path: Path, c_source: str, *, name: str, setting: Granularity | None = None
) -> Plan:
    """The granularity of one task (``setting``, else the run's ``granularity``), see the module docstring.

    Raises TaskInputError (a task failure) when ``function`` is asked for a program libclang cannot parse.
    """
    chosen: Granularity = setting or env.config.translation.granularity  # type: ignore[assignment]
    if chosen == "file":
        return Plan("file", "granularity = file")
    functions = env.functions
    if functions is None:
        if chosen == "function":
            raise TaskInputError("function-level translation needs the batch engine's services (the result "
                                 "folder for its item book): run it with the batch command")
        return Plan("file", "function-level translation is not available to this command")
    choice = choose_granularity(chosen, c_source, max_model_len=functions.max_model_len,
                                prompt_overhead_tokens=_whole_file_overhead(env, name),
                                answer_ratio=AUTO_ANSWER_RATIO, context_share=AUTO_CONTEXT_SHARE)
    if choice.granularity == "file":
        return Plan("file", f"auto: {choice.reason}")
    include_dirs = await compiler_include_dirs()
    try:
        program = await anyio.to_thread.run_sync(
            lambda: parse_program(c_path, c_source.encode("utf-8", "surrogateescape"), include_dirs=include_dirs))
    except (TaskInputError, ConfigError) as exc:
        if chosen == "function":
            raise TaskInputError(f"--granularity function: {exc}") from exc
        log.info("%s: function-level wanted (%s), but libclang cannot parse the program (%s): whole file",
                 name, choice.reason, exc)
        return Plan("file", f"auto: {choice.reason}; libclang cannot parse the program ({exc}): whole file")
    if chosen == "auto" and len(program.function_groups()) < 2:
        return Plan("file", f"auto: {choice.reason}; but the program has a single function group: whole file")
    translation = await anyio.to_thread.run_sync(translate_types, program)
    reason = choice.reason if chosen == "function" else f"auto: {choice.reason}"
    log.info("%s: function-level translation (%s)", name, reason)
    return Plan("function", reason, program, translation)


def _clear_item_files(stage_dir: Path) -> None:
    """Remove the per-item files of an earlier run (their items may have failed since)."""
    for folder in ITEM_FOLDERS:
        shutil.rmtree(stage_dir / folder, ignore_errors=True)


def _label(group: tuple[str, ...]) -> str:
    return "+".join(key.split(":", 1)[1] for key in group)


def _item_counts(run: FunctionRun) -> dict[str, int]:
    counts = {"verified": 0, "failed": 0, "blocked": 0}
    for outcome in run.outcomes:
        status = "verified" if outcome.status in ("verified", "resumed") else outcome.status
        counts[status] = counts.get(status, 0) + len(outcome.group)
    counts["total"] = sum(len(outcome.group) for outcome in run.outcomes)
    return counts


def _stage_result(run: FunctionRun, answers: dict[str, list[dict[str, Any]]], book: ItemBook) -> StageResult:
    """The function-level run as the unidiomatic stage's result: one attempt per request (its group named in
    the message), per-item failure information and llm statistics."""
    attempts: list[Attempt] = []
    llm_stat: dict[str, Any] = {}
    for outcome in run.outcomes:
        label = _label(outcome.group)
        given = answers.get(label, [])
        for index, (kind, summary) in enumerate(outcome.attempts):
            answer = given[index] if index < len(given) else {}
            usage = Usage(answer.get("prompt_tokens", 0) or 0, answer.get("completion_tokens", 0) or 0)
            attempts.append(Attempt(len(attempts) + 1, _KINDS.get(kind, "test_failure"), f"{label}: {summary}",
                                    None, usage, float(answer.get("seconds", 0.0) or 0.0)))
        if given or outcome.requests:
            llm_stat[label] = {
                "status": outcome.status,
                "total_queries": outcome.requests,
                "total_costed_input_tokens": sum(a.get("prompt_tokens", 0) or 0 for a in given),
                "total_costed_output_tokens": sum(a.get("completion_tokens", 0) or 0 for a in given),
                "costed_input_tokens": [a.get("prompt_tokens", 0) for a in given],
                "costed_output_tokens": [a.get("completion_tokens", 0) for a in given],
            }
    items = {"failure_info": book.failure_info(), "llm_stat": llm_stat}
    counts = _item_counts(run)
    if run.verified:
        return StageResult("unidiomatic", "verified", tuple(attempts), code=run.combined_source,
                           wall_seconds=run.seconds, requests=run.requests, items=items)
    if counts["failed"] or counts["blocked"]:
        failed = [f"{_label(o.group)}: {o.reason}" for o in run.outcomes if o.status == "failed"]
        reason = (f"function-level: {counts['failed']} of {counts['total']} functions failed, {counts['blocked']} "
                  f"blocked by a failed dependency; {failed[0] if failed else ''}")
    else:
        assert run.combined is not None
        per_item = "; ".join(f"{key}: {text.splitlines()[0] if text else ''}"
                             for key, text in run.combined.per_item.items())
        first = run.combined.feedback.splitlines()[0] if run.combined.feedback else run.combined.stage
        reason = f"function-level: every function verified, but {first}" + (
            f" ({per_item})" if per_item else "")
    return StageResult("unidiomatic", "failed", tuple(attempts), reason=reason.rstrip("; "),
                       wall_seconds=run.seconds, requests=run.requests, items=items)


def _function_env(
    env: StageEnv, functions: FunctionLevel, stage: str, also: Callable[[dict[str, Any]], None] | None = None
) -> FunctionEnv:
    """The function-level stages' services from the run's: model, toolchain, sandbox, limits, CPU slots; their
    events go to the task's transcript (``also`` sees them first)."""
    from .function_stage import FunctionEnv

    def record(event: dict[str, Any]) -> None:
        if also is not None:
            also(event)
        env.record({"stage": stage, "granularity": "function", **event})

    settings = env.config.translation
    return FunctionEnv(
        env.model, functions.toolchain, functions.sandbox,
        functions.sandbox.limits(wall_seconds=settings.test_timeout, output_bytes=settings.output_byte_limit),
        max_attempts=settings.max_attempts, system=settings.system_message, salt=functions.salt, record=record,
        cpu=functions.cpu,
    )


async def translate_functions(
    env: StageEnv, plan: Plan, suite: TestSuite, result_dir: Path
) -> tuple[StageResult, dict[str, int]]:
    """The unidiomatic stage of a function-level task (see the module docstring), and its item counts.

    Raises only fatal errors; a damaged item book fails the stage with the file named.
    """
    from .function_stage import translate_by_function

    functions = env.functions
    assert functions is not None and plan.program is not None and plan.translation is not None
    program, translation = plan.program, plan.translation
    try:
        book = await anyio.to_thread.run_sync(ItemBook.load, result_dir)
    except TaskFailure as exc:
        return StageResult("unidiomatic", "failed", reason=str(exc)), {}
    answers: dict[str, list[dict[str, Any]]] = {}

    def record(event: dict[str, Any]) -> None:
        if event.get("event") == "answer":
            # A function group's answers, or a global's or type's (global_stage: keyed by "item").
            keys = tuple(event["group"]) if "group" in event else (event["item"],)
            answers.setdefault(_label(keys), []).append(event)

    function_env = _function_env(env, functions, "unidiomatic", record)
    await anyio.to_thread.run_sync(lambda: os.makedirs(result_dir, exist_ok=True))
    run = await translate_by_function(function_env, program, translation, suite, book)
    stage_dir = result_dir / STAGE_SPECS["unidiomatic"].result_dir

    def write_items() -> None:
        _clear_item_files(stage_dir)
        write_item_files(stage_dir, program, translation, book)

    await anyio.to_thread.run_sync(write_items)
    return _stage_result(run, answers, book), _item_counts(run)


async def idiomatic_stage(
    env: StageEnv, plan: Plan, suite: TestSuite, unidiomatic: StageResult, result_dir: Path
) -> StageResult:
    """The idiomatic stage of a function-level task, from its verified combined program (``unidiomatic``):
    made safe unit by unit inside the whole program (:mod:`pipeline.function_idiomatic`), its book
    (``idiomatic_items.json``) and per-item files in ``result_dir``. Raises only fatal errors."""
    from .function_idiomatic import idiomatic_task

    functions = env.functions
    assert functions is not None and plan.program is not None and unidiomatic.code is not None
    stage, _ = await idiomatic_task(_function_env(env, functions, "idiomatic"), plan.program, unidiomatic.code,
                                    suite, result_dir)
    return stage
