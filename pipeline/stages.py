"""One stage's loop: ask -> extract -> (refuse) -> build -> test -> repair, up to the attempt limit.

A stage returns a :class:`StageResult` value whatever happens to the task (failures are data). Only fatal
errors (the model server gone past its outage budget, a full disk) propagate, and they stop the run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import self_check
from .candidates import Judgement, judge_choices
from .config import Config
from .errors import TaskFailure
from .interfaces import Model, Verifier
from .prompts import Turn, conversation, cut_off_turn, first_prompt
from .records import STAGES, Attempt, Completion, StageName, StageResult, TestSuite, Usage
from .rust_source import c_runs_other_code
from .scheduling import request_rank, stage_rank

if TYPE_CHECKING:
    from .function_task import FunctionLevel
    from .records import Oracle

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class StageEnv:
    """What a stage needs, created once by the engine and handed down: settings and the two interfaces."""

    config: Config
    model: Model
    verifier: Verifier
    record: Callable[[dict[str, Any]], None] = field(default=lambda event: None)
    #: The services of function-level translation (:mod:`pipeline.function_task`); None: whole-file only.
    functions: FunctionLevel | None = None


def c_program_rules(c_source: str, suite: TestSuite) -> tuple[bool, bool]:
    """What the C program and its tests change in how a translation is judged, as
    :class:`~pipeline.records.Candidate` takes them: whether the C program runs other code itself (then its
    translation may), and whether the task is self-checking (the control of :mod:`pipeline.self_check`)."""
    return c_runs_other_code(c_source), self_check.applies(c_source, suite)


async def run_stage(
    env: StageEnv,
    stage: StageName,
    *,
    name: str,
    c_source: str,
    suite: TestSuite,
    rust_source: str | None = None,
    oracle: Oracle | None = None,
) -> StageResult:
    """Translate, verify and repair until the stage verifies or runs out of attempts. ``oracle`` (the C
    program's outputs on generated inputs) goes to the verifier with the suite.

    Raises only fatal errors (:class:`~pipeline.errors.FatalError`); everything else ends up in the result.
    """
    started = time.perf_counter()
    first = first_prompt(stage, name=name, c_source=c_source, rust_source=rust_source)
    spawning, checking = c_program_rules(c_source, suite)
    system = env.config.translation.system_message
    turns: list[Turn] = []
    attempts: list[Attempt] = []
    requests = 0
    max_attempts = env.config.translation.max_attempts
    stage_count = len(STAGES) if env.config.translation.idiomatic else 1
    for number in range(1, max_attempts + 1):
        messages = conversation(system, first, turns)
        env.record({"stage": stage, "attempt": number, "event": "prompt", "content": messages[-1]["content"]})
        try:
            with request_rank(stage_rank(STAGES.index(stage), stage_count, number, max_attempts)):
                completion = await env.model.complete(messages, purpose=f"{name}:{stage}:{number}",
                                                      n=env.config.translation.candidates)
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
        # Several choices (``[pipeline] candidates``) are verified side by side; the stage goes on with the
        # first that verifies, else with the most promising (pipeline.candidates).
        judgement = await judge_choices(completion.candidates, stage, env.verifier, suite, oracle,
                                        c_runs_other_code=spawning, self_check=checking)
        chosen, check = judgement.chosen, judgement.chosen.verdict
        _record_answer(env, stage, number, completion, judgement)
        attempts.append(Attempt(
            number, check.kind, check.message, check.code, completion.usage, completion.seconds,
            judgement.build_seconds, judgement.test_seconds, check.counts,
        ))
        env.record({"stage": stage, "attempt": number, "event": "verdict", "kind": check.kind,
                    "message": check.message})
        log.debug("%s %s attempt %d: %s", name, stage, number, check.message)
        if check.kind == "verified":
            return StageResult(stage, "verified", tuple(attempts), code=check.code,
                               wall_seconds=time.perf_counter() - started, requests=requests)
        if chosen.choice.truncated:
            # A cut-off answer filled what the context left: sent back whole, the repair would not fit.
            tokens = completion.usage.completion_tokens // len(completion.candidates)
            turns.append(cut_off_turn(tokens, check.code or chosen.code, check.message, check.feedback))
        else:
            turns.append(Turn(chosen.choice.text, check.message, check.feedback))
    last = attempts[-1].message if attempts else "no attempt was made"
    if attempts and attempts[-1].kind == "truncated" and "truncated" not in last:
        last = f"{last} (truncated)"
    return StageResult(
        stage, "failed", tuple(attempts),
        reason=f"not verified after {len(attempts)} attempts; last: {last}",
        wall_seconds=time.perf_counter() - started, requests=requests,
    )


def _record_answer(env: StageEnv, stage: StageName, number: int, completion: Completion, judgement: Judgement) -> None:
    """The transcript's answer event: the answer the stage goes on with and the request's tokens; with several
    choices, which one it is and what became of each (``cancelled``: another verified first)."""
    chosen = judgement.chosen
    event: dict[str, Any] = {"stage": stage, "attempt": number, "event": "answer", "content": chosen.choice.text,
                             "finish_reason": chosen.choice.finish_reason,
                             "prompt_tokens": completion.usage.prompt_tokens,
                             "completion_tokens": completion.usage.completion_tokens}
    if len(completion.candidates) > 1:
        verdicts = {j.index: j.verdict for j in judgement.judged}
        event["candidate"] = chosen.index + 1
        event["candidates"] = [
            {"candidate": i + 1, "finish_reason": c.finish_reason,
             "kind": verdicts[i].kind if i in verdicts else "cancelled",
             "message": verdicts[i].message if i in verdicts else "another candidate verified first",
             **({"content": c.text} if i != chosen.index else {})}
            for i, c in enumerate(completion.candidates)
        ]
    env.record(event)
