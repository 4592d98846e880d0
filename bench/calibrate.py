"""CPU cost of one compile and one test run, measured alone, one at a time, before a benchmark run.

The programs are the ones the simulator writes for the corpus's tasks (rendered here with its own
``directive.render`` and extracted with ``pipeline.extract``), compiled with the pipeline's toolchain (compile
cache off) and tested with the pipeline's test runner, both through the sandbox (as the pipeline runs them)
and as a plain subprocess (as the baselines run them). CPU time is the children's (rustc, the linker, the
sandbox helper and the program) plus this process's own share (event loop, sandbox bookkeeping).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio

from pipeline.build import Toolchain
from pipeline.config import SandboxSettings, ToolchainSettings
from pipeline.extract import extract_rust
from pipeline.sandbox import Sandbox
from pipeline.simulator.directive import find_directive, render
from pipeline.task import Task
from pipeline.testing import load_test_suite, normalize_output, run_test_suite

from .common import RESULTS, ROOT, TaskPlan, markdown_table, write_corpus, write_json

T = TypeVar("T")


@dataclass(frozen=True)
class Cost:
    """Median wall and CPU seconds of one operation over ``samples`` runs."""

    wall: float
    cpu: float
    samples: int
    #: This process's own share of ``cpu`` (event loop, sandbox bookkeeping), without the children's.
    own: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"wall_seconds": round(self.wall, 4), "cpu_seconds": round(self.cpu, 4),
                "own_cpu_seconds": round(self.own, 5), "samples": self.samples}


@dataclass(frozen=True)
class Calibration:
    """``compile_ok``/``compile_error``: the simulator's programs; ``compile_typical``: the bundled examples'
    verified translations (examples/answers, 20 to 110 lines using libc), the "typical task" of the targets."""

    compile_ok: Cost
    compile_error: Cost
    test_sandboxed: Cost
    test_plain: Cost
    compile_typical: Cost
    #: clippy on a passing program (``Toolchain.clippy_stats``), measured only when asked for
    clippy: Cost | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v.as_dict() for k, v in self.__dict__.items() if v is not None}


def program(plan: TaskPlan, stage: str, attempt: int) -> str:
    """The Rust program the simulator sends for ``plan`` at ``stage``/``attempt``."""
    directive = find_directive(plan.directive())
    assert directive is not None
    text, finish = render(directive, stage, attempt)
    code = extract_rust(text, truncated=finish == "length").code
    assert code is not None, f"{plan.name} {stage} {attempt}: no code"
    return code


def _cpu_now() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _own_now() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime


async def _measure(fn: Callable[[], Awaitable[T]]) -> tuple[T, float, float, float]:
    """``fn()``'s value, wall seconds, CPU seconds (ours and the children's) and our own CPU seconds."""
    cpu0, own0, wall0 = _cpu_now(), _own_now(), time.perf_counter()
    value = await fn()
    return value, time.perf_counter() - wall0, _cpu_now() - cpu0, _own_now() - own0


def _median(samples: Sequence[tuple[float, float, float]]) -> Cost:
    return Cost(statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples), len(samples),
                statistics.median(s[2] for s in samples))


async def _calibrate(plans: Sequence[TaskPlan], corpus: Path, cache_dir: Path, helper: str = "auto",
                     clippy: bool = False) -> Calibration:
    settings = ToolchainSettings(cache_dir=str(cache_dir), compile_cache=False, clippy=clippy)
    toolchain = await Toolchain.prepare(settings)
    ok: list[tuple[float, float, float]] = []
    linted: list[tuple[float, float, float]] = []
    err: list[tuple[float, float, float]] = []
    sandboxed: list[tuple[float, float, float]] = []
    plain: list[tuple[float, float, float]] = []
    async with Sandbox.open(SandboxSettings(helper=helper), cache_dir=cache_dir) as sandbox:
        limits = sandbox.limits(wall_seconds=60.0, output_bytes=40_000)
        await _warm_up(toolchain, plans[0])
        for plan in plans:
            task = Task(plan.name, corpus / f"{plan.name}.c", corpus / f"{plan.name}.json")
            suite = load_test_suite(task)
            good = program(TaskPlan(plan.name, plan.directive_id, stdout=plan.stdout, tokens=plan.tokens),
                           "unidiomatic", 1)
            bad = program(TaskPlan(plan.name, plan.directive_id, ("compile_error",), stdout=plan.stdout,
                                   tokens=plan.tokens), "unidiomatic", 1)
            async with sandbox.build_dir() as out_dir:
                built, wall, cpu, own = await _measure(partial(toolchain.build, good, out_dir))
                assert built.ok and built.binary is not None, built.diagnostics
                ok.append((wall, cpu, own))
                verdict, wall, cpu, own = await _measure(
                    partial(run_test_suite, built.binary, suite, sandbox=sandbox, limits=limits))
                assert verdict.passed, verdict.feedback()
                sandboxed.append((wall, cpu, own))
                sample = suite.cases[0].sample
                assert sample is not None
                _, wall, cpu, own = await _measure(
                    partial(anyio.to_thread.run_sync, _plain_run, built.binary, sample.input))
                plain.append((wall, cpu, own))
                if clippy:
                    stats, wall, cpu, own = await _measure(partial(toolchain.clippy_stats, good, out_dir))
                    assert "total_warnings" in stats, stats
                    linted.append((wall, cpu, own))
            with tempfile.TemporaryDirectory() as tmp:
                failed, wall, cpu, own = await _measure(partial(toolchain.build, bad, Path(tmp)))
                assert not failed.ok
                err.append((wall, cpu, own))
        typical: list[tuple[float, float, float]] = []
        for source in typical_programs():
            async with sandbox.build_dir() as out_dir:
                built, wall, cpu, own = await _measure(partial(toolchain.build, source, out_dir))
                if built.ok:
                    typical.append((wall, cpu, own))
    return Calibration(_median(ok), _median(err), _median(sandboxed), _median(plain), _median(typical),
                       _median(linted) if clippy else None)


def typical_programs() -> list[str]:
    """The last (verified) answer of each stage of each bundled example task."""
    programs = []
    for task_dir in sorted((ROOT / "examples" / "answers").iterdir()):
        for stage in ("unidiomatic", "idiomatic"):
            answers = sorted(task_dir.glob(f"{stage}-*.md"))
            if answers:
                code = extract_rust(answers[-1].read_text()).code
                if code is not None:
                    programs.append(code)
    return programs


def _plain_run(binary: Path, stdin: str) -> bool:
    proc = subprocess.run([str(binary)], input=(stdin + "\n").encode(), capture_output=True, timeout=60)
    return bool(normalize_output(proc.stdout.decode() + proc.stderr.decode()))


async def _warm_up(toolchain: Toolchain, plan: TaskPlan) -> None:
    """One unmeasured build, so that page-cache misses of rustc and the libc rlib are not in the figures."""
    with tempfile.TemporaryDirectory() as tmp:
        await toolchain.build(program(plan, "unidiomatic", 1) + "\n// warm-up\n", Path(tmp))


def calibrate(plans: Sequence[TaskPlan], corpus: Path, cache_dir: Path, helper: str = "auto", *,
              clippy: bool = False) -> Calibration:
    """Compile and test the programs of ``plans`` one at a time and return the median costs (``clippy``: lint
    each passing program too)."""
    return anyio.run(_calibrate, plans, corpus, cache_dir, helper, clippy)


async def _test_runs(plans: Sequence[TaskPlan], corpus: Path, cache_dir: Path, helper: str, runs: int) -> Cost:
    """Median cost of one sandboxed test run with ``helper``, each program's suite run ``runs`` times."""
    settings = ToolchainSettings(cache_dir=str(cache_dir), compile_cache=True, clippy=False)
    toolchain = await Toolchain.prepare(settings)
    costs: list[tuple[float, float, float]] = []
    async with Sandbox.open(SandboxSettings(helper=helper), cache_dir=cache_dir) as sandbox:
        limits = sandbox.limits(wall_seconds=60.0, output_bytes=40_000)
        for plan in plans:
            task = Task(plan.name, corpus / f"{plan.name}.c", corpus / f"{plan.name}.json")
            suite = load_test_suite(task)
            async with sandbox.build_dir() as out_dir:
                built = await toolchain.build(program(plan, "unidiomatic", 1), out_dir)
                assert built.ok and built.binary is not None, built.diagnostics
                for _ in range(runs):
                    verdict, wall, cpu, own = await _measure(
                        partial(run_test_suite, built.binary, suite, sandbox=sandbox, limits=limits))
                    assert verdict.passed, verdict.feedback()
                    costs.append((wall, cpu, own))
    return _median(costs)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.calibrate``: CPU and wall per test run, sandboxed with each helper and bare, and per
    compile with each helper (rustc starts under the helper too); blocks alternate the helpers."""
    from .throughput import make_plans

    p = argparse.ArgumentParser(prog="python -m bench.calibrate", description=main.__doc__)
    p.add_argument("--programs", type=int, default=8, help="distinct programs (default 8)")
    p.add_argument("--runs", type=int, default=10, help="test runs per program and block (default 10)")
    p.add_argument("--rounds", type=int, default=2, help="blocks per helper, alternating (default 2)")
    p.add_argument("--cache-dir", type=Path, default=RESULTS / "cache", help="libc rlib and helper cache")
    args = p.parse_args(argv)
    plans = make_plans(args.programs, 0.0, 0.0, 300)
    cache = args.cache_dir.resolve()
    results: dict[str, list[Cost]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-calibrate-") as tmp:
        corpus = Path(tmp) / "corpus"
        write_corpus(corpus, plans)
        for _ in range(args.rounds):
            for helper in ("python", "compiled"):
                cal = calibrate(plans, corpus, cache, helper)
                runs = anyio.run(_test_runs, plans, corpus, cache, helper, args.runs)
                results.setdefault(f"test run in the sandbox, {helper} helper", []).append(runs)
                results.setdefault(f"compile (passing), {helper} helper", []).append(cal.compile_ok)
                results.setdefault("test run, plain subprocess", []).append(cal.test_plain)
    rows = []
    for name, costs in results.items():
        wall = statistics.median(c.wall for c in costs)
        cpu = statistics.median(c.cpu for c in costs)
        own = statistics.median(c.own for c in costs)
        rows.append([name, f"{wall * 1000:.1f}", f"{cpu * 1000:.1f}", f"{own * 1000:.2f}",
                     sum(c.samples for c in costs)])
    write_json(RESULTS / "calibrate.json", {"command": " ".join(["python -m bench.calibrate", *(argv or sys.argv[1:])]),
                                            "rows": rows})
    print(markdown_table(["operation", "wall ms", "CPU ms", "own CPU ms", "samples"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
