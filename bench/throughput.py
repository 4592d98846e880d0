"""Throughput of the batch engine against the simulator, with two baselines on the same corpus and server.

    python -m bench.throughput --preset model-bound
    python -m bench.throughput --preset compile-bound --tasks 100 --capacity 32 --latency 0.01

Steps: write a synthetic corpus of DISTINCT programs (``@sim`` directives: first-try passes, repairs and
failures, in blocks of 10 tasks with the preset's mix); measure the CPU cost of one compile and one test run
alone (:mod:`bench.calibrate`); start ``python -m pipeline.simulator`` (a separate process, with ``--log``) with
the load model; run the real CLI over the corpus, then the thread-pool baseline over the same corpus, then the
sequential baseline over its first ``--seq-tasks`` tasks (a whole number of mix blocks); report each run.
The compile cache is off in every run (``[toolchain] compile_cache = false`` in the sactor.toml all of them
read), clippy statistics too; the libc rlib is built once into bench/results/cache.

Results: bench/results/throughput-PRESET-TIME.json and a Markdown table on stdout (columns: bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from pipeline.config import default_jobs

from .calibrate import Calibration, calibrate
from .common import (
    CLI,
    MODEL,
    RESULTS,
    ROOT,
    Expected,
    LoadSpec,
    ProcessRun,
    TaskPlan,
    chat,
    clean_env,
    markdown_table,
    percentile,
    process_cpu_seconds,
    read_log,
    run_measured,
    simulator,
    slot_seconds,
    utilisation,
    window,
    write_config,
    write_corpus,
    write_json,
)

BLOCK = 10
MAX_ATTEMPTS = 3
MAX_TOKENS = 2048
CORES = os.cpu_count() or 1

#: Repairs, in turn: (unidiomatic plan, idiomatic plan).
REPAIRS = (
    (("compile_error", "pass"), ("pass",)),
    (("pass",), ("test_fail", "pass")),
    (("test_fail", "pass"), ("pass",)),
    (("pass",), ("compile_error", "pass")),
)
#: Failures, in turn: every attempt wrong (MAX_ATTEMPTS requests each).
FAILURES = (
    (("compile_error",), ("pass",)),
    (("pass",), ("unsafe",)),
    (("test_fail",), ("pass",)),
)


@dataclass(frozen=True)
class Preset:
    """A load model and a corpus mix."""

    name: str
    load: LoadSpec
    tasks: int
    workers: int
    repair_rate: float
    fail_rate: float
    tokens: int
    seq_tasks: int
    summary: str


PRESETS = {
    p.name: p for p in (
        Preset("compile-bound", LoadSpec(capacity=32, latency=0.005, decode_per_token=0.0, fault_rate=0.01),
               tasks=300, workers=8, repair_rate=0.3, fail_rate=0.1, tokens=300, seq_tasks=40,
               summary="a server much faster than the CPU: about 5 ms per request"),
        Preset("model-bound", LoadSpec(capacity=64, latency=0.5, decode_per_token=0.0125, fault_rate=0.01),
               tasks=256, workers=64, repair_rate=0.2, fail_rate=0.1, tokens=400, seq_tasks=10,
               summary="a slow server with many slots: 64 slots, about 5.5 s per request"),
        Preset("balanced", LoadSpec(capacity=16, latency=0.1, decode_per_token=0.002, fault_rate=0.01),
               tasks=300, workers=16, repair_rate=0.3, fail_rate=0.1, tokens=300, seq_tasks=20,
               summary="server and CPU about equally fast: 16 slots, about 0.7 s per request"),
    )
}


def make_plans(count: int, repair_rate: float, fail_rate: float, tokens: int, seed: int = 1) -> list[TaskPlan]:
    """``count`` tasks in blocks of 10 with round(rate * 10) repairs and failures each, shuffled in the block."""
    repairs = round(repair_rate * BLOCK)
    failures = round(fail_rate * BLOCK)
    if repairs + failures > BLOCK:
        raise SystemExit("--repair-rate + --fail-rate must not exceed 1")
    rng = random.Random(seed)
    plans: list[TaskPlan] = []
    n_repair = n_fail = 0
    for block in range(math.ceil(count / BLOCK)):
        kinds: list[tuple[tuple[str, ...], tuple[str, ...]]] = [(("pass",), ("pass",))] * (BLOCK - repairs - failures)
        for _ in range(repairs):
            kinds.append(REPAIRS[n_repair % len(REPAIRS)])
            n_repair += 1
        for _ in range(failures):
            kinds.append(FAILURES[n_fail % len(FAILURES)])
            n_fail += 1
        rng.shuffle(kinds)
        for offset, (uni, idio) in enumerate(kinds):
            index = block * BLOCK + offset
            if index >= count:
                break
            name = f"task{index:05d}"
            plans.append(TaskPlan(name, name, uni, idio, stdout=f"result of {name}: {index * 7919 % 10007}",
                                  tokens=tokens))
    return plans


# ------------------------------------------------------------------------------------------------------------
# One run's figures


@dataclass(frozen=True)
class RunReport:
    schedule: str
    tasks: int
    verified: int
    process: ProcessRun
    chat_requests: int
    slot_seconds: float
    busy_span: float
    busy_steady: float
    startup_seconds: float  # process start -> its first chat request
    drain_seconds: float  # the last task's first request -> the end of the last request
    latencies: list[float]
    sim_cpu_seconds: float
    background_cores: float
    expected: Expected

    @property
    def rate(self) -> float:
        return self.tasks / self.process.wall_seconds

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["process"] = self.process.as_dict()
        data.pop("latencies")
        data["tasks_per_second"] = self.rate
        data["latency_p50"] = percentile(self.latencies, 50)
        data["latency_p95"] = percentile(self.latencies, 95)
        return data


def _analyse(schedule: str, run: ProcessRun, records: list[dict[str, Any]], capacity: int, tasks: list[dict[str, Any]],
             sim_cpu: float, expected: Expected) -> RunReport:
    """One run's figures from its process measurements, the simulator's log and its task records.

    The steady window runs from the run's first chat request to the last first request of a task (after it no
    task is left to start, so idle slots are unavoidable); the drain is what follows it.
    """
    mine = chat(window(records, run.started, run.ended))
    if mine:
        first = min(r["arrival"] for r in mine)
        last = max(r["end"] for r in mine)
        starts = [r["arrival"] for r in mine if r.get("stage") == "unidiomatic" and r.get("attempt") == 1]
        steady_end = max(starts) if starts else last
    else:
        first = last = steady_end = run.started
    background = max(0.0, run.system_cpu_seconds - run.tree_cpu_seconds - sim_cpu) / run.wall_seconds
    return RunReport(
        schedule=schedule, tasks=len(tasks), verified=sum(t["status"] == "verified" for t in tasks), process=run,
        chat_requests=len(mine), slot_seconds=slot_seconds(mine), busy_span=utilisation(mine, capacity, first, last),
        busy_steady=utilisation(mine, capacity, first, steady_end),
        startup_seconds=first - run.started, drain_seconds=last - steady_end,
        latencies=[float(t["wall_seconds"]) for t in tasks], sim_cpu_seconds=sim_cpu,
        background_cores=background, expected=expected,
    )


# ------------------------------------------------------------------------------------------------------------
# The runs


def run_ours(work: Path, url: str, preset: Preset, config: Path, cache: Path, jobs: int) -> tuple[ProcessRun, Path]:
    out = work / "out-ours"
    argv = [sys.executable, str(CLI), "--c-files", str(work / "corpus"), "--json-files", str(work / "corpus"),
            "--output", str(out), "--base-url", url, "--model", MODEL, "--workers", str(preset.workers),
            "--jobs", str(jobs), "--cache-dir", str(cache), "--config", str(config),
            "--max-attempts", str(MAX_ATTEMPTS), "--max-tokens", str(MAX_TOKENS), "--progress-interval", "10"]
    run = run_measured(argv, cwd=work, stdout_path=work / "ours.out", stderr_path=work / "ours.err", env=clean_env())
    return run, out


def run_baseline(work: Path, url: str, preset: Preset, config: Path, cache: Path, schedule: str,
                 limit: int | None) -> tuple[ProcessRun, Path]:
    mode = schedule.split("+")[0]
    out = work / f"out-{schedule}"
    argv = [sys.executable, "-m", "bench.baselines", "--mode", mode, "--c-files", str(work / "corpus"),
            "--output", str(out), "--base-url", url, "--model", MODEL, "--workers", str(preset.workers),
            "--cache-dir", str(cache), "--config", str(config), "--max-attempts", str(MAX_ATTEMPTS),
            "--max-tokens", str(MAX_TOKENS)]
    if limit is not None:
        argv += ["--limit", str(limit)]
    if schedule.endswith("+sandbox"):
        argv.append("--sandbox")
    run = run_measured(argv, cwd=ROOT, stdout_path=work / f"{schedule}.out", stderr_path=work / f"{schedule}.err",
                       env=clean_env())
    return run, out


def ideal(report: RunReport, preset: Preset, cal: Calibration) -> dict[str, float | str]:
    """The rate no schedule can beat with this load model: min of the server bound and the CPU bound."""
    per_task = report.expected
    n = max(report.tasks, 1)
    # The schedule's own work: our engine and "+sandbox" baselines run tests in the sandbox, the others do not.
    sandboxed = report.schedule == "ours" or report.schedule.endswith("+sandbox")
    test = cal.test_sandboxed.cpu if sandboxed else cal.test_plain.cpu
    cpu_per_task = (per_task.compiles * cal.compile_ok.cpu + per_task.failed_compiles * cal.compile_error.cpu
                    + per_task.tests * test + (per_task.clippies * cal.clippy.cpu if cal.clippy else 0.0)) / n
    slot_per_task = report.slot_seconds / n
    server = preset.load.capacity / slot_per_task if slot_per_task > 0 else math.inf
    cpu = CORES / cpu_per_task
    cpu_available = max(CORES - report.background_cores, 0.1) / cpu_per_task
    bound = min(server, cpu)
    return {
        "requests_per_task": report.chat_requests / n,
        "service_seconds_per_request": report.slot_seconds / max(report.chat_requests, 1),
        "server_bound": server,
        "cpu_seconds_per_task": cpu_per_task,
        "cpu_bound": cpu,
        "cpu_bound_available_cores": cpu_available,
        "ideal": bound,
        "bottleneck": "server" if server <= cpu else "cpu",
        "fraction": report.rate / bound,
        "fraction_available": report.rate / min(server, cpu_available),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="balanced")
    p.add_argument("--tasks", type=int, help="corpus size")
    p.add_argument("--capacity", type=int, help="simulator generation slots")
    p.add_argument("--latency", type=float, help="simulator seconds per request")
    p.add_argument("--decode-per-token", type=float, help="simulator seconds per completion token")
    p.add_argument("--fault-rate", type=float, help="share of chat requests answered 503")
    p.add_argument("--tokens", type=int, help="answer length in tokens")
    p.add_argument("--repair-rate", type=float, help="share of tasks repaired once (a multiple of 0.1)")
    p.add_argument("--fail-rate", type=float, help="share of tasks that fail every attempt (a multiple of 0.1)")
    p.add_argument("--workers", type=int, help="--workers of our run and threads of the pool baseline")
    p.add_argument("--jobs", type=int, default=default_jobs(),
                   help="--jobs of our run (default: the engine's own default, twice the cores)")
    p.add_argument("--seq-tasks", type=int, help="tasks of the sequential baseline (0: skip it)")
    p.add_argument("--no-pool", action="store_true", help="skip the thread-pool baseline")
    p.add_argument("--pool-sandbox", action="store_true",
                   help="also run the thread-pool baseline with its tests in the pipeline's sandbox (like for like)")
    p.add_argument("--clippy", action="store_true",
                   help="lint each verified stage with clippy, as the default config does (ours only: the "
                        "baselines do not lint, so it needs --no-pool)")
    p.add_argument("--work", type=Path, help="working directory (default: a temporary one, removed after)")
    p.add_argument("--cache-dir", type=Path, default=RESULTS / "cache", help="libc rlib cache")
    args = p.parse_args(argv)
    if args.clippy and (not args.no_pool or args.pool_sandbox or (args.seq_tasks or 0) > 0):
        p.error("--clippy needs --no-pool --seq-tasks 0 (the baselines do not lint)")

    preset = PRESETS[args.preset]
    load = replace(preset.load, **{k: v for k, v in (
        ("capacity", args.capacity), ("latency", args.latency), ("decode_per_token", args.decode_per_token),
        ("fault_rate", args.fault_rate)) if v is not None})
    preset = replace(preset, load=load, **{k: v for k, v in (
        ("tasks", args.tasks), ("workers", args.workers), ("repair_rate", args.repair_rate),
        ("fail_rate", args.fail_rate), ("tokens", args.tokens), ("seq_tasks", args.seq_tasks)) if v is not None})
    work = args.work or Path(tempfile.mkdtemp(prefix=f"bench-{preset.name}-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _run(preset, args, work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


def _run(preset: Preset, args: argparse.Namespace, work: Path) -> int:
    plans = make_plans(preset.tasks, preset.repair_rate, preset.fail_rate, preset.tokens)
    write_corpus(work / "corpus", plans)
    config = write_config(work / "sactor.toml", compile_cache=False, clippy=args.clippy)
    cache = args.cache_dir.resolve()
    expected = [p.expected(MAX_ATTEMPTS) for p in plans]
    if not args.clippy:
        expected = [replace(e, clippies=0) for e in expected]
    print(f"# {preset.name}: {preset.summary}; {len(plans)} distinct tasks, workers {preset.workers}, "
          f"jobs {args.jobs}, clippy {args.clippy}, load {asdict(preset.load)}", file=sys.stderr)
    cal = calibrate(plans[:8], work / "corpus", cache, clippy=args.clippy)
    print(f"calibration: {json.dumps(cal.as_dict())}", file=sys.stderr)

    reports: list[RunReport] = []
    seq_tasks = min(preset.seq_tasks, len(plans))
    with simulator(preset.load, work / "sim.jsonl", stderr_path=work / "sim.err") as sim:
        runs: list[tuple[str, int]] = [("ours", len(plans))]
        if not args.no_pool:
            runs.append(("pool", len(plans)))
        if args.pool_sandbox:
            runs.append(("pool+sandbox", len(plans)))
        if seq_tasks > 0:
            runs.append(("sequential", seq_tasks))
        for schedule, count in runs:
            sim_cpu0 = process_cpu_seconds(sim.pid)
            if schedule == "ours":
                run, out = run_ours(work, sim.url, preset, config, cache, args.jobs)
            else:
                run, out = run_baseline(work, sim.url, preset, config, cache, schedule,
                                        None if schedule.startswith("pool") else count)
            sim_cpu = process_cpu_seconds(sim.pid) - sim_cpu0
            if run.returncode not in (0, 1):
                print(f"{schedule} exited {run.returncode}; see {work}/{schedule}.err", file=sys.stderr)
                return 1
            summary = "batch_summary.json" if schedule == "ours" else "baseline_summary.json"
            tasks = json.loads((out / summary).read_text())["tasks"]
            total = sum(expected[:count], Expected())
            time.sleep(0.5)  # the simulator's log lines of the last requests
            report = _analyse(schedule, run, read_log(sim.log_path), preset.load.capacity, tasks, sim_cpu, total)
            reports.append(report)
            print(f"{schedule}: {report.tasks} tasks in {run.wall_seconds:.1f} s ({report.rate:.2f}/s)",
                  file=sys.stderr)

    ours = reports[0]
    rows = []
    results: list[dict[str, Any]] = []
    for report in reports:
        bound = ideal(report, preset, cal)
        n = max(report.tasks, 1)
        row = {
            **report.as_dict(), **bound,
            "ours_vs_this": ours.rate / report.rate,
            "tree_cpu_per_task": report.process.tree_cpu_seconds / n,
            "self_cpu_per_task": report.process.self_cpu_seconds / n,
        }
        results.append(row)
        rows.append([
            report.schedule, report.tasks, report.verified, report.process.wall_seconds, report.rate,
            f"{bound['ideal']:.3g} ({bound['bottleneck']})", bound["fraction"], bound["fraction_available"],
            report.busy_span, report.busy_steady, report.startup_seconds, report.drain_seconds,
            row["latency_p50"], row["latency_p95"],
            report.process.peak_rss_mb, row["tree_cpu_per_task"],
            report.process.self_cpu_seconds / max(report.process.tree_cpu_seconds, 1e-9),
            report.background_cores, row["ours_vs_this"],
        ])
    header = ["schedule", "tasks", "verified", "wall s", "tasks/s", "ideal/s (bound)", "of ideal",
              "of ideal (avail. cores)", "slots busy", "slots busy (steady)", "start-up s", "drain s",
              "p50 s", "p95 s", "peak RSS MB",
              "CPU s/task", "own CPU share", "background cores", "ours / this"]
    cal_rows = [[name, cost.wall, cost.cpu, cost.samples] for name, cost in cal.__dict__.items() if cost is not None]
    first = results[0]
    print(f"\n### {preset.name}: {preset.summary}\n")
    print(f"{len(plans)} distinct tasks (repairs {preset.repair_rate:.0%}, failures {preset.fail_rate:.0%}, "
          f"answers ~{preset.tokens} tokens), max attempts {MAX_ATTEMPTS}; simulator capacity "
          f"{preset.load.capacity}, latency {preset.load.latency} s, decode {preset.load.decode_per_token} s/token, "
          f"fault rate {preset.load.fault_rate}; --workers {preset.workers} --jobs {args.jobs}"
          f"{', clippy on' if args.clippy else ''}; "
          f"{first['requests_per_task']:.2f} requests/task, {first['service_seconds_per_request']:.3f} s/request, "
          f"server bound {first['server_bound']:.2f}/s, CPU bound {first['cpu_bound']:.2f}/s "
          f"({first['cpu_seconds_per_task']:.3f} CPU s/task on {CORES} cores)\n")
    print(markdown_table(header, rows))
    print()
    print(markdown_table(["operation (alone)", "wall s", "CPU s", "samples"], cal_rows))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = write_json(RESULTS / f"throughput-{preset.name}-{stamp}.json", {
        "preset": asdict(preset), "jobs": args.jobs, "cores": CORES, "max_attempts": MAX_ATTEMPTS,
        "calibration": cal.as_dict(), "runs": results,
    })
    print(f"\nresults: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
