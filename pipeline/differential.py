"""Differential testing: the C program is the oracle for inputs beyond the shipped tests.

For a task whose tests feed inputs (sample lists, ``sactor run-tests``), :func:`build_oracle` compiles the C
program with gcc, derives more inputs from the shipped ones (:func:`mutations`: no model needed; inputs the
model proposed, :mod:`pipeline.proposals`, go first), and keeps an input only when the C program is a
trustworthy oracle on it (:func:`judge_inputs` applies the same rules to given inputs, for ``generate-tests``):

- it ends by itself within the deadline, without a signal and within the output cap;
- it is deterministic: two runs agree, the second with the wall clock shifted by months (an ``LD_PRELOAD``
  shim over ``time``, ``gettimeofday`` and ``clock_gettime``), so ``srand(time(NULL))`` and printed dates
  are caught even when both runs fall in the same second;
- it is clean under AddressSanitizer and UndefinedBehaviorSanitizer (an input on which the C program has
  undefined behaviour is no evidence of what the translation should do);
- a build at ``-O2``, run without the time shim, prints the same: what the sanitizers cannot see (a read of
  uninitialised memory) often shows as output that changes with the optimisation level or the environment
  (``optimisation_dependent``).

The kept inputs and the C program's outputs (normalised like SACToR's comparison) become a :class:`Oracle`;
:meth:`Oracle.suite` turns them into sample tests that run like the shipped ones, so a translation that
differs is fed back with the input, the C output and its own (a diff). Everything is seeded: a rerun tries the
same inputs; and cached by the task's input hash, so the C program runs once per task, not once per run.

Self-checking tests (``%t N`` judged by exit status) give no inputs to start from: the oracle says so and does
not apply.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
import shutil
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

import anyio

from .cache import read_json, write_json
from .records import Oracle, OracleInput, TestSuite
from .sandbox import Limits, ProcessResult, Sandbox, run_process, tool_env
from .task import Feed
from .testing import normalize_output

log = logging.getLogger(__name__)

#: Bump when the rules change, so oracles cached under older rules are rebuilt.
RULES_VERSION = 2
#: How many candidate inputs are tried per kept input at most (rejections cost runs).
TRIES_PER_INPUT = 4
#: A generated input longer than this is not tried.
MAX_INPUT_CHARS = 64 * 1024
#: Seconds one C run may take; inputs slower than this are dropped (they would slow every attempt).
RUN_SECONDS = 5.0
#: Seconds the clock is shifted in the determinism run (about 116 days).
TIME_SHIFT = 10_000_019
SANITIZER_EXIT = 86
GCC_FLAGS = ("-O1", "-w", "-std=gnu11")
OPTIMISED_FLAGS = ("-O2", *GCC_FLAGS[1:])
SANITIZER_FLAGS = ("-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer")
_SANITIZER_ENV = {
    "ASAN_OPTIONS": f"detect_leaks=0:exitcode={SANITIZER_EXIT}:abort_on_error=0:allocator_may_return_null=1",
    "UBSAN_OPTIONS": f"halt_on_error=1:exitcode={SANITIZER_EXIT}:print_stacktrace=0",
}
_SANITIZER_MARKS = (b"runtime error:", b"AddressSanitizer", b"UndefinedBehaviorSanitizer")
_TIME_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>
static long shift(void) { const char *s = getenv("C2R_TIME_SHIFT"); return s ? atol(s) : 0; }
int clock_gettime(clockid_t c, struct timespec *ts) {
    static int (*real)(clockid_t, struct timespec *);
    if (!real) real = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    int r = real(c, ts);
    if (r == 0 && (c == CLOCK_REALTIME || c == CLOCK_REALTIME_COARSE)) ts->tv_sec += shift();
    return r;
}
time_t time(time_t *t) {
    struct timespec ts; clock_gettime(CLOCK_REALTIME, &ts);
    if (t) *t = ts.tv_sec;
    return ts.tv_sec;
}
int gettimeofday(struct timeval *tv, void *tz) {
    struct timespec ts; clock_gettime(CLOCK_REALTIME, &ts); (void)tz;
    if (tv) { tv->tv_sec = ts.tv_sec; tv->tv_usec = ts.tv_nsec / 1000; }
    return 0;
}
"""
_INT = re.compile(r"(?<![\w.])-?\d{1,18}(?![\w.])")
_BOUNDARIES = (2**31 - 1, -(2**31), 2**32 - 1, 2**63 - 1, -(2**63))




