"""Differential testing on a corpus, C against C: what the oracle keeps per program, what it costs cold and warm,
and whether a second build of the same C program agrees with it on everything kept.

For every task of the given folders (default ``../shared/corpus``; a folder without C files stands for its
subfolders that have some; skipped when absent), tasks one at a time:

1. cold: the oracle as a run builds it (:func:`pipeline.differential.build_oracle`, seed 0, mutations only, no
   model) into a fresh cache folder under /tmp;
2. C against C: the C program built again, independently (``gcc -O0``; the oracle's builds are ``-O1`` plain,
   ``-O1`` ASan+UBSan and ``-O2``), runs every kept input through the pipeline's own test runner in the
   sandbox, as a translation would be run; it must agree on every one (a disagreement means the oracle kept an
   input on which the program is not a trustworthy oracle);
3. warm: ``build_oracle`` again on the same cache (read back, nothing run); it must give the same inputs.

CPU seconds are this process plus every reaped child (getrusage), measured around each step. Prints a Markdown
table (inputs tried / kept / rejected by reason, disagreements, CPU s cold, wall s cold, CPU s warm), totals and
a summary line; writes ``bench/results/differential.json``. Exit status 1 when C disagreed with its oracle::

    python -m bench.differential [FOLDER ...] [--inputs 20] [--seed 0] [--no-warm]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import aclosing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio

from bench.common import RESULTS, ROOT
from pipeline.config import SandboxSettings
from pipeline.differential import GCC_FLAGS, build_oracle
from pipeline.discovery import discover
from pipeline.records import Oracle
from pipeline.sandbox import Limits, Sandbox, run_process, tool_env
from pipeline.task import Task, hash_contents
from pipeline.testing import load_test_suite, run_test_suite

CORPUS = ROOT.parent / "shared" / "corpus"


@dataclass(frozen=True)
class Row:
    """One program: its oracle; CPU and wall seconds of building it cold, CPU seconds of the C-against-C check and
    of the warm rebuild (this process and every child: gcc, the sandbox, the C runs); how many kept inputs the
    -O0 build agreed on."""

    task: str
    oracle: Oracle
    wall_seconds: float
    cpu_seconds: float
    agreed: int
    check_cpu: float = 0.0
    warm_cpu: float | None = None  # None: no warm pass

    @property
    def disagreements(self) -> int:
        return 0 if self.oracle.note is not None else len(self.oracle.inputs) - self.agreed

    def line(self) -> str:
        """One line for a message: kept, tried, rejected by reason, the C-against-C verdict."""
        rejected = ", ".join(f"{n} {why}" for why, n in sorted(self.oracle.rejected.items())) or "none rejected"
        verdict = self.oracle.note or ("all agree" if not self.disagreements else f"{self.disagreements} DISAGREE")
        return f"{self.task}: {len(self.oracle.inputs)} kept of {self.oracle.tried} ({rejected}); {verdict}"

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task, "feed": self.oracle.feed, "tried": self.oracle.tried,
                "kept": len(self.oracle.inputs), "rejected": dict(self.oracle.rejected), "note": self.oracle.note,
                "disagreements": self.disagreements, "cold_cpu_seconds": round(self.cpu_seconds, 3),
                "cold_wall_seconds": round(self.wall_seconds, 3), "check_cpu_seconds": round(self.check_cpu, 3),
                "warm_cpu_seconds": None if self.warm_cpu is None else round(self.warm_cpu, 4)}


def _cpu() -> float:
    """CPU seconds of this process and its reaped children so far."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


