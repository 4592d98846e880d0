"""``n`` candidates per request (``--candidates N``): GPU and CPU cost per verified task at equal per-candidate
success rates, through the real CLI against the simulator.

    python -m bench.candidates                                  # GPU-bound load, 48 tasks, p = 0.3/0.6/0.9, n = 1/2/4
    python -m bench.candidates --load cpu --rates 0.3           # a server far faster than the two cores
    python -m bench.candidates --rates 0.3 --candidates 1 --max-attempts 12   # n = 1 with the samples of n = 4
    python -m bench.candidates --tasks 8 --rates 0.6 --candidates 1,2   # smoke run

Steps: for each success rate p, write a corpus of distinct tasks whose ``@sim`` directive says
``"success_rate": p``: every choice of every attempt passes its tests with probability p, else fails them
(``test_fail``: it compiles and runs), drawn per (task, attempt, choice) from a seeded RNG, so runs with n = 1, 2 and
4 face the same draws for the choices they share. Only the unidiomatic stage runs (``--no-idiomatic``), at most
``--max-attempts`` attempts. For each n start a fresh simulator (``python -m pipeline.simulator``, its own process,
load model below: one prefill per request, n decodes on n slots) and run the CLI with ``--candidates n``
(``--temperature 0.7``; n = 1 sends no ``n``).

Per run: tasks verified, chat requests, tokens (prompt and completion, the summary's totals, which count every
choice) per verified task, slot-seconds per verified task (the simulator's log: each request's service time times
the slots its n choices held), wall time of the process, CPU seconds of the process tree per verified task, and
the expected verified share ``1 - (1 - p)^(n * attempts)``. Results: bench/results/candidates-LOAD-TIME.json and
a Markdown table on stdout; bench/README.md ("n candidates per request") has a run and what it says.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import common
from .common import LoadSpec, TaskPlan

LOADS = {
    # 8 slots, about 6 s per answer of 300 tokens, a prompt's prefill a thirtieth of a decode per token: the server
    # is the bottleneck, even with the two cores shared.
    "gpu": LoadSpec(capacity=8, latency=0.2, decode_per_token=0.02, prefill_per_token=0.0007),
    # 16 slots, about 2 s per answer: on two shared cores, compiling and testing keep up only about half the time.
    "balanced": LoadSpec(capacity=16, latency=0.2, decode_per_token=0.006, prefill_per_token=0.0002),
    # 16 slots, 20 ms per answer: compiling and testing on the two cores is the bottleneck.
    "cpu": LoadSpec(capacity=16, latency=0.02, decode_per_token=0.0, prefill_per_token=0.0),
}


@dataclass(frozen=True)
class RatePlan(TaskPlan):
    """A task whose every choice passes with probability ``success_rate`` (see pipeline/simulator/directive.py)."""

    success_rate: float = 0.5

    def directive(self) -> str:
        plan = {"id": self.directive_id, "success_rate": self.success_rate, "failure": "test_fail",
                "stdout": self.stdout, "tokens": self.tokens}
        return f"// @sim {json.dumps(plan)}"


def run_one(rate: float, n: int, args: argparse.Namespace, corpus: Path, work: Path, config: Path) -> dict[str, Any]:
    """One CLI run over ``corpus`` with ``--candidates n`` against a fresh simulator; its figures."""
    load = LOADS[args.load]
    label = f"p{rate:g}-n{n}"
    with common.simulator(load, work / f"{label}.jsonl", stderr_path=work / f"{label}-sim.err") as sim:
        out = work / f"{label}-out"
        argv = [sys.executable, str(common.CLI), "--config", str(config), "--c-files", str(corpus), "--json-files",
                str(corpus), "--output", str(out), "--base-url", sim.url, "--model", common.MODEL,
                "--workers", str(args.workers or load.capacity), "--jobs", str(args.jobs),
                "--cache-dir", str(common.RESULTS / "cache"), "--max-tokens", "2048",
                "--max-attempts", str(args.max_attempts), "--no-idiomatic", "--temperature", "0.7",
                "--candidates", str(n)]
        run = common.run_measured(argv, cwd=common.ROOT, stdout_path=work / f"{label}.out",
                                  stderr_path=work / f"{label}.err", env=common.clean_env())
        records = common.chat(common.read_log(sim.log_path))
    totals = json.loads((out / "batch_summary.json").read_text())["totals"]
    verified = int(totals["verified"])
    per = max(verified, 1)
    first = min((float(r["arrival"]) for r in records), default=0.0)
    last = max((float(r["end"]) for r in records), default=0.0)
    slots = common.slot_seconds(records, capacity=load.capacity)
    return {
        "p": rate, "n": n, "returncode": run.returncode, "tasks": int(totals["tasks"]), "verified": verified,
        "expected_verified": round(int(totals["tasks"]) * (1 - (1 - rate) ** (n * args.max_attempts)), 1),
        "chat_requests": len(records), "n_sent": sorted({int(r.get("n") or 1) for r in records}),
        "prompt_tokens": int(totals["prompt_tokens"]), "completion_tokens": int(totals["completion_tokens"]),
        "tokens_per_verified": (totals["prompt_tokens"] + totals["completion_tokens"]) / per,
        "completion_tokens_per_verified": totals["completion_tokens"] / per,
        "slot_seconds": slots, "slot_seconds_per_verified": slots / per,
        "slots_busy": common.utilisation(records, load.capacity, first, last) if records else 0.0,
        "wall_seconds": run.wall_seconds, "cpu_seconds_per_verified": run.tree_cpu_seconds / per,
        "background_cores": max(0.0, run.system_cpu_seconds - run.tree_cpu_seconds) / run.wall_seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--load", choices=sorted(LOADS), default="gpu", help="the simulator's load model")
    parser.add_argument("--tasks", type=int, default=48, help="tasks per corpus (default: %(default)s)")
    parser.add_argument("--rates", default="0.3,0.6,0.9", help="per-candidate success rates (default: %(default)s)")
    parser.add_argument("--candidates", default="1,2,4", help="values of n (default: %(default)s)")
    parser.add_argument("--max-attempts", type=int, default=3, help="attempts per stage (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=0, help="requests in flight (default: the capacity)")
    parser.add_argument("--jobs", type=int, default=2, help="compile/test jobs (default: %(default)s)")
    parser.add_argument("--tokens", type=int, default=300, help="tokens per answer (default: %(default)s)")
    args = parser.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",")]
    counts = [int(n) for n in args.candidates.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-candidates-"))
    runs: list[dict[str, Any]] = []
    try:
        config = common.write_config(work / "sactor.toml", compile_cache=False)
        for rate in rates:
            corpus = work / f"corpus-p{rate:g}"
            plans = [RatePlan(f"task{i:04d}", f"task{i:04d}", stdout=f"out {i}", tokens=args.tokens,
                              success_rate=rate) for i in range(args.tasks)]
            common.write_corpus(corpus, plans)
            for n in counts:
                runs.append(run_one(rate, n, args, corpus, work, config))
                r = runs[-1]
                print(f"p={rate:g} n={n}: {r['verified']}/{r['tasks']} verified, {r['wall_seconds']:.1f} s",
                      file=sys.stderr, flush=True)
        rows = [[f"{r['p']:g}", r["n"], f"{r['verified']}/{r['tasks']}", r["expected_verified"], r["chat_requests"],
                 round(r["tokens_per_verified"]), round(r["completion_tokens_per_verified"]),
                 f"{r['slot_seconds_per_verified']:.2f}", f"{r['slots_busy']:.2f}", f"{r['wall_seconds']:.1f}",
                 f"{r['cpu_seconds_per_verified']:.2f}"] for r in runs]
        print(common.markdown_table(["p", "n", "verified", "expected", "requests", "tokens/verified",
                              "completion tokens/verified", "slot-s/verified", "slots busy", "wall s",
                              "CPU s/verified"], rows))
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = common.write_json(common.RESULTS / f"candidates-{args.load}-{stamp}.json",
                                 {"args": vars(args), "runs": runs})
        print(f"results: {path}")
        return 0 if all(r["returncode"] in (0, 1) for r in runs) else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
