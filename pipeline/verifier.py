"""The local verifier: refuse, build with rustc and test in the sandbox, on this machine's cores.

:class:`LocalVerifier` implements :class:`~pipeline.interfaces.Verifier` with the toolchain, the sandbox and
the engine's CPU limiter (one slot per compile or test process). The verdict rules live here once:
:func:`refusal` (what is rejected before compiling) and :func:`build_failure` (what a failed build tells the
model); the benchmarks' baselines reuse the whole verifier.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from .build import BuildResult, Toolchain
from .config import Config
from .records import STAGE_SPECS, AttemptKind, Candidate, StageName, Verdict
from .rust_source import first_unsafe_line
from .sandbox import Sandbox
from .testing import TestSuite, TestVerdict, run_test_suite
from .vacuity import find_vacuous

log = logging.getLogger(__name__)

#: How a verifier runs a suite against a built program (the sandbox by default; benchmarks swap in others).
TestRunner = Callable[[Path, TestSuite], Awaitable[TestVerdict]]

#: Feedback longer than this is trimmed: the compiler and test output must not crowd out the program.
FEEDBACK_CHARS = 6000
_ERROR_CODE = re.compile(r"\berror\[(E[0-9]{4})\]")


def refusal(stage: StageName, code: str) -> tuple[AttemptKind, str, str] | None:
    """(kind, message, feedback) when a candidate is rejected before compiling, else None."""
    if STAGE_SPECS[stage].safe_only:
        line = first_unsafe_line(code)
        if line is not None:
            msg = f"the {stage} program uses `unsafe` (line {line}); it was rejected without compiling"
            return "refused", msg, msg + ". Rewrite it in safe Rust: no unsafe, no libc, no raw pointers."
    return None


def build_failure(build: BuildResult) -> tuple[AttemptKind, str, str] | None:
    """(kind, message, feedback) when a build was refused or failed, else None."""
    if build.refused:
        return "refused", build.refused, build.refused
    if not build.ok or build.binary is None:
        count = f"{build.error_count} error{'s' if build.error_count != 1 else ''}"
        # rustc's error codes in the message, so failure files and reports can count them.
        codes = ", ".join(dict.fromkeys(_ERROR_CODE.findall(build.diagnostics)))
        return ("compile_error", f"the program does not compile ({count}{': ' + codes if codes else ''})",
                f"The compiler reported:\n{build.diagnostics}")
    return None


@dataclass(frozen=True)
class LocalVerifier:
    """Builds and tests on this machine. Created once per run by the engine."""

    config: Config
    toolchain: Toolchain
    sandbox: Sandbox
    cpu: anyio.CapacityLimiter
    run_tests: TestRunner | None = None  # None: in the sandbox, under the run's limits

    async def verify(self, candidate: Candidate, suite: TestSuite) -> Verdict:
        """The first program of the candidate that compiles, tested; when none compiles, the verdict on the
        first (a refusal or its compiler errors)."""
        first: Verdict | None = None
        build_seconds = 0.0
        limits = self.sandbox.limits(
            wall_seconds=self.config.translation.test_timeout,
            output_bytes=self.config.translation.output_byte_limit,
        )
        async with self.sandbox.build_dir() as out_dir:
            for code in candidate.programs:
                refused = refusal(candidate.stage, code)
                if refused is not None:
                    first = first or Verdict(*refused, code=code)
                    continue
                async with self.cpu:
                    build = await self.toolchain.build(code, out_dir, max_diagnostic_chars=FEEDBACK_CHARS)
                build_seconds += build.seconds
                failed = build_failure(build)
                if failed is None and build.binary is not None:
                    break
                kind, message, feedback = failed or ("compile_error", "no binary was produced", "")
                first = first or Verdict(kind, message, feedback, code=code)
            else:
                assert first is not None, "a candidate holds at least one program"
                return Verdict(first.kind, first.message, first.feedback, first.code, build_seconds)
            started = time.perf_counter()
            async with self.cpu:
                if self.run_tests is not None:
                    verdict = await self.run_tests(build.binary, suite)
                else:
                    verdict = await run_test_suite(build.binary, suite, sandbox=self.sandbox, limits=limits)
            test_seconds = time.perf_counter() - started
        if verdict.passed:
            return Verdict("verified", f"all {len(verdict.outcomes)} tests passed", "", code, build_seconds,
                           test_seconds)
        failures = verdict.failures
        return Verdict(
            "test_failure",
            f"{len(failures)} of {len(verdict.outcomes)} tests failed; first: {failures[0].summary}",
            verdict.feedback(FEEDBACK_CHARS), code, build_seconds, test_seconds,
        )

    async def vacuous_tests(self, suite: TestSuite, key: str) -> list[str]:
        limits = self.sandbox.limits(
            wall_seconds=self.config.translation.test_timeout,
            output_bytes=self.config.translation.output_byte_limit,
        )
        found = await find_vacuous(suite, sandbox=self.sandbox, limits=limits, cpu=self.cpu,
                                   cache_dir=self.config.toolchain.resolved_cache_dir(), key=key)
        return [v.message() for v in found]

    async def code_stats(self, code: str) -> dict[str, Any]:
        try:
            async with self.sandbox.build_dir() as work, self.cpu:
                return await self.toolchain.clippy_stats(code, work)
        except OSError as exc:
            return {"error": f"clippy could not run: {exc}"}
