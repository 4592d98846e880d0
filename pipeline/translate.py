"""One task from inputs to results: read it, choose its granularity (whole file or function by function,
:mod:`pipeline.function_task`), run the unidiomatic stage, then the idiomatic one.

Used by the batch engine for every task and by the single-task ``translate`` command.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import aiofiles.os
import anyio

from .errors import TaskFailure, TaskInputError
from .records import (
    STAGE_SPECS,
    STAGES,
    Candidate,
    Oracle,
    StageName,
    StageResult,
    TaskFiles,
    TaskInputs,
    TaskResult,
    TestSuite,
)
from .stages import StageEnv, c_program_rules, run_stage
from .task import Task, hash_contents, printable
from .testing import MAX_INPUT_BYTES, input_files, load_test_suite

# Imported where used: the engine's producer reads tasks (read_task) before start-up has imported the stage
# code's heavier modules in a worker thread (pipeline.startup); proposals only with [differential] model_inputs.
if TYPE_CHECKING:
    from .function_task import Plan
    from .proposals import Proposal

log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: A C file larger than this is refused: it would not fit any model's context anyway.
MAX_C_BYTES = 512 * 1024


def read_task_files(task: Task) -> TaskFiles:
    """Read the task's files (the C file, its tests, the samples they name) and digest them. Blocking: see
    :func:`read_task`.

    Never raises for a file that cannot be read: it counts as absent, and loading the inputs says why.
    """
    contents: dict[Path, bytes | None] = {}

    def read(path: Path) -> None:
        try:
            with open(path, "rb") as fh:
                contents[path] = fh.read(MAX_INPUT_BYTES + 1)
        except OSError:
            contents[path] = None

    read(task.c_path)
    read(task.test_path)
    for path in input_files(task, contents[task.test_path] or b""):
        if path not in contents:
            read(path)
    return TaskFiles(contents, hash_contents(contents))


def _read_then(task: Task, then: Callable[[TaskFiles], _T]) -> tuple[TaskFiles, _T]:
    files = read_task_files(task)
    return files, then(files)


#: :func:`_read_then` in aiofiles' executor, as aiofiles runs its own file calls.
_read_then_async = aiofiles.os.wrap(_read_then)


async def read_task(task: Task) -> TaskFiles:
    """:func:`read_task_files` off the event loop, with aiofiles: all of a task's files in one trip to a
    worker thread (``aiofiles.open`` costs a trip per open, read and close: about 0.1 ms of CPU each; #16)."""
    files, _ = await read_task_then(task, _nothing)
    return files


async def read_task_then(task: Task, then: Callable[[TaskFiles], _T]) -> tuple[TaskFiles, _T]:
    """:func:`read_task`, and ``then`` called with the files in the same worker thread (the engine's producer
    checks the ledger there: one trip per task)."""
    return cast("tuple[TaskFiles, _T]", await _read_then_async(task, then))


def _nothing(_files: TaskFiles) -> None:
    return None


def load_inputs(task: Task, *, num_tests: int | None, files: TaskFiles | None = None) -> TaskInputs:
    """Check the C file and build the tests, from ``files`` when given (else from disk). Raises
    TaskInputError with a reason naming the file."""
    try:
        known = files.contents.get(task.c_path) if files is not None else None
        raw = known if known is not None else task.c_path.read_bytes()
    except OSError as exc:
        raise TaskInputError(f"{task.c_path}: cannot read the C file ({exc.strerror})") from exc
    if len(raw) > MAX_C_BYTES:
        size = f"more than {MAX_INPUT_BYTES}" if len(raw) > MAX_INPUT_BYTES else str(len(raw))  # reading stopped
        raise TaskInputError(f"{task.c_path}: {size} bytes is larger than the {MAX_C_BYTES}-byte limit")
    try:
        c_source = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TaskInputError(f"{task.c_path}: not UTF-8 text (byte {exc.start}); convert it to UTF-8") from exc
    if (nul := raw.find(b"\0")) >= 0:
        raise TaskInputError(f"{task.c_path}: a NUL byte at offset {nul}: not C source text")
    if not c_source.lstrip("\ufeff").strip():
        raise TaskInputError(f"{task.c_path}: the C file is empty")
    read = {path: data for path, data in files.contents.items() if data is not None} if files else None
    return TaskInputs(c_source, load_test_suite(task, num_tests=num_tests, files=read))


def try_load_inputs(task: Task, *, num_tests: int | None, files: TaskFiles) -> TaskInputs | Exception:
    """:func:`load_inputs`, with what it raised returned instead (blocking): the engine's producer loads a
    task's inputs in the trip that read its files, and :func:`translate_task` raises the error as its own."""
    try:
        return load_inputs(task, num_tests=num_tests, files=files)
    except Exception as exc:
        return exc


def stored_programs(result_dir: Path) -> tuple[dict[str, Any], list[tuple[StageName, str]]] | None:
    """A verified task's result (its result.json) and each stage's verified program (``combined.rs``, in SACToR's
    layout), or None when the task did not verify or a file is missing or unreadable. Blocking."""
    try:
        summary = json.loads((result_dir / "result.json").read_text(encoding="utf-8"))
        if summary.get("status") != "verified":
            return None
        verified = [name for name in STAGES if (summary["stages"].get(name) or {}).get("status") == "verified"]
        programs = [(name, (result_dir / STAGE_SPECS[name].result_dir / "combined.rs").read_text(encoding="utf-8"))
                    for name in verified]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # not there, or not the layout we write
        return None
    return (summary, programs) if programs else None


async def recheck_task(
    env: StageEnv, task: Task, key_hash: str, inputs: TaskInputs, result_dir: Path,
) -> dict[str, Any] | None:
    """A task verified under earlier verification rules (:data:`~pipeline.records.EARLIER_VERIFY_RULES`), checked
    again without the model: each stage's stored program verified under the current rules, with the same tests
    and differential inputs. Its result (result.json's record) when every stage verifies, else None (the task is
    to be redone; the log says which stage and why)."""
    stored = await anyio.to_thread.run_sync(stored_programs, result_dir)
    if stored is None:
        log.info("%s: verified under earlier verification rules, but its stored programs cannot be read: redone",
                 task.id)
        return None
    summary, programs = stored
    oracle = await env.verifier.oracle(inputs.c_source, inputs.suite, key_hash)
    runs_other_code, checking = c_program_rules(inputs.c_source, inputs.suite)
    for stage, code in programs:
        verdict = await env.verifier.verify(Candidate(stage, (code,), runs_other_code, checking), inputs.suite,
                                            oracle)
        if verdict.kind != "verified":
            log.info("%s: its %s program no longer verifies under the current verification rules (%s): redone",
                     task.id, stage, verdict.message)
            return None
    log.info("%s: verified again under the current verification rules from its stored programs", task.id)
    return summary


async def _with_code_stats(env: StageEnv, result: StageResult) -> StageResult:
    if not result.verified or result.code is None or not env.config.toolchain.clippy:
        return result
    return dataclasses.replace(result, clippy=await env.verifier.code_stats(result.code))


async def _vacuous_tests(env: StageEnv, suite: TestSuite, key_hash: str) -> str | None:
    """Why the task's tests cannot verify anything, or None when every test exercises the program."""
    found = await env.verifier.vacuous_tests(suite, key_hash)
    if not found:
        return None
    more = f" (and {len(found) - 3} more tests)" if len(found) > 3 else ""
    return "; ".join(found[:3]) + more


async def _proposals(env: StageEnv, name: str, inputs: TaskInputs) -> Proposal | None:
    """The model's proposed inputs for the oracle, when ``[differential] model_inputs`` asks for some and the
    tests feed inputs (else None, and no request is sent). A failed request is a Proposal with a ``problem``:
    the oracle goes on with mutations alone."""
    count = env.config.translation.differential_model_inputs
    if count <= 0 or env.config.translation.differential <= 0:
        return None
    from .differential import applicable
    from .proposals import propose_inputs

    feed, shipped, _ = applicable(inputs.suite)
    if feed is None:
        return None
    proposal = await propose_inputs(env.model, name=name, c_source=inputs.c_source, feed=feed, examples=shipped,
                                    count=count)
    event: dict[str, Any] = {"event": "input_proposals", "asked": count, "proposed": list(proposal.inputs),
                             "prompt_tokens": proposal.usage.prompt_tokens,
                             "completion_tokens": proposal.usage.completion_tokens}
    if proposal.problem:
        event["message"] = proposal.problem
    env.record(event)
    return proposal


def _proposal_report(proposal: Proposal, asked: int) -> dict[str, Any]:
    """The task record's account of the proposal request: inputs asked, parsed and usable, its cost, and why
    there are none when the request failed or the answer held none."""
    return {"asked": asked, "parsed": proposal.parsed, "usable": len(proposal.inputs),
            "requests": proposal.requests, "prompt_tokens": proposal.usage.prompt_tokens,
            "completion_tokens": proposal.usage.completion_tokens, "note": proposal.problem}


async def translate_task(
    env: StageEnv, task: Task, key_hash: str, files: TaskFiles | None = None, *, result_dir: Path | None = None,
    loaded: TaskInputs | Exception | None = None,
) -> tuple[TaskResult, list[dict[str, Any]]]:
    """Run both stages of one task (from ``files`` when the producer read them already; from ``loaded``, what
    :func:`try_load_inputs` returned, when it loaded them too). Returns its result and transcript; raises only
    fatal errors. ``result_dir`` (the task's result folder) keeps the item book of a function-level task
    (:mod:`pipeline.function_task`); without it tasks go whole-file."""
    from .function_task import idiomatic_stage, plan_task

    started = time.perf_counter()
    transcript: list[dict[str, Any]] = []
    # Without a result folder there is nowhere to keep the item book: whole-file only.
    env = dataclasses.replace(env, record=transcript.append,
                              functions=env.functions if result_dir is not None else None)
    ident = (task.id, printable(task.c_path), printable(task.test_path), key_hash)
    try:
        if loaded is None:
            inputs = await anyio.to_thread.run_sync(
                lambda: load_inputs(task, num_tests=env.config.translation.num_tests, files=files)
            )
        elif isinstance(loaded, Exception):
            raise loaded
        else:
            inputs = loaded
    except TaskFailure as exc:
        log.info("%s: %s", task.id, exc)
        transcript.append({"event": "input_error", "message": str(exc)})
        return TaskResult(*ident, reason=str(exc), failure_kind="input_error",
                          wall_seconds=time.perf_counter() - started), transcript
    vacuous = await _vacuous_tests(env, inputs.suite, key_hash)
    if vacuous is not None:
        log.info("%s: %s", task.id, vacuous)
        transcript.append({"event": "vacuous_tests", "message": vacuous})
        return TaskResult(*ident, reason=vacuous, failure_kind="vacuous_tests",
                          wall_seconds=time.perf_counter() - started), transcript
    name = printable(Path(task.c_path).name)  # goes into the prompt: UTF-8 whatever the file system holds
    try:
        plan = await plan_task(env, task.c_path, inputs.c_source, name=name)
    except TaskFailure as exc:
        log.info("%s: %s", task.id, exc)
        transcript.append({"event": "input_error", "message": str(exc)})
        return TaskResult(*ident, reason=str(exc), failure_kind="input_error",
                          wall_seconds=time.perf_counter() - started), transcript
    proposal = await _proposals(env, name, inputs)
    oracle = await env.verifier.oracle(inputs.c_source, inputs.suite, key_hash,
                                       proposed=proposal.inputs if proposal else ())
    report: dict[str, Any] = oracle.report() if oracle is not None else {"status": "off"}
    if proposal is not None:
        kept = sum(item.input in proposal.inputs for item in oracle.inputs) if oracle is not None else 0
        report["proposals"] = {**_proposal_report(proposal, env.config.translation.differential_model_inputs),
                               "kept": kept}
    if oracle is not None:
        if log.isEnabledFor(logging.DEBUG):  # the message is built only when it is shown
            log.debug("%s: differential testing: %s", task.id, oracle.note or
                      f"{len(oracle.inputs)} of {oracle.tried} generated inputs kept (rejected: "
                      f"{dict(oracle.rejected)})")
        transcript.append({"event": "differential", **report})
    stages: list[StageResult] = []
    unidiomatic, plan, items = await _unidiomatic(env, task, name, inputs, oracle, plan, result_dir)
    stages.append(unidiomatic)
    if env.config.translation.idiomatic and unidiomatic.verified:
        if plan.granularity == "function" and result_dir is not None:
            idiomatic = await idiomatic_stage(env, plan, inputs.suite, unidiomatic, result_dir)
        else:
            idiomatic = await run_stage(
                env, "idiomatic", name=name, c_source=inputs.c_source, suite=inputs.suite,
                rust_source=unidiomatic.code, oracle=oracle,
            )
        stages.append(await _with_code_stats(env, idiomatic))
    return (
        TaskResult(*ident, stages=tuple(stages), wall_seconds=time.perf_counter() - started,
                   differential=report, differential_samples=tuple(oracle.samples()) if oracle else (),
                   granularity=plan.record(items)),
        transcript,
    )


async def _unidiomatic(
    env: StageEnv, task: Task, name: str, inputs: TaskInputs, oracle: Oracle | None, plan: Plan,
    result_dir: Path | None,
) -> tuple[StageResult, Plan, dict[str, int] | None]:
    """The unidiomatic stage at the planned granularity; with ``function_fallback``, a whole-file stage that
    failed is followed by a function-level one (its result then holds both stages' attempts). Returns the
    stage, the granularity it ended at, and the item counts of a function-level stage."""
    from .function_task import Plan, plan_task, translate_functions

    if plan.granularity == "function" and result_dir is not None:
        stage, items = await translate_functions(env, plan, inputs.suite, result_dir)
        return await _with_code_stats(env, stage), plan, items
    whole = await _with_code_stats(env, await run_stage(
        env, "unidiomatic", name=name, c_source=inputs.c_source, suite=inputs.suite, oracle=oracle,
    ))
    if whole.verified or not env.config.translation.function_fallback or result_dir is None:
        return whole, plan, None
    try:
        second = await plan_task(env, task.c_path, inputs.c_source, name=name, setting="function")
    except TaskFailure as exc:
        log.info("%s: no function-level fallback: %s", task.id, exc)
        return whole, plan, None
    if second.program is None or len(second.program.function_groups()) < 2:
        return whole, plan, None
    log.info("%s: the whole-file stage failed (%s): translating function by function", task.id, whole.reason)
    stage, items = await translate_functions(env, second, inputs.suite, result_dir)
    shifted = tuple(dataclasses.replace(a, number=a.number + len(whole.attempts)) for a in stage.attempts)
    combined = dataclasses.replace(stage, attempts=whole.attempts + shifted, requests=whole.requests + stage.requests,
                                   wall_seconds=whole.wall_seconds + stage.wall_seconds)
    fallback = Plan("function", f"fallback after the whole-file stage failed ({plan.reason}): {whole.reason}",
                    second.program, second.translation)
    return await _with_code_stats(env, combined), fallback, items
