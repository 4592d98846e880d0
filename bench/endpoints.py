"""Two model servers against one: throughput of the same model-bound corpus through the real CLI.

    python -m bench.endpoints                       # 64 tasks, capacity 4, 6 s per request (about 5 minutes)
    python -m bench.endpoints --tasks 16 --latency 1   # smoke run

Steps: write a corpus of distinct first-try-pass programs (``@sim`` directives: two chat requests per task, one
per stage); start ``python -m pipeline.simulator`` processes of capacity C with a fixed latency (the model is
the bottleneck: C / latency requests per second per server, far below what two shared cores compile and test:
the compile cache is on, so a task costs its two sandboxed test runs and few compiles); run the
CLI over the corpus with one server (``--workers C``), then over a fresh output with two servers
(``--base-url A --base-url B --workers 2C``: C per server).

Reported per run: wall time of the process, tasks/s, and the serving window (first chat request's arrival to
the last one's end, from the simulators' logs), which leaves out start-up (toolchain, sandbox probe,
preflight) common to both; the ratio two / one of both. Results: bench/results/endpoints-TIME.json and a
Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import (
    CLI,
    MODEL,
    RESULTS,
    ROOT,
    LoadSpec,
    TaskPlan,
    chat,
    clean_env,
    markdown_table,
    read_log,
    run_measured,
    simulator,
    utilisation,
    write_config,
    write_corpus,
    write_json,
)


def run_once(servers: int, args: argparse.Namespace, corpus: Path, work: Path, config: Path) -> dict[str, Any]:
    """One CLI run over ``corpus`` against ``servers`` fresh simulators; its figures."""
    load = LoadSpec(capacity=args.capacity, latency=args.latency, decode_per_token=0.0)
    label = f"{servers}-server"
    with contextlib.ExitStack() as stack:
        sims = [stack.enter_context(simulator(load, work / f"{label}-sim{i}.jsonl",
                                              stderr_path=work / f"{label}-sim{i}.err", seed=i))
                for i in range(servers)]
        out = work / f"{label}-out"
        argv = [sys.executable, str(CLI), "--config", str(config), "--c-files", str(corpus), "--json-files",
                str(corpus), "--output", str(out), "--model", MODEL, "--workers", str(args.capacity * servers),
                "--jobs", str(args.jobs), "--cache-dir", str(RESULTS / "cache"), "--max-tokens", "2048",
                *[a for sim in sims for a in ("--base-url", sim.url)]]
        run = run_measured(argv, cwd=ROOT, stdout_path=work / f"{label}.out", stderr_path=work / f"{label}.err",
                           env=clean_env())
        logs = [chat(read_log(sim.log_path)) for sim in sims]
    summary = json.loads((out / "batch_summary.json").read_text())
    records = [r for log in logs for r in log]
    first = min(float(r["arrival"]) for r in records)
    last = max(float(r["end"]) for r in records)
    serving = last - first
    return {
        "servers": servers, "returncode": run.returncode, "tasks": summary["totals"]["tasks"],
        "verified": summary["totals"]["verified"], "wall_seconds": run.wall_seconds,
        "tasks_per_second": summary["totals"]["tasks"] / run.wall_seconds,
        "serving_seconds": serving, "serving_tasks_per_second": summary["totals"]["tasks"] / serving,
        "requests_per_server": [len(log) for log in logs],
        "slots_busy": [utilisation(log, args.capacity, first, last) for log in logs],
        "endpoints": summary.get("endpoints"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=64, help="tasks in the corpus (default: %(default)s)")
    parser.add_argument("--capacity", type=int, default=4, help="each server's concurrent generations (C)")
    parser.add_argument("--latency", type=float, default=6.0, help="seconds per chat request (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=2, help="compile/test jobs (default: %(default)s)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-endpoints-"))
    try:
        corpus = work / "corpus"
        write_corpus(corpus, [TaskPlan(f"task{i:04d}", f"task{i:04d}", stdout=f"out {i}", tokens=100)
                              for i in range(args.tasks)])
        config = write_config(work / "sactor.toml", compile_cache=True)
        runs = [run_once(1, args, corpus, work, config), run_once(2, args, corpus, work, config)]
        one, two = runs
        ratio_wall = two["tasks_per_second"] / one["tasks_per_second"]
        ratio_serving = two["serving_tasks_per_second"] / one["serving_tasks_per_second"]
        rows = [[f"{r['servers']} x capacity {args.capacity}", r["returncode"], r["tasks"], r["verified"],
                 f"{r['wall_seconds']:.1f}", f"{r['tasks_per_second']:.2f}", f"{r['serving_seconds']:.1f}",
                 f"{r['serving_tasks_per_second']:.2f}", " / ".join(str(n) for n in r["requests_per_server"]),
                 " / ".join(f"{u:.2f}" for u in r["slots_busy"])] for r in runs]
        print(markdown_table(["servers", "exit", "tasks", "verified", "wall s", "tasks/s", "serving s",
                              "tasks/s (serving)", "chat requests per server", "slots busy"], rows))
        print(f"\nthroughput ratio two / one: {ratio_wall:.2f}x (wall), {ratio_serving:.2f}x (serving window)")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = write_json(RESULTS / f"endpoints-{stamp}.json", {
            "args": vars(args), "runs": runs, "ratio_wall": ratio_wall, "ratio_serving": ratio_serving})
        print(f"results: {path}")
        ok = all(r["returncode"] == 0 and r["verified"] == args.tasks for r in runs)
        return 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
