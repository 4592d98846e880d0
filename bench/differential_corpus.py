"""Differential inputs on the shared corpus, checked C against C: what the oracle keeps and what it costs.

For every task of ``../shared/corpus`` (skipped when absent): build the oracle (:func:`build_oracle`, default
budget 20, seed 0, a fresh cache folder under /tmp, so the first pass measures the cold cost), then build the C
program a second time, independently (``gcc -O0``, the oracle uses ``-O1``), and run every kept input against
it with our test runner, expecting the oracle's output: C against C must agree on everything kept. A second
pass over the same cache measures the warm cost (the oracle read back, nothing run).

    python -m bench.differential_corpus [--corpus DIR] [--budget 20] [--seed 0] [--no-warm]

Prints a Markdown table per program (inputs tried / kept / rejected by reason, disagreements, CPU seconds of
the oracle: this process plus its children, measured around each task, tasks one at a time) and totals; writes
``bench/results/differential_corpus.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from bench.common import RESULTS, ROOT
from pipeline.config import SandboxSettings
from pipeline.differential import Oracle, build_oracle
from pipeline.discovery import classify_test_file
from pipeline.sandbox import Limits, Sandbox, run_process, tool_env
from pipeline.task import Task, hash_contents
from pipeline.testing import load_test_suite, run_test_suite

CORPUS = ROOT.parent / "shared" / "corpus"
FOLDERS = ("codenet_argv", "codenet_scanf", "transcoder_ir")


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@dataclass
class Row:
    task: str
    feed: str | None
    tried: int = 0
    kept: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    disagreements: int = 0
    cold_cpu: float = 0.0
    cold_wall: float = 0.0
    warm_cpu: float = 0.0
    check_cpu: float = 0.0
    note: str | None = None


def tasks(corpus: Path) -> list[Task]:
    found: list[Task] = []
    for folder in FOLDERS:
        for c_path in sorted((corpus / folder).glob("*.c")):
            test = c_path.with_suffix(".json")
            found.append(Task(f"{folder}/{c_path.stem}", c_path, test, classify_test_file(test)))
    return found


async def _c_vs_c(task: Task, oracle: Oracle, sandbox: Sandbox, limits: Limits) -> int:
    """Failures of an independent -O0 build of the C program on the oracle's kept inputs."""
    suite = oracle.suite(task.test_path.parent)
    if suite is None:
        return 0
    async with sandbox.build_dir() as work:
        binary = work / "c-O0"
        built = await run_process(["gcc", "-O0", "-w", "-std=gnu11", "-o", str(binary), str(task.c_path), "-lm"],
                                  cwd=work, limits=Limits(wall_seconds=120, memory_bytes=4 << 30), env=tool_env())
        if not built.ok:
            raise RuntimeError(f"{task.c_path}: the second gcc build failed: {built.stderr[:300]!r}")
        verdict = await run_test_suite(binary, suite, sandbox=sandbox, limits=limits)
    for failure in verdict.failures:
        print(f"DISAGREEMENT {task.id}: {failure.feedback[:400]}", file=sys.stderr)
    return len(verdict.failures)


