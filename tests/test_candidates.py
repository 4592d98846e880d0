"""Several choices per request in the stage loop, with a fake model and a fake verifier: ranking, sharing, errors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pytest

from pipeline.config import Config, TranslationSettings
from pipeline.errors import DiskFull
from pipeline.records import Candidate, Choice, Completion, Oracle, TestSuite, Usage, Verdict
from pipeline.stages import StageEnv, run_stage
from tests.test_stage_loop import BAD, GOOD, SUITE, FakeVerifier, fenced

WRONG = 'fn main() {\n    println!("nope");\n}\n'


@dataclass
class ChoicesModel:
    """Answers each request with the next list of choices; records the conversations and the n asked for."""

    script: list[list[str]]
    seen: list[tuple[int, list[dict[str, str]]]] = field(default_factory=list)

    async def complete(self, messages: Sequence[Mapping[str, str]], *, purpose: str = "", n: int = 1) -> Completion:
        self.seen.append((n, [dict(m) for m in messages]))
        texts = self.script.pop(0)
        return Completion(texts[0], "stop", Usage(100, 50 * len(texts)), 0.01, 0.0, 1,
                          choices=tuple(Choice(t, "stop") for t in texts))


def env(model: ChoicesModel, verifier: object, candidates: int) -> StageEnv:
    return StageEnv(Config(translation=TranslationSettings(max_attempts=3, candidates=candidates)), model,
                    verifier)  # type: ignore[arg-type]


async def test_the_repair_goes_on_from_the_choice_that_got_furthest() -> None:
    """No code, a compile error and a test failure: the repair quotes the test failure's program and feedback."""
    model = ChoicesModel([["no code here", fenced(BAD), fenced(WRONG)], [fenced(GOOD)] * 3])
    result = await run_stage(env(model, FakeVerifier(), 3), "unidiomatic", name="p.c", c_source="x", suite=SUITE)
    assert result.status == "verified"
    assert [n for n, _ in model.seen] == [3, 3]
    repair = model.seen[1][1]
    assert WRONG.strip() in repair[-2]["content"]
    assert "Actual output:\nnope" in repair[-1]["content"]
    assert [a.kind for a in result.attempts] == ["test_failure", "verified"]
    assert result.usage == Usage(200, 300)  # every choice's completion tokens


async def test_choices_with_the_same_program_are_verified_once() -> None:
    """Two identical answers and a different one: two verifications, not three."""
    verifier = FakeVerifier()
    model = ChoicesModel([[fenced(WRONG), fenced(WRONG), fenced(BAD)], [fenced(GOOD)] * 3])
    await run_stage(env(model, verifier, 3), "unidiomatic", name="p.c", c_source="x", suite=SUITE)
    assert sorted(c.programs for c in verifier.judged[:2]) == sorted([(WRONG,), (BAD,)])
    assert len(verifier.judged) == 3  # two for the first request, one for the second


@dataclass
class FullDisk(FakeVerifier):
    judged: list[Candidate] = field(default_factory=list)

    async def verify(self, candidate: Candidate, suite: TestSuite, oracle: Oracle | None = None) -> Verdict:
        if candidate.programs == (BAD,):
            raise DiskFull("no space left on device")
        return await super().verify(candidate, suite, oracle)


async def test_a_fatal_error_of_one_choice_stops_the_stage_as_itself() -> None:
    """A full disk while one choice is verified is raised as DiskFull (the run stops), not as an exception group."""
    model = ChoicesModel([[fenced(WRONG), fenced(BAD)]])
    with pytest.raises(DiskFull):
        await run_stage(env(model, FullDisk(), 2), "unidiomatic", name="p.c", c_source="x", suite=SUITE)
