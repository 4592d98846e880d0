"""The request-check-repair loop of one function-level item (a function group, a global or a type).

Ask, extract the Rust, check it; on a failure send the model the check's feedback as a repair turn, until the
item verifies or the attempts run out. What differs between item kinds is passed in: the first request, the
reply wording of a repair, and the check (:class:`Check`). Model failures of one request end the item (the
task's other items go on); fatal errors propagate.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import TaskFailure
from .extract import extract_rust
from .interfaces import Model
from .prompts import FUNCTION_NO_CODE, Turn, conversation
from .records import Usage


@dataclass(frozen=True)
class Check:
    """One answer's verdict: ``stage`` (``passed`` when it verified), the feedback for the repair turn, the code
    to keep, and whether another attempt could help (``final``: it cannot, e.g. an unsupported construct)."""

    stage: str
    feedback: str = ""
    code: str = ""
    final: bool = False
    message: str = ""  # the attempt's one-line summary; default: the feedback's first line

    @property
    def passed(self) -> bool:
        return self.stage == "passed"

    @property
    def summary(self) -> str:
        return self.message or (self.feedback.splitlines()[0] if self.feedback else self.stage)


@dataclass(frozen=True)
class Try:
    """One attempt: its stage (``request_failed``, ``no_code``, ``truncated`` or the check's), one-line
    summary, the answer's code (None without code), the completion's usage and seconds, the check's seconds."""

    number: int
    stage: str
    summary: str
    code: str | None = None
    usage: Usage = field(default_factory=Usage)
    seconds: float = 0.0
    check_seconds: float = 0.0


@dataclass(frozen=True)
class LoopEnd:
    """How the loop ended: the verified code (None when it failed), every attempt, the reason of a failure
    and the chat requests spent."""

    rust: str | None
    tries: tuple[Try, ...]
    reason: str
    requests: int

    @property
    def attempts(self) -> tuple[tuple[str, str], ...]:
        """(stage, summary) per attempt."""
        return tuple((t.stage, t.summary) for t in self.tries)


async def ask_until_verified(
    model: Model,
    *,
    system: str,
    first: str,
    reply: str,
    max_attempts: int,
    purpose: str,
    check: Callable[[str], Awaitable[Check]],
    record: Callable[[dict[str, Any]], None],
    tag: dict[str, Any],
    gave_up: str = "not verified",
) -> LoopEnd:
    """Up to ``max_attempts`` requests for one item; ``record`` gets the prompt, answer and verdict events,
    each carrying ``tag`` (which item). A failure's reason starts with ``gave_up``."""
    turns: list[Turn] = []
    tries: list[Try] = []
    requests = 0
    for number in range(1, max_attempts + 1):
        messages = conversation(system, first, turns, reply=reply)
        record({**tag, "attempt": number, "event": "prompt", "content": messages[-1]["content"]})
        try:
            completion = await model.complete(messages, purpose=f"{purpose}:{number}")
        except TaskFailure as exc:
            tries.append(Try(number, "request_failed", str(exc)))
            return LoopEnd(None, tuple(tries), str(exc), requests + exc.requests)
        requests += completion.requests
        record({**tag, "attempt": number, "event": "answer", "content": completion.text,
                "finish_reason": completion.finish_reason, "prompt_tokens": completion.usage.prompt_tokens,
                "completion_tokens": completion.usage.completion_tokens, "seconds": completion.seconds})
        extraction = extract_rust(completion.text, truncated=completion.truncated)
        if extraction.code is None:
            # extract's wording asks for a whole program; an item's repair asks for the item (``reply``).
            problem = (extraction.problem or "the answer contains no Rust code").split(": reply with")[0]
            tries.append(Try(number, "truncated" if completion.truncated else "no_code", problem, None,
                             completion.usage, completion.seconds))
            turns.append(Turn(completion.text, problem, FUNCTION_NO_CODE.format(problem=problem)))
            continue
        started = time.perf_counter()
        verdict = await check(extraction.code)
        tries.append(Try(number, verdict.stage, verdict.summary, extraction.code, completion.usage,
                         completion.seconds, time.perf_counter() - started))
        record({**tag, "attempt": number, "event": "verdict", "kind": verdict.stage})
        if verdict.passed:
            return LoopEnd(verdict.code, tuple(tries), "", requests)
        if verdict.final:
            return LoopEnd(None, tuple(tries), verdict.feedback, requests)
        turns.append(Turn(completion.text, verdict.summary, verdict.feedback))
    return LoopEnd(None, tuple(tries), f"{gave_up} after {len(tries)} attempts; last: {tries[-1].summary}",
                   requests)
