"""What vLLM's request ``priority`` buys when the server's waiting queue decides the order.

    python -m bench.priority [--tasks 48] [--capacity 16] [--latency 4] [--repeats 2]

The issue-16 model-bound corpus (16 slots, 4 s per answer; throughput.py's mix of repairs and failures, max 3
attempts a stage) run through the CLI three ways, alternating, each against a fresh simulator process:

* ``client orders`` (reference): ``--workers 16``, the client's own waiting line (pipeline/scheduling.py) orders;
* ``server fcfs``: ``--workers 48`` (``--multiple`` times the slots: as several runs sharing a server), the
  simulator serves its queue in arrival order (vLLM's default; our ``priority`` is sent and ignored);
* ``server priority``: ``--workers 48`` against ``--scheduling-policy priority``: the queue goes by our priority.

Figures: wall seconds of the run, the span from the first request to the last answer against the server bound
(slot-seconds of every answer / slots), slots busy over the span, and the drain (last answer minus the last
first request of a task).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import common
from .throughput import MAX_ATTEMPTS, MAX_TOKENS, make_plans

SCHEDULES = {  # name: (--workers a multiple of the slots (1) or --multiple of them (0), simulator flags)
    "client orders": (1, ()),
    "server fcfs": (0, ("--scheduling-policy", "fcfs")),
    "server priority": (0, ("--scheduling-policy", "priority")),
}


def one_run(work: Path, name: str, load: common.LoadSpec, cache: Path, config: Path, index: int,
            times: int) -> dict[str, Any]:
    multiple, flags = SCHEDULES[name]
    multiple = multiple or times
    tag = f"{name.replace(' ', '-')}-{index}"
    with common.simulator(load, work / f"{tag}.jsonl", stderr_path=work / f"{tag}.sim.err", extra=flags) as sim:
        corpus = str(work / "corpus")
        argv = [sys.executable, str(common.CLI), "--c-files", corpus, "--json-files", corpus,
                "--output", str(work / f"out-{tag}"), "--base-url", sim.url, "--model", common.MODEL,
                "--workers", str(load.capacity * multiple), "--cache-dir", str(cache), "--config", str(config),
                "--max-attempts", str(MAX_ATTEMPTS), "--max-tokens", str(MAX_TOKENS), "--request-priority", "on"]
        run = common.run_measured(argv, cwd=work, stdout_path=work / f"{tag}.out",
                                  stderr_path=work / f"{tag}.err", env=common.clean_env())
        time.sleep(0.5)  # the simulator's log lines of the last requests
        records = [r for r in common.chat(common.read_log(sim.log_path))
                   if r["status"] == 200 and r.get("max_tokens") != 1]  # the preflight probe aside
    if run.returncode not in (0, 1) or not records:
        raise SystemExit(f"{name}: exited {run.returncode}; see {work}/{tag}.err")
    first, last = min(r["arrival"] for r in records), max(r["end"] for r in records)
    last_first = max(r["arrival"] for r in records if r.get("attempt") == 1 and r.get("stage") == "unidiomatic")
    bound = common.slot_seconds(records) / load.capacity
    return {"schedule": name, "wall": run.wall_seconds, "span": last - first, "of_bound": bound / (last - first),
            "busy": common.utilisation(records, load.capacity, first, last), "drain": last - last_first,
            "requests": len(records)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.priority", description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=48)
    p.add_argument("--capacity", type=int, default=16)
    p.add_argument("--latency", type=float, default=4.0)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--multiple", type=int, default=3, help="--workers of the server-ordered runs, in slots")
    p.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "c2rust-batch")
    args = p.parse_args(argv)
    load = common.LoadSpec(capacity=args.capacity, latency=args.latency, decode_per_token=0.0)
    with tempfile.TemporaryDirectory(prefix="bench-priority-") as tmp:
        work = Path(tmp)
        common.write_corpus(work / "corpus", make_plans(args.tasks, 0.2, 0.1, tokens=400))
        config = common.write_config(work / "sactor.toml", compile_cache=False)
        runs = [one_run(work, name, load, args.cache_dir.resolve(), config, i, args.multiple)
                for i in range(args.repeats) for name in SCHEDULES]
    for run in runs:
        print(json.dumps(run), file=sys.stderr)
    rows = []
    for name in SCHEDULES:
        mine = [r for r in runs if r["schedule"] == name]
        rows.append([name, *(statistics.mean(r[k] for r in mine) for k in ("wall", "span", "of_bound", "busy",
                                                                           "drain", "requests"))])
    header = ["schedule", "wall s", "span s", "of server bound", "slots busy", "drain s", "requests"]
    print(common.markdown_table(header, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
