"""One stage's loop: ask -> extract -> (refuse) -> build -> test -> repair, up to the attempt limit.

A stage returns a :class:`StageResult` value whatever happens to the task (failures are data). Only fatal
errors (the model server gone past its outage budget, a full disk) propagate, and they stop the run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio

from .build import BuildResult, Toolchain
from .config import Config
from .errors import TaskFailure
from .extract import extract_rust
from .llm import ModelClient, Usage
from .prompts import Turn, conversation, cut_off_turn, idiomatic_prompt, unidiomatic_prompt
from .rust_source import first_unsafe_line
from .sandbox import Sandbox
from .testing import TestSuite, TestVerdict, run_test_suite

log = logging.getLogger(__name__)

StageName = Literal["unidiomatic", "idiomatic"]
AttemptKind = Literal[
    "verified", "no_code", "truncated", "refused", "compile_error", "test_failure", "request_failed"
]

#: Feedback longer than this is trimmed: the compiler and test output must not crowd out the program.
FEEDBACK_CHARS = 6000

@dataclass(frozen=True)
class Attempt:
    """One try of a stage: what the model sent and what became of it."""

    number: int
    kind: AttemptKind
    message: str
    code: str | None
    usage: Usage
    llm_seconds: float
    build_seconds: float = 0.0
    test_seconds: float = 0.0


@dataclass(frozen=True)
class StageResult:
    """How a stage ended. ``code`` is the verified program, present only when ``status == "verified"``."""

    stage: StageName
    status: Literal["verified", "failed", "skipped"]
    attempts: tuple[Attempt, ...] = ()
    code: str | None = None
    reason: str | None = None
    wall_seconds: float = 0.0
    requests: int = 0
    clippy: dict[str, Any] | None = None

    @property
    def usage(self) -> Usage:
        total = Usage()
        for attempt in self.attempts:
            total = total + attempt.usage
        return total

    @property
    def verified(self) -> bool:
        return self.status == "verified"


@dataclass(frozen=True)
class StageEnv:
    """What a stage needs, created once by the engine and handed down."""

    config: Config
    client: ModelClient
    toolchain: Toolchain
    sandbox: Sandbox
    cpu: anyio.CapacityLimiter
    record: Callable[[dict[str, Any]], None] = field(default=lambda event: None)


@dataclass
class _Check:
    kind: AttemptKind
    message: str
    feedback: str
    build_seconds: float = 0.0
    test_seconds: float = 0.0
    code: str | None = None  # the candidate this verdict is about


def refusal(stage: str, code: str) -> tuple[AttemptKind, str, str] | None:
    """(kind, message, feedback) when a candidate is rejected before compiling, else None."""
    if stage == "idiomatic":
        line = first_unsafe_line(code)
        if line is not None:
            msg = f"the idiomatic program uses `unsafe` (line {line}); it was rejected without compiling"
            return "refused", msg, msg + ". Rewrite it in safe Rust: no unsafe, no libc, no raw pointers."
    return None


def build_failure(build: BuildResult) -> tuple[AttemptKind, str, str] | None:
    """(kind, message, feedback) when a build was refused or failed, else None."""
    if build.refused:
        return "refused", build.refused, build.refused
    if not build.ok or build.binary is None:
        count = f"{build.error_count} error{'s' if build.error_count != 1 else ''}"
        return ("compile_error", f"the program does not compile ({count})",
                f"The compiler reported:\n{build.diagnostics}")
    return None


async def _verify(env: StageEnv, stage: StageName, candidates: tuple[str, ...], suite: TestSuite) -> _Check:
    """Refuse, build and test a program: the first of ``candidates`` (complete programs found in one answer,
    in order of preference) that compiles; when none does, the verdict on the first."""
    first: _Check | None = None
    build_seconds = 0.0
    limits = env.sandbox.limits(
        wall_seconds=env.config.translation.test_timeout,
        output_bytes=env.config.translation.output_byte_limit,
    )
    async with env.sandbox.build_dir() as out_dir:
        for code in candidates:
            refused = refusal(stage, code)
            if refused is not None:
                first = first or _Check(*refused, code=code)
                continue
            async with env.cpu:
                build: BuildResult = await env.toolchain.build(code, out_dir, max_diagnostic_chars=FEEDBACK_CHARS)
            build_seconds += build.seconds
            failed = build_failure(build)
            if failed is None and build.binary is not None:
                break
            kind, message, feedback = failed or ("compile_error", "no binary was produced", "")
            first = first or _Check(kind, message, feedback, code=code)
        else:
            assert first is not None, "a stage verifies at least one candidate"
            first.build_seconds = build_seconds
            return first
        started = time.perf_counter()
        async with env.cpu:
            verdict: TestVerdict = await run_test_suite(build.binary, suite, sandbox=env.sandbox, limits=limits)
        test_seconds = time.perf_counter() - started
    if verdict.passed:
        return _Check("verified", f"all {len(verdict.outcomes)} tests passed", "", build_seconds, test_seconds, code)
    failures = verdict.failures
    return _Check(
        "test_failure",
        f"{len(failures)} of {len(verdict.outcomes)} tests failed; first: {failures[0].summary}",
        verdict.feedback(FEEDBACK_CHARS),
        build_seconds,
        test_seconds,
        code,
    )


async def run_stage(
    env: StageEnv,
    stage: StageName,
    *,
    name: str,
    c_source: str,
    suite: TestSuite,
    rust_source: str | None = None,
) -> StageResult:
    """Translate, verify and repair until the stage verifies or runs out of attempts.

    Raises only fatal errors (:class:`~pipeline.errors.FatalError`); everything else ends up in the result.
    """
    started = time.perf_counter()
    if stage == "unidiomatic":
        first = unidiomatic_prompt(name, c_source)
    else:
        assert rust_source is not None, "the idiomatic stage starts from verified unidiomatic code"
        first = idiomatic_prompt(name, c_source, rust_source)
    system = env.config.translation.system_message
    turns: list[Turn] = []
    attempts: list[Attempt] = []
    requests = 0
    for number in range(1, env.config.translation.max_attempts + 1):
        messages = conversation(system, first, turns)
        env.record({"stage": stage, "attempt": number, "event": "prompt", "content": messages[-1]["content"]})
        try:
            completion = await env.client.complete(messages, purpose=f"{name}:{stage}:{number}")
        except TaskFailure as exc:
            # The server refused this request for good (context overflow, a 4xx, retries spent while the server
            # answered others): asking again with a longer conversation cannot help.
            requests += exc.requests
            attempts.append(Attempt(number, "request_failed", str(exc), None, Usage(), 0.0))
            env.record({"stage": stage, "attempt": number, "event": "verdict", "kind": "request_failed",
                        "message": str(exc)})
            reason = str(exc)
            if attempts[-2:-1] and attempts[-2].kind == "truncated":
                # The cause is the cut-off answer before, not this request: say so first.
                reason = f"truncated: attempt {number - 1} was cut off at the length limit; then {exc}"
            return StageResult(stage, "failed", tuple(attempts), reason=reason,
                               wall_seconds=time.perf_counter() - started, requests=requests)
        requests += completion.requests
        env.record({"stage": stage, "attempt": number, "event": "answer", "content": completion.text,
                    "finish_reason": completion.finish_reason,
                    "prompt_tokens": completion.usage.prompt_tokens,
                    "completion_tokens": completion.usage.completion_tokens})
        extraction = extract_rust(completion.text, truncated=completion.truncated)
        if extraction.code is None:
            kind: AttemptKind = "truncated" if completion.truncated or "cut off" in (extraction.problem or "") \
                else "no_code"
            problem = extraction.problem or "the answer contains no Rust code"
            check = _Check(kind, problem, problem)
        else:
            check = await _verify(env, stage, extraction.candidates or (extraction.code,), suite)
        attempts.append(Attempt(
            number, check.kind, check.message, check.code, completion.usage, completion.seconds,
            check.build_seconds, check.test_seconds,
        ))
        env.record({"stage": stage, "attempt": number, "event": "verdict", "kind": check.kind,
                    "message": check.message})
        log.debug("%s %s attempt %d: %s", name, stage, number, check.message)
        if check.kind == "verified":
            return StageResult(stage, "verified", tuple(attempts), code=check.code,
                               wall_seconds=time.perf_counter() - started, requests=requests)
        if completion.truncated:
            # A cut-off answer filled what the context left: sent back whole, the repair would not fit.
            turns.append(cut_off_turn(completion.usage.completion_tokens, check.code or extraction.code, check.message,
                                      check.feedback))
        else:
            turns.append(Turn(completion.text, check.message, check.feedback))
    last = attempts[-1].message if attempts else "no attempt was made"
    if attempts and attempts[-1].kind == "truncated" and "truncated" not in last:
        last = f"{last} (truncated)"
    return StageResult(
        stage, "failed", tuple(attempts),
        reason=f"not verified after {len(attempts)} attempts; last: {last}",
        wall_seconds=time.perf_counter() - started, requests=requests,
    )
