"""Start-up seconds: from the CLI's process start to its first chat request, for one or two source trees.

    python -m bench.startup                           # this tree, 5 runs
    python -m bench.startup --other /tmp/main-tree    # this tree and another, alternating, 5 runs each

Each run translates a one-task corpus into a fresh output folder against one simulator (latency 0), with a
warm libc cache (bench/results/cache), so start-up is imports, settings, discovery of the first task, the
toolchain probe and libc check, the sandbox probe and the preflight. A tree's CLI runs with that tree first
on PYTHONPATH. Prints each run and the medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from .common import (
    MODEL,
    RESULTS,
    LoadSpec,
    TaskPlan,
    chat,
    clean_env,
    read_log,
    run_measured,
    simulator,
    write_config,
    write_corpus,
)


def one_run(tree: Path, work: Path, url: str, log: Path, cache: Path, config: Path, index: int) -> float:
    env = clean_env()
    env["PYTHONPATH"] = str(tree)
    out = work / f"out-{index}"
    argv = [sys.executable, str(tree / "batch_translate_generic.py"), "--c-files", str(work / "corpus"),
            "--json-files", str(work / "corpus"), "--output", str(out), "--base-url", url, "--model", MODEL,
            "--workers", "4", "--jobs", "2", "--cache-dir", str(cache), "--config", str(config)]
    before = {r["id"] for r in read_log(log)}
    run = run_measured(argv, cwd=work, stdout_path=work / f"{index}.out", stderr_path=work / f"{index}.err",
                       env=env)
    if run.returncode != 0:
        raise SystemExit(f"run {index} of {tree} exited {run.returncode}; see {work / f'{index}.err'}")
    first = min(r["arrival"] for r in chat(read_log(log)) if r["id"] not in before)
    return float(first - run.started)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__.split("\n\n")[0])
    p.add_argument("--other", type=Path, help="a second source tree, run in turn with this one")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--cache-dir", type=Path, default=RESULTS / "cache", help="libc rlib cache")
    args = p.parse_args(argv)
    trees = [Path(__file__).resolve().parent.parent] + ([args.other.resolve()] if args.other else [])
    seconds: dict[Path, list[float]] = {t: [] for t in trees}
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
                    value = one_run(tree, work, sim.url, log, args.cache_dir, config, len(trees) * index
                                    + trees.index(tree))
                    seconds[tree].append(value)
                    print(f"{tree}: run {index + 1}: start-up {value:.3f} s (load average "
                          f"{os.getloadavg()[0]:.1f})", flush=True)
    for tree, values in seconds.items():
        print(f"{tree}: median {statistics.median(values):.3f} s, min {min(values):.3f}, max {max(values):.3f} "
              f"({len(values)} runs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