# ----------------------------------------------------------------------------------------------------
# Inputs


def mutations(shipped: Sequence[str], feed: Feed, seed: int) -> list[str]:
    """Inputs derived from the shipped ones without a model, in a seeded order; shipped inputs excluded.

    Integers perturbed (+-1, x2, x10, 0, -1, negated, type boundaries), tokens and lines dropped, duplicated
    and swapped, tokens made longer, and the empty input.
    """
    seen = set(shipped)
    out: dict[str, None] = {}

    def add(text: str) -> None:
        if text not in seen and len(text) <= MAX_INPUT_CHARS:
            out.setdefault(text, None)

    add("")
    for text in shipped:
        for match in list(_INT.finditer(text))[:12]:
            n = int(match.group())
            for value in (n + 1, n - 1, 2 * n, 10 * n, 0, -1, -n, *_BOUNDARIES):
                add(text[: match.start()] + str(value) + text[match.end():])
        tokens = text.split()
        for i in range(len(tokens)):
            add(" ".join(tokens[:i] + tokens[i + 1:]))
            add(" ".join(tokens[: i + 1] + tokens[i:]))
            if not _INT.fullmatch(tokens[i]):
                add(" ".join([*tokens[:i], tokens[i] * 8, *tokens[i + 1:]]))
        for i in range(len(tokens) - 1):
            add(" ".join([*tokens[:i], tokens[i + 1], tokens[i], *tokens[i + 2:]]))
        lines = text.split("\n")
        if feed == "stdin" and len(lines) > 1:
            for i in range(len(lines)):
                add("\n".join(lines[:i] + lines[i + 1:]))
                add("\n".join(lines[: i + 1] + lines[i:]))
            for i in range(len(lines) - 1):
                add("\n".join([*lines[:i], lines[i + 1], lines[i], *lines[i + 2:]]))
    candidates = list(out)
    random.Random(seed).shuffle(candidates)
    return candidates


def feedable(text: str) -> bool:
    """Whether ``text`` can be given to a program as it is: UTF-8 without NUL, at most MAX_INPUT_CHARS long."""
    if "\x00" in text or len(text) > MAX_INPUT_CHARS:
        return False
    try:
        text.encode()
    except UnicodeEncodeError:  # a lone surrogate, as JSON's "\ud800" gives
        return False
    return True


# ----------------------------------------------------------------------------------------------------
# The oracle


def applicable(suite: TestSuite) -> tuple[Feed | None, list[str], str | None]:
    """(feed, shipped inputs, None) when the tests feed inputs, else (None, [], why not)."""
    samples = [c.sample for c in suite.cases if c.sample is not None]
    if not samples:
        return None, [], ("differential testing does not apply: the tests are commands judged by their exit "
                          "status (self-checking), with no inputs to vary")
    feed = samples[0].feed
    return feed, [s.input for s in samples if s.feed == feed], None


async def build_oracle(
    c_source: str, suite: TestSuite, *, sandbox: Sandbox, cpu: anyio.CapacityLimiter, budget: int, seed: int,
    limits: Limits, cache_dir: Path | None = None, key: str = "", proposed: Sequence[str] = (),
) -> Oracle:
    """Up to ``budget`` inputs on which the C program is a trustworthy oracle (see the module docstring).

    ``proposed`` inputs (the model's, see :mod:`pipeline.proposals`) are tried first, under the same rules,
    then mutations; they are part of the cache key. Never raises for the program's sake (a C program that does
    not build gives an oracle with a ``note``); errors of the sandbox itself propagate.
    """
    feed, shipped, why_not = applicable(suite)
    if feed is None:
        return Oracle(None, note=why_not)
    extra = [text for text in dict.fromkeys(proposed) if text not in shipped and feedable(text)]
    cache = _cache_path(cache_dir, key, budget, seed, extra) if cache_dir is not None and key else None
    if cache is not None:
        cached = await anyio.to_thread.run_sync(_read_cache, cache)
        if cached is not None:
            return cached
    candidates = [*extra, *(text for text in mutations(shipped, feed, seed) if text not in extra)]
    oracle = await _build(c_source, feed, candidates[: max(budget * TRIES_PER_INPUT, len(extra))],
                          sandbox=sandbox, cpu=cpu, budget=budget, limits=limits, cache_dir=cache_dir)
    if cache is not None:
        await anyio.to_thread.run_sync(write_json, cache, oracle.to_json())
    return oracle