async def measure(corpus: Path, budget: int, seed: int, cache: Path, warm: bool) -> list[Row]:
    rows: list[Row] = []
    cpu = anyio.CapacityLimiter(1)
    async with Sandbox.open(SandboxSettings()) as sandbox:
        limits = sandbox.limits(wall_seconds=60, output_bytes=40_000)
        for task in tasks(corpus):
            suite = load_test_suite(task)
            key = hash_contents({p: p.read_bytes() for p in (task.c_path, task.test_path)})
            c_source = task.c_path.read_text()
            started, wall = _cpu(), time.perf_counter()
            oracle = await build_oracle(c_source, suite, sandbox=sandbox, cpu=cpu, budget=budget, seed=seed,
                                        limits=limits, cache_dir=cache, key=key)
            row = Row(task.id, oracle.feed, oracle.tried, len(oracle.inputs), dict(oracle.rejected),
                      cold_cpu=_cpu() - started, cold_wall=time.perf_counter() - wall, note=oracle.note)
            before = _cpu()
            row.disagreements = await _c_vs_c(task, oracle, sandbox, limits)
            row.check_cpu = _cpu() - before
            if warm:
                before = _cpu()
                again = await build_oracle(c_source, suite, sandbox=sandbox, cpu=cpu, budget=budget, seed=seed,
                                           limits=limits, cache_dir=cache, key=key)
                row.warm_cpu = _cpu() - before
                assert again.inputs == oracle.inputs, f"{task.id}: the warm oracle differs from the cold one"
            rows.append(row)
            print(f"{task.id}: {row.kept}/{row.tried} kept, {row.disagreements} disagreements, "
                  f"{row.cold_cpu:.2f} CPU s", file=sys.stderr, flush=True)
    return rows


def table(rows: list[Row]) -> list[str]:
    reasons = sorted({r for row in rows for r in row.rejected})
    head = ["task", "feed", "tried", "kept", *[f"rej. {r}" for r in reasons], "C vs C disagree", "CPU s (cold)",
            "CPU s (warm)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    applicable = [row for row in rows if row.feed is not None]
    for row in applicable:
        cells = [row.task, str(row.feed), str(row.tried), str(row.kept),
                 *[str(row.rejected.get(r, 0)) for r in reasons], str(row.disagreements),
                 f"{row.cold_cpu:.2f}", f"{row.warm_cpu:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    total: Counter[str] = Counter()
    for row in applicable:
        total.update(row.rejected)
    cells = [f"**total ({len(applicable)} tasks)**", "", str(sum(r.tried for r in applicable)),
             str(sum(r.kept for r in applicable)), *[str(total.get(r, 0)) for r in reasons],
             str(sum(r.disagreements for r in applicable)), f"{sum(r.cold_cpu for r in applicable):.1f}",
             f"{sum(r.warm_cpu for r in applicable):.2f}"]
    lines.append("| " + " | ".join(cells) + " |")
    skipped = [row for row in rows if row.feed is None]
    if skipped:
        lines.append("")
        lines.append(f"Not applicable ({len(skipped)} tasks, self-checking `%t N` tests): "
                     + ", ".join(row.task for row in skipped)
                     + f"; CPU s {sum(r.cold_cpu for r in skipped):.2f} in all.")
    if applicable:
        cold = sorted(r.cold_cpu for r in applicable)
        lines.append("")
        lines.append(f"Per applicable task: kept {sum(r.kept for r in applicable) / len(applicable):.1f} inputs on "
                     f"average (min {min(r.kept for r in applicable)}, max {max(r.kept for r in applicable)}); "
                     f"cold CPU s median {cold[len(cold) // 2]:.2f}, mean {sum(cold) / len(cold):.2f}, "
                     f"max {cold[-1]:.2f}; warm CPU s mean "
                     f"{sum(r.warm_cpu for r in applicable) / len(applicable):.3f}; the C-vs-C check "
                     f"{sum(r.check_cpu for r in applicable) / len(applicable):.2f} CPU s per task (not part of "
                     f"the oracle's cost).")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--budget", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-warm", dest="warm", action="store_false")
    args = parser.parse_args(argv)
    if not args.corpus.is_dir():
        print(f"skipped: no corpus at {args.corpus}", file=sys.stderr)
        return 0
    with tempfile.TemporaryDirectory(prefix="differential-cache-", dir="/tmp") as cache:
        rows = anyio.run(measure, args.corpus, args.budget, args.seed, Path(cache), args.warm)
    lines = table(rows)
    print("\n".join(lines))
    RESULTS.mkdir(parents=True, exist_ok=True)
    data: list[dict[str, Any]] = [row.__dict__ for row in rows]
    (RESULTS / "differential_corpus.json").write_text(json.dumps(data, indent=1))
    return 1 if any(row.disagreements for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
