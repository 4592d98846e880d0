"""The batch engine at scale: 10,000 tasks through the real CLI, then a rerun of the finished corpus.

    python -m bench.scale                 # 10,000 tasks (several minutes on 2 cores)
    python -m bench.scale --tasks 200     # a quick smoke run

Every task has one test and passes first try in both stages. The programs are IDENTICAL (one ``@sim``
directive for all tasks), so after the first task every build is a compile-cache hit: this measures the
engine (discovery, scheduling, sandboxed test runs, result writing, the ledger), not rustc. Clippy statistics
are off (``[toolchain] clippy = false``): they are not cached and would cost 20,000 clippy runs.
The simulator (``python -m pipeline.simulator``, a separate process) answers at once (``--latency 0``).

Reported: wall time and tasks per second of the first run; the CLI process's peak memory (VmHWM, sampled
every 0.1 s; its children not included) and, from wait4, the largest resident size of any process of the run;
then the wall time of a rerun over the finished corpus, the chat requests it sent (must be 0) and its other
requests (preflight: GET /v1/models and one POST /tokenize probe). Targets: rerun < 10 s, peak memory < 300 MB.
Results: bench/results/scale-N-TIME.json and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from .common import (
    CLI,
    MODEL,
    RESULTS,
    LoadSpec,
    ProcessRun,
    TaskPlan,
    chat,
    clean_env,
    markdown_table,
    process_cpu_seconds,
    read_log,
    run_measured,
    simulator,
    window,
    write_config,
    write_corpus,
    write_json,
)

RERUN_TARGET_SECONDS = 10.0
MEMORY_TARGET_MB = 300.0


def _cli(work: Path, url: str, args: argparse.Namespace, cache: Path) -> list[str]:
    return [sys.executable, str(CLI), "--c-files", str(work / "corpus"), "--json-files", str(work / "corpus"),
            "--output", str(work / "out"), "--base-url", url, "--model", MODEL, "--workers", str(args.workers),
            "--jobs", str(args.jobs), "--cache-dir", str(cache), "--config", str(work / "sactor.toml"),
            "--progress-interval", "30"]


def _row(label: str, run: ProcessRun, tasks: int, chat_requests: int, other_requests: int) -> list[Any]:
    return [label, tasks, run.returncode, run.wall_seconds, tasks / run.wall_seconds if tasks else 0.0,
            chat_requests, other_requests, run.peak_rss_mb, run.tree_maxrss_mb, run.self_cpu_seconds,
            run.tree_cpu_seconds]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=10_000)
    p.add_argument("--workers", type=int, default=16, help="--workers of the run")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="--jobs of the run")
    p.add_argument("--capacity", type=int, default=64, help="simulator generation slots")
    p.add_argument("--work", type=Path, help="working directory (default: a fresh one under /tmp, removed after)")
    p.add_argument("--keep", action="store_true", help="keep the working directory")
    p.add_argument("--cache-dir", type=Path, default=RESULTS / "cache", help="libc rlib and compile cache")
    args = p.parse_args(argv)

    work = (args.work or Path(f"/tmp/bench-scale-{args.tasks}-{os.getpid()}")).resolve()
    if (work / "out").exists():
        shutil.rmtree(work / "out")
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _run(args, work)
    finally:
        if args.work is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def _run(args: argparse.Namespace, work: Path) -> int:
    n = args.tasks
    started = time.perf_counter()
    plans = [TaskPlan(f"t{i:05d}", "scale", stdout="scale ok", tokens=40) for i in range(n)]
    write_corpus(work / "corpus", plans, num_tests=1)
    write_config(work / "sactor.toml", compile_cache=True, clippy=False)
    cache = args.cache_dir.resolve()
    print(f"corpus: {n} tasks written to {work / 'corpus'} in {time.perf_counter() - started:.1f} s; "
          f"identical programs: every build after the first is a compile-cache hit", file=sys.stderr)
    load = LoadSpec(capacity=args.capacity, latency=0.0, decode_per_token=0.0)
    log_path = work / "sim.jsonl"
    log_path.unlink(missing_ok=True)
    with simulator(load, log_path, stderr_path=work / "sim.err") as sim:
        argv = _cli(work, sim.url, args, cache)
        sim0 = process_cpu_seconds(sim.pid)
        first = run_measured(argv, cwd=work, stdout_path=work / "run1.out", stderr_path=work / "run1.err",
                             env=clean_env())
        sim1 = process_cpu_seconds(sim.pid)
        print(f"first run: exit {first.returncode} in {first.wall_seconds:.1f} s", file=sys.stderr)
        time.sleep(0.5)
        rerun = run_measured(argv, cwd=work, stdout_path=work / "run2.out", stderr_path=work / "run2.err",
                             env=clean_env())
        print(f"rerun: exit {rerun.returncode} in {rerun.wall_seconds:.1f} s", file=sys.stderr)
        time.sleep(0.5)
        records = read_log(log_path)
    summary = json.loads((work / "out" / "batch_summary.json").read_text())
    totals = summary["totals"]
    first_records = window(records, first.started, first.ended)
    rerun_records = window(records, rerun.started, rerun.ended)
    first_chat, rerun_chat = len(chat(first_records)), len(chat(rerun_records))
    rows = [
        _row("first run", first, n, first_chat, len(first_records) - first_chat),
        _row("rerun (finished corpus)", rerun, summary["this_run"]["skipped_unchanged"], rerun_chat,
             len(rerun_records) - rerun_chat),
    ]
    header = ["run", "tasks", "exit", "wall s", "tasks/s", "chat requests", "other requests", "peak RSS MB (CLI)",
              "max RSS MB (any process)", "CLI CPU s", "CPU s (CLI + children)"]
    checks = {
        "verified": totals["verified"] == n,
        "rerun_seconds_below_10": rerun.wall_seconds < RERUN_TARGET_SECONDS,
        "rerun_chat_requests_zero": rerun_chat == 0,
        "peak_memory_below_300_mb": max(first.peak_rss_mb, rerun.peak_rss_mb) < MEMORY_TARGET_MB,
    }
    print(f"\n### scale: {n} tasks, one test each, identical programs (compile cache hits), clippy off, "
          f"simulator latency 0 (capacity {args.capacity}); --workers {args.workers} --jobs {args.jobs}\n")
    print(markdown_table(header, rows))
    print(f"\nverified {totals['verified']}/{n}; simulator CPU during the first run {sim1 - sim0:.1f} s; "
          f"checks: {', '.join(k + ('=met' if v else '=MISSED') for k, v in checks.items())}")
    path = write_json(RESULTS / f"scale-{n}-{time.strftime('%Y%m%d-%H%M%S')}.json", {
        "tasks": n, "workers": args.workers, "jobs": args.jobs, "capacity": args.capacity,
        "first_run": {**first.as_dict(), "chat_requests": first_chat,
                      "other_requests": len(first_records) - first_chat, "simulator_cpu_seconds": sim1 - sim0},
        "rerun": {**rerun.as_dict(), "chat_requests": rerun_chat, "other_requests": len(rerun_records) - rerun_chat,
                  "skipped_unchanged": summary["this_run"]["skipped_unchanged"]},
        "totals": totals, "checks": checks,
    })
    print(f"results: {path}", file=sys.stderr)
    return 0 if all(checks.values()) and first.returncode == 0 and rerun.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
