"""The two interfaces the stage loop is written against.

A second model server is one more :class:`Model` (a pool of clients); a remote executor is one more
:class:`Verifier`; differential testing is one more check inside a verifier. The stage loop
(:mod:`pipeline.stages`) and a task's translation (:mod:`pipeline.translate`) know nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from .records import Candidate, Completion, Oracle, TestSuite, Verdict


class Model(Protocol):
    """Completes conversations. Implemented by :class:`pipeline.llm.ModelClient`."""

    async def complete(
        self, messages: Sequence[Mapping[str, str]], *, purpose: str = "", n: int = 1
    ) -> Completion:
        """The answer to ``messages`` (``n`` > 1: that many choices in one request, in ``Completion.choices``).

        Raises :class:`~pipeline.errors.TaskFailure` when this request cannot succeed (the stage records it)
        and :class:`~pipeline.errors.FatalError` when the run must stop.
        """
        ...


class Verifier(Protocol):
    """Judges candidate programs against a task's tests. Implemented by :class:`pipeline.verifier.LocalVerifier`
    (this machine) and :class:`pipeline.ray_executor.RayVerifier` (a Ray cluster)."""

    async def verify(self, candidate: Candidate, suite: TestSuite, oracle: Oracle | None = None) -> Verdict:
        """Refuse, build and test the candidate; a failing program is a verdict, not an exception. With an
        ``oracle``, a program that passes ``suite`` must also agree with the C program on its inputs."""
        ...

    async def oracle(
        self, c_source: str, suite: TestSuite, key: str, proposed: Sequence[str] = ()
    ) -> Oracle | None:
        """What the C program says on inputs beyond the suite's (differential testing), prepared once per task;
        None when switched off. ``key`` names the task's inputs, for caching; ``proposed`` inputs (the model's)
        are tried first, under the same rules."""
        ...

    async def vacuous_tests(self, suite: TestSuite, key: str) -> list[str]:
        """Why the suite cannot verify anything (one message per test that proves nothing); empty when sound.
        ``key`` names the task's inputs, for caching."""
        ...

    async def code_stats(self, code: str) -> dict[str, Any]:
        """Quality figures of a verified program (clippy warnings per lint, unsafe share)."""
        ...
