"""Several answers to one request (``[pipeline] candidates``, vLLM's ``n``), verified side by side.

Use :func:`judge_choices` on a :class:`~pipeline.records.Completion`'s choices: each is extracted and, when it
holds a program, verified; the verifications run at once in one task group (each compile and test still takes a
slot of the verifier's CPU limiter, so ``--jobs`` bounds them as before). The first to verify wins: the others are
cancelled, which kills their compiler and test process groups (the sandbox kills a run's group whenever its
caller is cancelled). Choices holding the same programs are verified once.

When none verifies, the stage's repair turn continues from the most promising choice, ranked by
:func:`promise`: a program that ran the tests beats one that did not compile, which beats one refused before
compiling, which beats an answer without (complete) code; among tested programs, the one that agreed with the C
program on generated inputs beats one that failed a shipped test, and more tests passed beat fewer; ties go to
the server's order. The model then repairs the program that got furthest, with that program's feedback.

Raises only what the verifier raises (fatal errors); every failing choice is a verdict.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import anyio

from .extract import extract_rust
from .interfaces import Verifier
from .records import AttemptKind, Candidate, Choice, Oracle, StageName, TestSuite, Verdict

#: How far a verdict got, for :func:`promise` (higher: closer to verified).
_PROGRESS: dict[AttemptKind, int] = {
    "verified": 7, "differential_mismatch": 6, "test_failure": 5, "compile_error": 4, "refused": 3,
    "truncated": 2, "no_code": 1, "request_failed": 0,
}


@dataclass(frozen=True)
class Judged:
    """One choice and its verdict. ``index`` is its place in the server's order (0-based); ``code`` the program
    the extraction found (None: none); ``cut_off`` whether the extraction found the answer cut off."""

    index: int
    choice: Choice
    verdict: Verdict
    code: str | None
    cut_off: bool = False


@dataclass(frozen=True)
class Judgement:
    """What became of a request's choices: the one the stage goes on with (the verified one, else the most
    promising), and every choice judged before the winner ended the rest (in the server's order)."""

    chosen: Judged
    judged: tuple[Judged, ...]
    cancelled: int = 0  # choices whose verification was cancelled because another verified first

    @property
    def build_seconds(self) -> float:
        return sum(j.verdict.build_seconds for j in self._distinct())

    @property
    def test_seconds(self) -> float:
        return sum(j.verdict.test_seconds for j in self._distinct())

    def _distinct(self) -> list[Judged]:
        # Choices holding the same programs share one verification: count its seconds once.
        seen: set[int] = set()
        out: list[Judged] = []
        for j in self.judged:
            if id(j.verdict) not in seen:
                seen.add(id(j.verdict))
                out.append(j)
        return out


def promise(judged: Judged) -> tuple[int, int, int, int]:
    """The ranking key of a choice that did not verify (higher is more promising; see the module docstring)."""
    counts = judged.verdict.counts
    return (_PROGRESS[judged.verdict.kind], counts.passed, counts.agreed, -judged.index)


async def judge_choices(
    choices: Sequence[Choice], stage: StageName, verifier: Verifier, suite: TestSuite, oracle: Oracle | None = None,
    *, c_runs_other_code: bool = False, self_check: bool = False,
) -> Judgement:
    """Extract and verify every choice side by side; the first that verifies ends the others.
    ``c_runs_other_code``, ``self_check``: see :class:`~pipeline.records.Candidate`.

    One choice is judged as the stage loop always judged its answer. Raises what ``verifier.verify`` raises.
    """
    extracted = [extract_rust(c.text, truncated=c.truncated) for c in choices]
    verdicts: dict[int, Verdict] = {}
    groups: dict[tuple[str, ...], list[int]] = {}
    for index, extraction in enumerate(extracted):
        if extraction.code is None:
            kind: AttemptKind = "truncated" if choices[index].truncated or extraction.cut_off else "no_code"
            problem = extraction.problem or "the answer contains no Rust code"
            verdicts[index] = Verdict(kind, problem, problem)
        else:
            groups.setdefault(extraction.candidates or (extraction.code,), []).append(index)

    failures: list[Exception] = []

    async def verify(programs: tuple[str, ...], indices: list[int], scope: anyio.CancelScope) -> None:
        try:
            verdict = await verifier.verify(Candidate(stage, programs, c_runs_other_code, self_check), suite, oracle)
        except Exception as exc:  # a fatal error (a full disk): raised below as it is, not in an exception group
            failures.append(exc)
            scope.cancel()
            return
        for index in indices:
            verdicts[index] = verdict
        if verdict.verified:
            scope.cancel()  # the first verified wins: the others' builds and test runs are killed

    if len(groups) == 1:
        (programs, indices), = groups.items()
        await verify(programs, indices, anyio.CancelScope())
    elif groups:
        async with anyio.create_task_group() as tg:
            for programs, indices in groups.items():
                tg.start_soon(verify, programs, indices, tg.cancel_scope)
    if failures:
        raise failures[0]
    judged = tuple(Judged(i, choices[i], verdicts[i], extracted[i].code, extracted[i].cut_off)
                   for i in range(len(choices)) if i in verdicts)
    winners = [j for j in judged if j.verdict.verified]
    chosen = winners[0] if winners else max(judged, key=promise)
    return Judgement(chosen, judged, cancelled=len(choices) - len(judged))
