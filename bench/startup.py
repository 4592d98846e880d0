"""Start-up: from the CLI's process start to its first chat request, for one or two source trees.

    python -m bench.startup                           # this tree, 5 runs
    python -m bench.startup --other /tmp/main-tree    # this tree and another, alternating, 5 runs each

Each run translates a one-task corpus into a fresh output folder against one simulator (latency 0), with a
warm libc cache (bench/results/cache), so start-up is imports, settings, discovery of the first task, the
toolchain probe and libc check, the sandbox probe and the preflight. A tree's CLI runs with that tree first
on PYTHONPATH. Prints each run and the medians of two figures: start-up seconds (wall: the machine's load
counts) and the CLI's own CPU seconds up to its first chat request (read from /proc every few milliseconds
until the simulator's log shows the request, so a few milliseconds high; other users' load does not count,
but the CPU the probes' child processes take does not either), and the exit: seconds from the last chat
answer to the process's end (the one task's last compile and test, the results, the summary, the
interpreter's exit).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .common import (
    MODEL,
    RESULTS,
    LoadSpec,
    TaskPlan,
    chat,
    clean_env,
    process_cpu_seconds,
    read_log,
    simulator,
    write_config,
    write_corpus,
)

#: How often a run's CPU and the simulator's log are read until the first chat request shows.
POLL_SECONDS = 0.005


@dataclass(frozen=True)
class StartUp:
    seconds: float  # process start to the first chat request's arrival
    cpu_seconds: float  # the CLI's own CPU by then
    exit_seconds: float  # the last chat answer to the process's end


def one_run(tree: Path, work: Path, url: str, log: Path, cache: Path, config: Path, index: int) -> StartUp:
    env = clean_env()
    env["PYTHONPATH"] = str(tree)
    out = work / f"out-{index}"
    argv = [sys.executable, str(tree / "batch_translate_generic.py"), "--c-files", str(work / "corpus"),
            "--json-files", str(work / "corpus"), "--output", str(out), "--base-url", url, "--model", MODEL,
            "--workers", "4", "--jobs", "2", "--cache-dir", str(cache), "--config", str(config)]
    before = {r["id"] for r in read_log(log)}
    err_path = work / f"{index}.err"
    with (work / f"{index}.out").open("wb") as stdout, err_path.open("wb") as stderr:
        started = time.monotonic()
        proc = subprocess.Popen(argv, cwd=work, stdout=stdout, stderr=stderr, env=env, start_new_session=True)
    cpu = 0.0
    try:
        while not any(r["id"] not in before for r in chat(read_log(log))) and proc.poll() is None:
            cpu = process_cpu_seconds(proc.pid) or cpu
            time.sleep(POLL_SECONDS)
        cpu = process_cpu_seconds(proc.pid) or cpu
        returncode = proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    ended = time.monotonic()
    if returncode != 0:
        raise SystemExit(f"run {index} of {tree} exited {returncode}; see {err_path}")
    requests = [r for r in chat(read_log(log)) if r["id"] not in before]
    first = min(r["arrival"] for r in requests)
    return StartUp(float(first - started), cpu, float(ended - max(r["end"] for r in requests)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__.split("\n\n")[0])
    p.add_argument("--other", type=Path, help="a second source tree, run in turn with this one")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--cache-dir", type=Path, default=RESULTS / "cache", help="libc rlib cache")
    args = p.parse_args(argv)
    trees = [Path(__file__).resolve().parent.parent] + ([args.other.resolve()] if args.other else [])
    runs: dict[Path, list[StartUp]] = {t: [] for t in trees}
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        work = Path(tmp)
        write_corpus(work / "corpus", [TaskPlan("task0", "task0", ("pass",), ("pass",), stdout="hello",
                                                tokens=40)])
        config = write_config(work / "sactor.toml", compile_cache=True)
        log = work / "sim.jsonl"
        with simulator(LoadSpec(capacity=8, latency=0.0, decode_per_token=0.0), log,
                       stderr_path=work / "sim.err") as sim:
            for index in range(args.runs):
                for tree in trees:
                    run = one_run(tree, work, sim.url, log, args.cache_dir, config, len(trees) * index
                                  + trees.index(tree))
                    runs[tree].append(run)
                    print(f"{tree}: run {index + 1}: start-up {run.seconds:.3f} s, CPU {run.cpu_seconds:.2f} s; "
                          f"exit {run.exit_seconds:.3f} s (load average {os.getloadavg()[0]:.1f})", flush=True)
    for tree, values in runs.items():
        seconds = [r.seconds for r in values]
        print(f"{tree}: start-up median {statistics.median(seconds):.3f} s (min {min(seconds):.3f}, max "
              f"{max(seconds):.3f}), CPU median {statistics.median(r.cpu_seconds for r in values):.2f} s, exit "
              f"median {statistics.median(r.exit_seconds for r in values):.3f} s ({len(values)} runs)")
    if len(trees) == 2:
        ratios = [a.seconds / b.seconds for a, b in zip(runs[trees[0]], runs[trees[1]], strict=True)]
        print(f"start-up {trees[0]} / {trees[1]}, run by run: {', '.join(f'{r:.2f}' for r in ratios)} "
              f"(median {statistics.median(ratios):.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
