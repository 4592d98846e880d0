"""Differential testing on a corpus, C against C: what the oracle keeps per program, what it costs, and whether a
second build of the same C program agrees with it on everything kept.

For every task of the corpus this builds the oracle as a run does (:func:`pipeline.differential.build_oracle`,
no cache), then builds the C program again with ``gcc -O0`` (the oracle's builds are ``-O1`` and ``-O2``) and
runs the kept inputs against it with the pipeline's own test runner in the sandbox, as a translation would be
run. C against C must agree on every kept input: a disagreement means the oracle kept an input on which the
program is not a trustworthy oracle. Prints a Markdown table (inputs kept, tried, rejected per reason, CPU
seconds, agreement)::

    python -m bench.differential ../shared/corpus/codenet_scanf ../shared/corpus/codenet_argv [--inputs 20]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections.abc import Sequence
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path

import anyio

from pipeline.config import SandboxSettings
from pipeline.differential import GCC_FLAGS, Oracle, build_oracle
from pipeline.discovery import discover
from pipeline.sandbox import Limits, Sandbox, run_process, tool_env
from pipeline.task import Task
from pipeline.testing import load_test_suite, run_test_suite


@dataclass(frozen=True)
class Row:
    """One program: its oracle, the wall and CPU seconds building it took (this process and every child: gcc,
    the sandbox, the C runs), and how many kept inputs the -O0 build agreed on."""

    task: str
    oracle: Oracle
    wall_seconds: float
    cpu_seconds: float
    agreed: int

    def line(self) -> str:
        rejected = ", ".join(f"{n} {why}" for why, n in sorted(self.oracle.rejected.items())) or "-"
        kept = len(self.oracle.inputs)
        verdict = self.oracle.note or ("all agree" if self.agreed == kept else f"{kept - self.agreed} DISAGREE")
        return (f"| {self.task} | {kept} | {self.oracle.tried} | {rejected} | {self.cpu_seconds:.2f} | "
                f"{self.wall_seconds:.1f} | {verdict} |")


async def c_against_c(task: Task, *, sandbox: Sandbox, cpu: anyio.CapacityLimiter, budget: int) -> Row:
    """The oracle of ``task`` and how many of its inputs another (-O0) build of the C program agrees on."""
    suite = load_test_suite(task)
    source = task.c_path.read_text()
    limits = sandbox.limits(wall_seconds=60, output_bytes=40_000)
    started, cpu_before = time.perf_counter(), _cpu()
    oracle = await build_oracle(source, suite, sandbox=sandbox, cpu=cpu, budget=budget, seed=0, limits=limits)
    wall, used = time.perf_counter() - started, _cpu() - cpu_before
    generated = oracle.suite(suite.base_dir)
    if generated is None:
        return Row(task.id, oracle, wall, used, 0)
    async with sandbox.build_dir() as work:
        (work / "program.c").write_text(source)
        binary = work / "c-o0"
        flags = [flag for flag in GCC_FLAGS if not flag.startswith("-O")]
        built = await run_process(["gcc", "-O0", *flags, "-o", str(binary), str(work / "program.c"), "-lm"],
                                  cwd=work, limits=Limits(wall_seconds=120, memory_bytes=4 << 30,
                                                          output_bytes=200_000), env=tool_env())
        if not built.ok:
            return Row(task.id, oracle, wall, used, 0)
        verdict = await run_test_suite(binary, generated, sandbox=sandbox, limits=limits)
    return Row(task.id, oracle, wall, used, sum(o.passed for o in verdict.outcomes))


def _cpu() -> float:
    """CPU seconds of this process and its reaped children so far."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


async def measure(folders: Sequence[Path], budget: int) -> list[Row]:
    rows: list[Row] = []
    cpu = anyio.CapacityLimiter(1)  # one program at a time: the CPU seconds are the program's own
    async with Sandbox.open(SandboxSettings()) as sandbox:
        for folder in folders:
            async with aclosing(discover(folder, folder)) as found:
                async for task in found:
                    if isinstance(task, Task):
                        rows.append(await c_against_c(task, sandbox=sandbox, cpu=cpu, budget=budget))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="corpus folders (flat layout: NAME.c beside NAME.json)")
    parser.add_argument("--inputs", type=int, default=20, help="generated inputs per program (default 20)")
    args = parser.parse_args(argv)
    rows = anyio.run(measure, args.folders, args.inputs)
    print("| program | kept | tried | rejected | CPU s | wall s | C -O0 against the oracle |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(row.line())
    checked = [r for r in rows if r.oracle.inputs]
    if checked:
        kept = sum(len(r.oracle.inputs) for r in checked)
        cpu = sum(r.cpu_seconds for r in checked)
        print(f"\n{len(checked)} of {len(rows)} programs checked: {kept / len(checked):.1f} inputs kept per program, "
              f"{cpu / len(checked):.2f} s CPU per program; "
              f"{sum(len(r.oracle.inputs) - r.agreed for r in checked)} disagreements")
    return 0 if all(r.agreed == len(r.oracle.inputs) for r in rows if r.oracle.note is None) else 1


if __name__ == "__main__":
    sys.exit(main())
