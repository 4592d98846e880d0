"""The local verifier: refuse, build with rustc and test in the sandbox, on this machine's cores.

:class:`LocalVerifier` implements :class:`~pipeline.interfaces.Verifier` with the toolchain, the sandbox and
the engine's CPU limiter (one slot per compile or test process). The verdict rules live here once:
:func:`refusal` (what is rejected before compiling), :func:`build_failure` (what a failed build tells the
model) and :func:`mismatch` (a program that passes the shipped tests but not the C program's generated
inputs); the benchmarks' baselines reuse the whole verifier.

Differential testing is one more check here: :meth:`LocalVerifier.oracle` asks the C program (gcc, in the
sandbox, cached per task) for its outputs on generated inputs once per task, and :meth:`LocalVerifier.verify`
runs them after the shipped tests pass.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio

from . import self_check
from .build import SOURCE_NAME, BuildResult, Toolchain
from .config import Config
from .differential import RUN_SECONDS, applicable, build_oracle
from .records import STAGE_SPECS, AttemptKind, Candidate, Oracle, StageName, TestCounts, TestSuite, Verdict
from .rust_source import first_unsafe_line, foreign_code
from .sandbox import Limits, Sandbox
from .testing import TestVerdict, run_test_suite
from .vacuity import find_vacuous

log = logging.getLogger(__name__)

#: How a verifier runs a suite against a built program (the sandbox by default; benchmarks swap in others).
TestRunner = Callable[[Path, TestSuite], Awaitable[TestVerdict]]

#: Feedback longer than this is trimmed: the compiler and test output must not crowd out the program.
FEEDBACK_CHARS = 6000
_ERROR_CODE = re.compile(r"\berror\[(E[0-9]{4})\]")
#: The seed of the generated inputs: the same for every run, so a rerun tries the same inputs.
DIFFERENTIAL_SEED = 0
#: Seconds a translation may take on one generated input (the C program took at most RUN_SECONDS on it).
DIFFERENTIAL_WALL = 2 * RUN_SECONDS
_UNCHECKED = (
    "Every test passed, and every test also passed when f_filled was made to return a wrong value: the program's "
    "main does not check f_filled against f_gold, so its tests say nothing. Translate main as the C program's "
    "main is written: for the parameter set given as the first argument, compute f_filled and f_gold and exit "
    "with a non-zero status when they differ."
)
_MISMATCH_HEADER = (
    "Your program passes the task's tests, but on an input generated from them it does not behave like the C "
    "program. The expected output below is the C program's own output on that input (it is deterministic there "
    "and free of undefined behaviour). Make your program give the same output for this input and every "
    "similar one."
)


def refusal(
    stage: StageName, code: str, c_runs_other_code: bool = False, self_checking: bool = False,
) -> tuple[AttemptKind, str, str] | None:
    """(kind, message, feedback) when a candidate is rejected before compiling, else None: ``unsafe`` in a safe
    stage; code that runs other programs or code it does not hold when the C program does not
    (:func:`~pipeline.rust_source.foreign_code`); no ``f_filled`` in a self-checking task's translation
    (:func:`~pipeline.self_check.missing`)."""
    if self_checking:
        absent = self_check.missing(code)
        if absent is not None:
            return "refused", absent, absent + "."
    if not c_runs_other_code:
        foreign = foreign_code(code)
        if foreign is not None:
            return "refused", foreign, foreign
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


def mismatch(shipped: int, verdict: TestVerdict) -> tuple[str, str]:
    """(message, feedback) for a program that passed ``shipped`` tests but failed a generated input."""
    first = verdict.failures[0]
    sample = first.case.sample
    shown = repr(sample.input if len(sample.input) <= 60 else sample.input[:56] + "...") if sample else "?"
    why = first.summary.partition(": ")[2] or first.summary
    agreed = sum(o.passed for o in verdict.outcomes)
    message = (f"all {shipped} tests passed, but generated input {first.case.index} ({shown}) does not give the "
               f"C program's output: {why} ({agreed} generated input{'s' if agreed != 1 else ''} agreed before it; "
               "see differential_samples.json)")
    return message, f"{_MISMATCH_HEADER}\n\n{verdict.feedback(FEEDBACK_CHARS - len(_MISMATCH_HEADER) - 2)}"


@dataclass(frozen=True)
class LocalVerifier:
    """Builds and tests on this machine. Created once per run by the engine."""

    config: Config
    toolchain: Toolchain
    sandbox: Sandbox
    cpu: anyio.CapacityLimiter
    run_tests: TestRunner | None = None  # None: in the sandbox, under the run's limits

    async def verify(self, candidate: Candidate, suite: TestSuite, oracle: Oracle | None = None) -> Verdict:
        """The first program of the candidate that compiles, tested; when none compiles, the verdict on the
        first (a refusal or its compiler errors). A program that passes the shipped tests then runs the
        oracle's inputs, if any, and stops at the first that disagrees with the C program."""
        first: Verdict | None = None
        build_seconds = 0.0
        limits = self.sandbox.limits(
            wall_seconds=self.config.translation.test_timeout,
            output_bytes=self.config.translation.output_byte_limit,
        )
        # The first program that is not refused is written with the directories, in the same worker-thread trip;
        # the shipped tests run in the working copy made with them (#16).
        refusals = [refusal(candidate.stage, code, candidate.c_runs_other_code, candidate.self_check)
                    for code in candidate.programs]
        staged = next((c for c, r in zip(candidate.programs, refusals, strict=True) if r is None), None)
        async with self.sandbox.verification_dirs(
            suite.base_dir, suite.files, sources={SOURCE_NAME: staged} if staged is not None else None,
        ) as (out_dir, work):
            for code, refused in zip(candidate.programs, refusals, strict=True):
                if refused is not None:
                    first = first or Verdict(*refused, code=code)
                    continue
                # The CPU slot is held by rustc's process alone (see Toolchain.build).
                build = await self.toolchain.build(code, out_dir, max_diagnostic_chars=FEEDBACK_CHARS, cpu=self.cpu,
                                                   source_written=code is staged)
                staged = None  # main.rs holds the next program only once that is written
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
            verdict = await self._run(build.binary, suite, limits, workdir=work)
            shipped = len(verdict.outcomes)
            counts = TestCounts(shipped - len(verdict.failures), shipped)
            generated = oracle.suite(suite.base_dir) if oracle is not None and verdict.passed else None
            if generated is not None:
                wall = min(self.config.translation.test_timeout, DIFFERENTIAL_WALL)
                checked = await self._run(build.binary, generated, replace(limits, wall_seconds=wall),
                                          fail_fast=True)
                counts = TestCounts(shipped, shipped, sum(o.passed for o in checked.outcomes),
                                    len(checked.outcomes))
            test_seconds = time.perf_counter() - started
            # The control's own build and run are not the tests' time.
            unchecked = (verdict.passed and candidate.self_check
                         and await self._passes_when_wrong(code, out_dir, suite, limits))
        if not verdict.passed:
            failures = verdict.failures
            return Verdict(
                "test_failure",
                f"{len(failures)} of {shipped} tests failed; first: {failures[0].summary}",
                verdict.feedback(FEEDBACK_CHARS), code, build_seconds, test_seconds, counts,
            )
        if unchecked:
            return Verdict("test_failure", f"all {shipped} tests passed, but they pass too when f_filled answers "
                           "wrong: main does not check f_filled against f_gold", _UNCHECKED, code, build_seconds,
                           test_seconds, counts)
        if generated is not None and not checked.passed:
            message, feedback = mismatch(shipped, checked)
            return Verdict("differential_mismatch", message, feedback, code, build_seconds, test_seconds, counts)
        agrees = f"; agrees with C on {counts.agreed} generated inputs" if counts.generated else ""
        return Verdict("verified", f"all {shipped} tests passed{agrees}", "", code, build_seconds, test_seconds,
                       counts)

    async def _passes_when_wrong(self, code: str, out_dir: Path, suite: TestSuite, limits: Limits) -> bool:
        """The self-check control (:mod:`pipeline.self_check`): whether the tests still pass with ``code``'s
        f_filled answering wrong. False when the control cannot be built (the tests' verdict stands)."""
        wrong = self_check.perturbed(code)
        if wrong is None:
            log.info("self-check control: not built for this program (f_filled's form); its tests' verdict stands")
            return False
        build = await self.toolchain.build(wrong, out_dir, max_diagnostic_chars=FEEDBACK_CHARS, cpu=self.cpu)
        if build_failure(build) is not None or build.binary is None:
            log.info("self-check control: the program with f_filled answering wrong does not compile; its tests' "
                     "verdict stands")
            return False
        return (await self._run(build.binary, suite, limits)).passed

    async def _run(
        self, binary: Path, suite: TestSuite, limits: Limits, *, fail_fast: bool = False, workdir: Path | None = None,
    ) -> TestVerdict:
        if self.run_tests is not None:
            async with self.cpu:
                return await self.run_tests(binary, suite)
        # Each test's process holds a CPU slot while it lives, not the working copy and the bookkeeping (#16).
        return await run_test_suite(binary, suite, sandbox=self.sandbox, limits=limits, fail_fast=fail_fast,
                                    cpu=self.cpu, workdir=workdir)

    async def oracle(
        self, c_source: str, suite: TestSuite, key: str, proposed: Sequence[str] = ()
    ) -> Oracle | None:
        budget = self.config.translation.differential
        if budget <= 0:
            return None
        if await anyio.to_thread.run_sync(shutil.which, "gcc") is None:
            feed = applicable(suite)[0]
            return Oracle(feed, note="differential testing needs gcc, which is not installed (apt-get install gcc); "
                                     "only the shipped tests count")
        feed, shipped, _ = applicable(suite)
        # The generated inputs derive from the shipped ones (which --num-tests selects) and how they are fed.
        selected = hashlib.sha256(repr((feed, shipped)).encode()).hexdigest()[:16]
        limits = self.sandbox.limits(
            wall_seconds=self.config.translation.test_timeout,
            output_bytes=self.config.translation.output_byte_limit,
        )
        return await build_oracle(c_source, suite, sandbox=self.sandbox, cpu=self.cpu, budget=budget,
                                  seed=DIFFERENTIAL_SEED, limits=limits,
                                  cache_dir=self.config.toolchain.resolved_cache_dir(), key=f"{key}:{selected}",
                                  proposed=proposed)

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