async def c_against_c(
    task: Task, *, sandbox: Sandbox, cpu: anyio.CapacityLimiter, budget: int, seed: int = 0,
    cache_dir: Path | None = None, warm: bool = False,
) -> Row:
    """The oracle of ``task`` (cold, into ``cache_dir`` when given), how many of its inputs another (-O0) build
    of the C program agrees on, and with ``warm`` the CPU seconds of building it again from the cache."""
    suite = load_test_suite(task)
    source = task.c_path.read_text()
    limits = sandbox.limits(wall_seconds=60, output_bytes=40_000)
    key = hash_contents({p: p.read_bytes() for p in (task.c_path, task.test_path)}) if cache_dir else ""
    started, cpu_before = time.perf_counter(), _cpu()
    oracle = await build_oracle(source, suite, sandbox=sandbox, cpu=cpu, budget=budget, seed=seed, limits=limits,
                                cache_dir=cache_dir, key=key)
    wall, used = time.perf_counter() - started, _cpu() - cpu_before
    check_before = _cpu()
    agreed = await _agreed(task, source, oracle, sandbox, limits)
    check = _cpu() - check_before
    warm_cpu = None
    if warm and cache_dir is not None:
        before = _cpu()
        again = await build_oracle(source, suite, sandbox=sandbox, cpu=cpu, budget=budget, seed=seed,
                                   limits=limits, cache_dir=cache_dir, key=key)
        warm_cpu = _cpu() - before
        if again.inputs != oracle.inputs:
            raise AssertionError(f"{task.c_path}: the oracle read back from the cache differs from the cold one")
    return Row(task.id, oracle, wall, used, agreed, check, warm_cpu)


async def _agreed(task: Task, source: str, oracle: Oracle, sandbox: Sandbox, limits: Limits) -> int:
    """How many of the oracle's kept inputs a -O0 build of the C program gives the oracle's output on."""
    generated = oracle.suite(task.test_path.parent)
    if generated is None:
        return 0
    async with sandbox.build_dir() as work:
        (work / "program.c").write_text(source)
        binary = work / "c-O0"
        flags = [flag for flag in GCC_FLAGS if not flag.startswith("-O")]
        built = await run_process(["gcc", "-O0", *flags, "-o", str(binary), str(work / "program.c"), "-lm"],
                                  cwd=work, limits=Limits(wall_seconds=120, memory_bytes=4 << 30,
                                                          output_bytes=200_000), env=tool_env())
        if not built.ok:
            raise RuntimeError(f"{task.c_path}: the second gcc build failed: {built.stderr[:300]!r}")
        verdict = await run_test_suite(binary, generated, sandbox=sandbox, limits=limits)
    for failure in verdict.failures:
        print(f"DISAGREEMENT {task.id}: {failure.feedback[:400]}", file=sys.stderr)
    return sum(o.passed for o in verdict.outcomes)


def corpus_folders(folders: Sequence[Path]) -> list[Path]:
    """The folders holding C files: each given one that has some, else its subfolders that have some."""
    found: list[Path] = []
    for folder in folders:
        if any(folder.glob("*.c")):
            found.append(folder)
        else:
            found.extend(sub for sub in sorted(folder.iterdir()) if sub.is_dir() and any(sub.glob("*.c")))
    return found


async def measure(folders: Sequence[Path], budget: int, seed: int, cache: Path, warm: bool) -> list[Row]:
    rows: list[Row] = []
    cpu = anyio.CapacityLimiter(1)  # one program at a time: the CPU seconds are the program's own
    async with Sandbox.open(SandboxSettings()) as sandbox:
        for folder in folders:
            async with aclosing(discover(folder, folder)) as found:
                tasks = [task async for task in found if isinstance(task, Task)]
            for task in sorted(tasks, key=lambda t: t.id):
                task = replace(task, id=f"{folder.name}/{task.id}")
                row = await c_against_c(task, sandbox=sandbox, cpu=cpu, budget=budget, seed=seed,
                                        cache_dir=cache, warm=warm)
                rows.append(row)
                print(f"{row.line()}; {row.cpu_seconds:.2f} CPU s", file=sys.stderr, flush=True)
    return rows


