"""Plain values every layer passes around: what a model answered, what a verifier said, how a stage ended.

This module sits at the bottom: it imports nothing of the model client, the sandbox, the toolchain or the
stage loop, so the ledger, the results writer and the report can read these records without them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

StageName = Literal["unidiomatic", "idiomatic"]


@dataclass(frozen=True)
class StageSpec:
    """One stage, declared once: its name, whether it must be safe Rust, and where its results go."""

    name: StageName
    safe_only: bool  # refuse any `unsafe` before compiling
    needs_verified_previous: bool  # starts from the previous stage's verified program

    @property
    def result_dir(self) -> str:
        """The folder of its verified program and statistics in SACToR's layout."""
        return f"translated_code_{self.name}"


#: The stages in the order they run; progress, results, summaries and refusals follow this table.
STAGE_SPECS: dict[StageName, StageSpec] = {
    "unidiomatic": StageSpec("unidiomatic", safe_only=False, needs_verified_previous=False),
    "idiomatic": StageSpec("idiomatic", safe_only=True, needs_verified_previous=True),
}
STAGES: tuple[StageName, ...] = tuple(STAGE_SPECS)

AttemptKind = Literal[
    "verified", "no_code", "truncated", "refused", "compile_error", "test_failure", "request_failed"
]


@dataclass(frozen=True)
class TaskKey:
    """What a task's result depends on: its input files' digest and the fingerprint of the settings that shape
    results. Two runs with equal keys would do the same work; the ledger stores it as ``str(key)``."""

    input_hash: str
    settings: str

    def __str__(self) -> str:
        return f"{self.input_hash}:{self.settings}"


@dataclass(frozen=True)
class Usage:
    """Token counts the server reported for one completion (zeros when it reported none)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens, self.completion_tokens + other.completion_tokens
        )


@dataclass(frozen=True)
class Completion:
    """The model's answer to one conversation."""

    text: str
    finish_reason: str
    usage: Usage
    seconds: float  # wall time, including retries and waiting for a request slot
    queued_seconds: float  # time spent waiting for a request slot (the limiter)
    requests: int  # chat requests sent for it (1 + retries)

    @property
    def truncated(self) -> bool:
        """True when the model stopped at max_tokens: the text is incomplete."""
        return self.finish_reason == "length"


@dataclass(frozen=True)
class Candidate:
    """What a stage asks a verifier to judge: the complete programs of one answer, in order of preference."""

    stage: StageName
    programs: tuple[str, ...]


@dataclass(frozen=True)
class Verdict:
    """A verifier's judgement of a candidate. ``code`` is the program it is about (the one that compiled,
    or the first when none did); ``feedback`` is what the model is told in the repair prompt."""

    kind: AttemptKind
    message: str
    feedback: str = ""
    code: str | None = None
    build_seconds: float = 0.0
    test_seconds: float = 0.0

    @property
    def verified(self) -> bool:
        return self.kind == "verified"


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