async def judge_inputs(
    c_source: str, feed: Feed, inputs: Sequence[str], *, sandbox: Sandbox, cpu: anyio.CapacityLimiter,
    limits: Limits, cache_dir: Path | None = None,
) -> tuple[Oracle, dict[str, str]]:
    """The C program's verdict on exactly ``inputs`` (in order, duplicates dropped), under the rules of
    :func:`build_oracle`: the oracle of the kept ones, and why each other one was rejected (input -> reason).
    For ``generate-tests``, where the user's seed inputs are the tests. Raises like :func:`build_oracle`."""
    reasons: dict[str, str] = {}
    unique = list(dict.fromkeys(inputs))
    oracle = await _build(c_source, feed, unique, sandbox=sandbox, cpu=cpu, budget=len(unique), limits=limits,
                          cache_dir=cache_dir, reasons=reasons)
    return oracle, reasons


async def _build(
    c_source: str, feed: Feed, candidates: Sequence[str], *, sandbox: Sandbox, cpu: anyio.CapacityLimiter,
    budget: int, limits: Limits, cache_dir: Path | None, reasons: dict[str, str] | None = None,
) -> Oracle:
    started = time.process_time()
    async with sandbox.build_dir() as work:
        async with cpu:
            built = await _compile(c_source, work, cache_dir)
        if isinstance(built, str):
            return Oracle(feed, note=f"the C program does not build with gcc, so only the shipped tests count: "
                                     f"{built}")
        plain, sanitized, optimised, shim = built
        run_limits = replace(limits, wall_seconds=min(limits.wall_seconds, RUN_SECONDS))
        kept: list[OracleInput] = []
        rejected: Counter[str] = Counter()
        tried = 0
        cpu_seconds = 0.0
        async with sandbox.workdir() as cwd:
            for text in candidates:
                if len(kept) >= budget:
                    break
                tried += 1
                async with cpu:
                    verdict, output, used = await _judge(text, feed, (plain, sanitized, optimised), shim, sandbox, cwd,
                                                         run_limits)
                cpu_seconds += used
                if verdict is None:
                    kept.append(OracleInput(text, output))
                else:
                    rejected[verdict] += 1
                    if reasons is not None:
                        reasons[text] = verdict
    log.debug("oracle: %d of %d inputs kept (%s)", len(kept), tried, dict(rejected))
    return Oracle(feed, tuple(kept), tried, dict(rejected),
                  cpu_seconds=round(cpu_seconds + time.process_time() - started, 3))


async def _judge(
    text: str, feed: Feed, builds: tuple[Path, Path, Path], shim: Path, sandbox: Sandbox, cwd: Path, limits: Limits,
) -> tuple[str | None, str, float]:
    """(why the input is rejected or None, the C output, CPU seconds used). ``builds``: plain, sanitized, -O2."""
    plain, sanitized, optimised = builds
    first = await _run(plain, text, feed, sandbox, cwd, limits, {"LD_PRELOAD": str(shim)})
    used = first.cpu_seconds or 0.0
    why = _unusable(first)
    if why is not None:
        return why, "", used
    second = await _run(plain, text, feed, sandbox, cwd, limits,
                        {"LD_PRELOAD": str(shim), "C2R_TIME_SHIFT": str(TIME_SHIFT)})
    used += second.cpu_seconds or 0.0
    output = _normalized(first)
    if _normalized(second) != output or first.returncode != second.returncode:
        return "nondeterministic", "", used
    # Without the shim either: a program reading uninitialised memory may print what the preloaded library left.
    other = await _run(optimised, text, feed, sandbox, cwd, limits, {})
    used += other.cpu_seconds or 0.0
    if _unusable(other) is not None or _normalized(other) != output or other.returncode != first.returncode:
        return "optimisation_dependent", "", used
    checked = await _run(sanitized, text, feed, sandbox, cwd, replace(limits, memory_bytes=-1), _SANITIZER_ENV)
    used += checked.cpu_seconds or 0.0
    if checked.returncode == SANITIZER_EXIT or any(mark in checked.stderr for mark in _SANITIZER_MARKS):
        return "undefined_behaviour", "", used
    if checked.timed_out or checked.signal is not None:
        return "undefined_behaviour", "", used
    return None, output, used


