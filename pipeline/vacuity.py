"""Tests that prove nothing: find them before a stage can be "verified" by them.

A test *exercises the program* when some program could fail it. Two do-nothing programs stand in for the
laziest translation: one prints nothing and exits 0, the other prints nothing and exits 1. A test that both
pass would pass for any translation at all, so a task with such a test fails before a request is spent,
with ``test N does not exercise the program``. The cases:

- a command without ``%t`` never runs the program (decided without running anything);
- a sample whose expected output is empty passes for a program that prints nothing, whatever its exit
  status (sample runs judge output only, as SACToR's ``run-tests`` does; decided without running anything).
  Beside tests that do expect output it is a real check ("prints nothing on this input": CodeNet has such
  samples), so it fails the task only when every test of the task is vacuous;
- any other command runs in the sandbox against both do-nothing programs, the exit-1 one only when the
  exit-0 one passed. A self-checking test (``%t N`` judged by its exit status) fails for the exit-1 program,
  so it counts as exercising the program: that is all the test alone can say (the verifier adds a control
  for TransCoder-style tasks, :mod:`pipeline.self_check`).

Verdicts are cached by the task's input hash under the cache directory, so a task is checked once, not once
per run.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

import anyio

from .cache import read_json, write_json
from .records import TestSuite
from .sandbox import Limits, Sandbox
from .testing import TARGET_TOKEN, normalize_output, run_test_suite

log = logging.getLogger(__name__)

#: Bump when the rules above change, so cached verdicts from older rules are not reused.
RULES_VERSION = 1

_DO_NOTHING = {"exit-0": "#!/bin/sh\nexit 0\n", "exit-1": "#!/bin/sh\nexit 1\n"}


@dataclass(frozen=True)
class Vacuous:
    """One test that no program can fail, and why."""

    index: int
    why: str
    #: True for a sample that expects no output: vacuous alone, a real check beside tests expecting output.
    empty_output: bool = False

    def message(self) -> str:
        return f"test {self.index} does not exercise the program: {self.why}"


def static_findings(suite: TestSuite) -> list[Vacuous]:
    """The vacuous tests that reading the suite is enough to find."""
    found: list[Vacuous] = []
    for case in suite.cases:
        if case.sample is not None:
            if normalize_output(case.sample.output) == "":
                found.append(Vacuous(case.index, "its expected output is empty, so a program that prints "
                                                 "nothing passes it; give the sample an expected output",
                                     empty_output=True))
        elif TARGET_TOKEN not in case.argv:
            found.append(Vacuous(case.index, f"the command never runs the program (no {TARGET_TOKEN} in "
                                             f"{case.raw!r}); put {TARGET_TOKEN} where the program goes"))
    return found


async def find_vacuous(
    suite: TestSuite, *, sandbox: Sandbox, limits: Limits, cpu: anyio.CapacityLimiter,
    cache_dir: Path | None = None, key: str = "",
) -> list[Vacuous]:
    """The tests of ``suite`` that keep it from verifying anything, in test order; empty when it is sound.

    That is every test a do-nothing program passes, except samples expecting no output when some other
    test does exercise the program.

    ``key`` (the task's input hash plus whatever selects the cases) names the cached verdict in ``cache_dir``;
    without either nothing is cached. Errors of the sandbox itself propagate.
    """
    found = {v.index: v for v in static_findings(suite)}
    to_run = [c for c in suite.cases if c.sample is None and c.index not in found]
    if not to_run:
        return _decisive(found, suite)
    cache = _cache_path(cache_dir, key, suite) if cache_dir is not None and key else None
    cached = await anyio.to_thread.run_sync(_read_cache, cache) if cache is not None else None
    if cached is None:
        cached = await _run_do_nothing(replace(suite, cases=tuple(to_run)), sandbox, limits, cpu)
        if cache is not None:
            await anyio.to_thread.run_sync(write_json, cache, cached)
    for index in cached:
        found[index] = Vacuous(index, "it passes for a program that prints nothing and exits 0, and for one "
                                      "that exits 1; make it check the program's output or exit status")
    return _decisive(found, suite)


def _decisive(found: dict[int, Vacuous], suite: TestSuite) -> list[Vacuous]:
    if len(found) < len(suite.cases) and all(v.empty_output for v in found.values()):
        return []
    return sorted(found.values(), key=lambda v: v.index)


async def _run_do_nothing(suite: TestSuite, sandbox: Sandbox, limits: Limits, cpu: anyio.CapacityLimiter) -> list[int]:
    """Indexes of the cases that both do-nothing programs pass."""
    async with sandbox.build_dir() as directory:
        programs = await anyio.to_thread.run_sync(_write_programs, directory)
        passing = suite
        for name in ("exit-0", "exit-1"):
            async with cpu:
                verdict = await run_test_suite(programs[name], passing, sandbox=sandbox, limits=limits)
            passing = replace(passing, cases=tuple(o.case for o in verdict.outcomes if o.passed))
            if not passing.cases:
                return []
    return [case.index for case in passing.cases]


def _write_programs(directory: Path) -> dict[str, Path]:
    programs = {}
    for name, text in _DO_NOTHING.items():
        path = directory / name
        path.write_text(text)
        os.chmod(path, 0o755)
        programs[name] = path
    return programs


def _cache_path(cache_dir: Path, key: str, suite: TestSuite) -> Path:
    indexes = ",".join(str(c.index) for c in suite.cases)
    digest = hashlib.sha256(f"{RULES_VERSION}\0{key}\0{indexes}".encode()).hexdigest()
    return cache_dir / "vacuity" / f"{digest[:32]}.json"


def _read_cache(path: Path) -> list[int] | None:
    data = read_json(path)
    if isinstance(data, list) and all(isinstance(i, int) for i in data):
        return data
    return None