def table(rows: Sequence[Row]) -> list[str]:
    """The Markdown table (applicable tasks and a totals row), the tasks it does not apply to, a summary line."""
    reasons = sorted({r for row in rows for r in row.oracle.rejected})
    head = ["task", "feed", "tried", "kept", *[f"rej. {r}" for r in reasons], "C -O0 disagree", "CPU s (cold)",
            "wall s (cold)", "CPU s (warm)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    applicable = [row for row in rows if row.oracle.feed is not None]

    def warm(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    for row in applicable:
        o = row.oracle
        cells = [row.task, str(o.feed), str(o.tried), str(len(o.inputs)),
                 *[str(o.rejected.get(r, 0)) for r in reasons], o.note or str(row.disagreements),
                 f"{row.cpu_seconds:.2f}", f"{row.wall_seconds:.1f}", warm(row.warm_cpu)]
        lines.append("| " + " | ".join(cells) + " |")
    total: Counter[str] = Counter()
    for row in applicable:
        total.update(row.oracle.rejected)
    warm_total = sum(r.warm_cpu or 0.0 for r in applicable) if any(r.warm_cpu is not None for r in rows) else None
    cells = [f"**total ({len(applicable)} tasks)**", "", str(sum(r.oracle.tried for r in applicable)),
             str(sum(len(r.oracle.inputs) for r in applicable)), *[str(total.get(r, 0)) for r in reasons],
             str(sum(r.disagreements for r in applicable)), f"{sum(r.cpu_seconds for r in applicable):.1f}",
             f"{sum(r.wall_seconds for r in applicable):.1f}", warm(warm_total)]
    lines.append("| " + " | ".join(cells) + " |")
    skipped = [row for row in rows if row.oracle.feed is None]
    if skipped:
        lines += ["", f"Not applicable ({len(skipped)} tasks, self-checking `%t N` tests): "
                  + ", ".join(row.task for row in skipped)
                  + f"; {sum(r.cpu_seconds for r in skipped):.2f} CPU s in all."]
    if applicable:
        kept = [len(r.oracle.inputs) for r in applicable]
        cold = sorted(r.cpu_seconds for r in applicable)
        lines += ["", f"Per applicable task: {sum(kept) / len(kept):.1f} inputs kept on average (min {min(kept)}, "
                  f"max {max(kept)}); cold CPU s median {cold[len(cold) // 2]:.2f}, mean {sum(cold) / len(cold):.2f}, "
                  f"max {cold[-1]:.2f}; warm CPU s mean "
                  + (warm(warm_total / len(applicable)) if warm_total is not None else "-")
                  + f"; the C-against-C check {sum(r.check_cpu for r in applicable) / len(applicable):.2f} CPU s "
                  f"per task (not part of the oracle's cost); "
                  f"{sum(r.disagreements for r in applicable)} disagreements."]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("folders", nargs="*", type=Path, default=[CORPUS],
                        help="corpus folders (NAME.c beside NAME.json), or folders of them (default ../shared/corpus)")
    parser.add_argument("--inputs", type=int, default=20, help="generated inputs per program (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the mutations (default 0, as runs use)")
    parser.add_argument("--no-warm", dest="warm", action="store_false", help="skip the warm pass")
    args = parser.parse_args(argv)
    missing = [str(f) for f in args.folders if not f.is_dir()]
    if missing:
        print(f"skipped: no corpus at {', '.join(missing)}", file=sys.stderr)
        return 0
    folders = corpus_folders(args.folders)
    measured, load_before = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="differential-cache-", dir="/tmp") as cache:
        rows = anyio.run(measure, folders, args.inputs, args.seed, Path(cache), args.warm)
    lines = table(rows)
    print("\n".join(lines))
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {"command": ["python", "-m", "bench.differential", *(argv if argv is not None else sys.argv[1:])],
            "measured": measured, "load_average": {"start": load_before, "end": os.getloadavg()},
            "inputs": args.inputs, "seed": args.seed,
            "folders": [str(f) for f in folders], "tasks": [row.to_json() for row in rows]}
    target = RESULTS / "differential.json"
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, target)
    return 1 if any(row.disagreements for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