def _unusable(result: ProcessResult) -> str | None:
    if result.timed_out:
        return "timeout"
    if result.output_exceeded:
        return "output_limit"
    if result.signal is not None:
        return "crash"
    return None


def _normalized(result: ProcessResult) -> str:
    return normalize_output(result.stdout.decode("utf-8", "replace") + result.stderr.decode("utf-8", "replace"))


async def _run(program: Path, text: str, feed: Feed, sandbox: Sandbox, cwd: Path, limits: Limits,
               env: dict[str, str]) -> ProcessResult:
    if feed == "args":
        return await sandbox.run([str(program), *text.split()], cwd=cwd, limits=limits, env={"LC_ALL": "C", **env})
    return await sandbox.run([str(program)], cwd=cwd, stdin=(text + "\n").encode(), limits=limits,
                             env={"LC_ALL": "C", **env})


# ----------------------------------------------------------------------------------------------------
# gcc


async def _compile(c_source: str, work: Path, cache_dir: Path | None) -> tuple[Path, Path, Path, Path] | str:
    """(plain, sanitized and -O2 binaries, time shim) in ``work``, or why the C program does not build."""
    source = work / "program.c"
    await anyio.to_thread.run_sync(source.write_text, c_source)
    limits = Limits(wall_seconds=120, memory_bytes=4 << 30, output_bytes=200_000)
    shim = await _time_shim(work, cache_dir, limits)
    plain, sanitized, optimised = work / "c-plain", work / "c-sanitized", work / "c-optimised"
    for output, flags in ((plain, GCC_FLAGS), (sanitized, (*GCC_FLAGS, *SANITIZER_FLAGS)),
                          (optimised, OPTIMISED_FLAGS)):
        result = await run_process(["gcc", *flags, "-o", str(output), str(source), "-lm"], cwd=work,
                                   limits=limits, env=tool_env())
        if not result.ok:
            errors = result.stderr.decode("utf-8", "replace").strip().splitlines()
            return "; ".join(errors[:3])[:500] or result.describe()
    return plain, sanitized, optimised, shim


async def _time_shim(work: Path, cache_dir: Path | None, limits: Limits) -> Path:
    target = work / "timeshift.so"
    digest = hashlib.sha256(_TIME_SHIM.encode()).hexdigest()[:16]
    cached = cache_dir / "differential" / f"timeshift-{digest}.so" if cache_dir is not None else None
    if cached is not None and await anyio.to_thread.run_sync(cached.is_file):
        await anyio.to_thread.run_sync(shutil.copyfile, cached, target)
        return target
    source = work / "timeshift.c"
    await anyio.to_thread.run_sync(source.write_text, _TIME_SHIM)
    result = await run_process(["gcc", "-shared", "-fPIC", "-O1", "-o", str(target), str(source), "-ldl"],
                               cwd=work, limits=limits, env=tool_env())
    if not result.ok:
        raise OSError(f"gcc could not build the time shim: {result.stderr.decode('utf-8', 'replace')[:300]}")
    if cached is not None:
        await anyio.to_thread.run_sync(_store, target, cached)
    return target


def _store(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


# ----------------------------------------------------------------------------------------------------
# Cache


def _cache_path(cache_dir: Path, key: str, budget: int, seed: int, proposed: Sequence[str] = ()) -> Path:
    extra = "".join(f"\0{len(text)}:{text}" for text in proposed)
    digest = hashlib.sha256(f"{RULES_VERSION}\0{key}\0{budget}\0{seed}{extra}".encode()).hexdigest()
    return cache_dir / "differential" / f"{digest[:32]}.json"


def _read_cache(path: Path) -> Oracle | None:
    data = read_json(path)
    try:
        return Oracle.from_json(data) if isinstance(data, dict) else None
    except (TypeError, KeyError, ValueError):
        return None


def summarize(oracles: Iterable[Oracle]) -> dict[str, int]:
    """Totals over oracles (pure; accepts an empty iterable)."""
    totals: Counter[str] = Counter()
    for oracle in oracles:
        totals["tried"] += oracle.tried
        totals["kept"] += len(oracle.inputs)
        for reason, count in oracle.rejected.items():
            totals[f"rejected_{reason}"] += count
    return dict(totals)
