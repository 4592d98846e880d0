"""The stage loop against the two interfaces, with a fake model and a fake verifier: no HTTP, no rustc."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import Config, TranslationSettings
from pipeline.errors import RequestFailed
from pipeline.records import Candidate, Completion, Oracle, OracleInput, TestCounts, TestSuite, Usage, Verdict
from pipeline.stages import StageEnv, run_stage

SUITE = TestSuite(base_dir=Path("."), cases=(), files=())
GOOD = 'fn main() {\n    println!("ok");\n}\n'
BAD = 'fn main() {\n    let x: i32 = "no";\n}\n'
GOOD_SHIPPED = 'fn main() {\n    println!("ok"); // i32 where C has long\n}\n'


def fenced(code: str) -> str:
    return f"Here it is:\n\n```rust\n{code}```\n"


@dataclass
class FakeModel:
    """Answers from a script; an exception in the script is raised instead. Records every conversation."""

    script: list[str | Exception]
    seen: list[list[dict[str, str]]] = field(default_factory=list)

    async def complete(self, messages: Sequence[Mapping[str, str]], *, purpose: str = "", n: int = 1) -> Completion:
        self.seen.append([dict(m) for m in messages])
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        return Completion(item, "stop", Usage(100, 50), 0.01, 0.0, 1)


@dataclass
class FakeVerifier:
    """Verdicts by program text: GOOD verifies, BAD does not compile, anything else fails a test; with an oracle,
    GOOD_SHIPPED passes the shipped test but disagrees with C on the oracle's first input."""

    judged: list[Candidate] = field(default_factory=list)
    oracles: list[Oracle | None] = field(default_factory=list)

    async def verify(self, candidate: Candidate, suite: TestSuite, oracle: Oracle | None = None) -> Verdict:
        self.judged.append(candidate)
        self.oracles.append(oracle)
        code = candidate.programs[0]
        if code == GOOD_SHIPPED and oracle is not None and oracle.inputs:
            return Verdict("differential_mismatch", "all 1 tests passed, but generated input 0 differs",
                           f"Standard input:\n{oracle.inputs[0].input}", code, counts=TestCounts(1, 1, 0, 1))
        if code in (GOOD, GOOD_SHIPPED):
            return Verdict("verified", "all 1 tests passed", "", code, counts=TestCounts(1, 1, 1, 1))
        if code == BAD:
            return Verdict("compile_error", "the program does not compile (1 error)",
                           "The compiler reported:\nerror[E0308]: mismatched types", code)
        return Verdict("test_failure", "1 of 1 tests failed", "Expected output:\nok\nActual output:\nnope", code)

    async def vacuous_tests(self, suite: TestSuite, key: str) -> list[str]:
        return []

    async def oracle(self, c_source: str, suite: TestSuite, key: str, proposed: Sequence[str] = ()) -> Oracle | None:
        return None

    async def code_stats(self, code: str) -> dict[str, Any]:
        return {}


def env(model: FakeModel, verifier: FakeVerifier, attempts: int = 3) -> StageEnv:
    config = Config(translation=TranslationSettings(max_attempts=attempts))
    return StageEnv(config, model, verifier)


async def test_verified_at_the_first_attempt() -> None:
    """One answer that verifies: one request, the verified code in the result."""
    model, verifier = FakeModel([fenced(GOOD)]), FakeVerifier()
    result = await run_stage(env(model, verifier), "unidiomatic", name="p.c", c_source="int main(){}", suite=SUITE)
    assert (result.status, result.code, len(result.attempts), result.requests) == ("verified", GOOD, 1, 1)
    assert verifier.judged == [Candidate("unidiomatic", (GOOD,))]
    assert result.usage == Usage(100, 50)


@pytest.mark.parametrize(("first", "kind", "quoted"), [
    pytest.param(BAD, "compile_error", "error[E0308]: mismatched types", id="compile-error"),
    pytest.param('fn main() {\n    println!("nope");\n}\n', "test_failure", "Actual output:\nnope",
                 id="test-failure"),
])
async def test_repair_prompt_carries_the_verdicts_feedback(first: str, kind: str, quoted: str) -> None:
    """After a failed attempt the next conversation quotes the verifier's feedback, and the repair verifies."""
    model, verifier = FakeModel([fenced(first), fenced(GOOD)]), FakeVerifier()
    result = await run_stage(env(model, verifier), "unidiomatic", name="p.c", c_source="int main(){}", suite=SUITE)
    assert result.status == "verified"
    assert [a.kind for a in result.attempts] == [kind, "verified"]
    repair = model.seen[1][-1]["content"]
    assert quoted in repair
    assert first.strip() in model.seen[1][-2]["content"]  # the previous answer is in the conversation


async def test_request_failure_ends_the_stage_with_its_reason() -> None:
    """A request the server refuses for good fails the stage at once, without asking again."""
    model = FakeModel([RequestFailed("the server refused the request (HTTP 400: bad)")])
    result = await run_stage(env(model, FakeVerifier()), "unidiomatic", name="p.c", c_source="x", suite=SUITE)
    assert result.status == "failed"
    assert [a.kind for a in result.attempts] == ["request_failed"]
    assert "HTTP 400" in (result.reason or "")
    assert len(model.seen) == 1


async def test_attempt_limit_stops_the_loop() -> None:
    """Answers that never verify: exactly max_attempts requests, then a reason naming the last verdict."""
    model, verifier = FakeModel([fenced(BAD)] * 5), FakeVerifier()
    result = await run_stage(env(model, verifier, attempts=3), "unidiomatic", name="p.c", c_source="x",
                             suite=SUITE)
    assert result.status == "failed"
    assert len(model.seen) == 3 and len(result.attempts) == 3
    assert result.reason == "not verified after 3 attempts; last: the program does not compile (1 error)"


async def test_answer_without_code_is_not_sent_to_the_verifier() -> None:
    """Prose without a program is an attempt of kind no_code; the verifier is never asked."""
    model, verifier = FakeModel(["I cannot do that.", fenced(GOOD)]), FakeVerifier()
    result = await run_stage(env(model, verifier), "idiomatic", name="p.c", c_source="x", suite=SUITE,
                             rust_source=GOOD)
    assert [a.kind for a in result.attempts] == ["no_code", "verified"]
    assert verifier.judged == [Candidate("idiomatic", (GOOD,))]


async def test_the_oracle_reaches_every_verification_and_a_mismatch_is_repaired() -> None:
    """The task's oracle goes with the suite to each verify call; a differential mismatch is fed back like a test
    failure and the stage keeps the verified attempt's figures."""
    oracle = Oracle("stdin", (OracleInput("-5", "-5"),), tried=3)
    model, verifier = FakeModel([fenced(GOOD_SHIPPED), fenced(GOOD)]), FakeVerifier()
    result = await run_stage(env(model, verifier), "unidiomatic", name="p.c", c_source="x", suite=SUITE,
                             oracle=oracle)
    assert verifier.oracles == [oracle, oracle]
    assert [a.kind for a in result.attempts] == ["differential_mismatch", "verified"]
    assert "Standard input:\n-5" in model.seen[1][-1]["content"]
    assert result.counts == TestCounts(1, 1, 1, 1)
