"""``python -m bench.request_cpu``: the CLI process's own CPU per model request, alone.

Starts the simulator as a child process (127.0.0.1, ``--latency`` 0 by default, its own CPU not counted), opens one
:class:`pipeline.llm.ModelClient` in this process as a run does (preflight, vLLM's request priority learned),
and sends ``--requests`` non-streamed chat requests at ``--concurrency`` through ``ModelClient.complete`` from
inside a stage's rank (as the stage loop sends them: a unidiomatic first prompt of a directive task, about
300 tokens of answer). Reports this process's CPU (``resource.getrusage``, user + system, all threads) per
request, for each of ``--rounds`` rounds and their median, after ``--warmup`` requests that are not counted.

``--profile FILE`` writes a cProfile of the measured rounds (``python -m pstats FILE``); with it the CPU figures
include the profiler's overhead and do not compare with runs without it.

Example: ``PYTHONPATH=$PWD python -m bench.request_cpu --requests 2000 --rounds 5``
"""

from __future__ import annotations

import argparse
import cProfile
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import anyio

from bench.common import MODEL, LoadSpec, TaskPlan, c_source, simulator
from pipeline.config import DEFAULT_SYSTEM_MESSAGE, ClientSettings, ModelSettings
from pipeline.llm import ModelClient
from pipeline.prompts import first_prompt
from pipeline.scheduling import request_rank, stage_rank


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def messages() -> list[dict[str, str]]:
    """A unidiomatic first request of a directive task, as the stage loop sends it."""
    plan = TaskPlan(name="t0", directive_id="t0")
    prompt = first_prompt("unidiomatic", name="t0", c_source=c_source(plan, 0))
    return [{"role": "system", "content": DEFAULT_SYSTEM_MESSAGE}, {"role": "user", "content": prompt}]


async def _batch(llm: ModelClient, count: int, concurrency: int, prompt: Sequence[dict[str, str]]) -> None:
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        # A first request of a two-stage task with 6 attempts a stage: what the stage loop sets around it.
        with request_rank(stage_rank(0, 2, 1, 6)):
            while next_index < count:
                next_index += 1
                completion = await llm.complete(prompt, purpose="bench")
                if completion.finish_reason != "stop" or not completion.text:
                    raise RuntimeError(f"unexpected answer: {completion!r}")

    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)


async def _measure(url: str, args: argparse.Namespace) -> list[tuple[float, float]]:
    model = ModelSettings(base_url=url, model=MODEL, max_tokens=1024, api_key="EMPTY")
    client = ClientSettings(workers=args.concurrency)
    prompt = messages()
    rounds: list[tuple[float, float]] = []
    profiler = cProfile.Profile(time.process_time) if args.profile else None  # CPU, not wall time
    async with ModelClient.open(model, client) as llm:
        await llm.preflight()
        await _batch(llm, args.warmup, args.concurrency, prompt)
        for _ in range(args.rounds):
            if profiler is not None:
                profiler.enable()
            cpu, wall = _cpu(), time.perf_counter()
            await _batch(llm, args.requests, args.concurrency, prompt)
            rounds.append((_cpu() - cpu, time.perf_counter() - wall))
            if profiler is not None:
                profiler.disable()
    if profiler is not None:
        profiler.dump_stats(args.profile)
    return rounds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.request_cpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=2000, help="requests per measured round (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=5, help="measured rounds (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=300, help="requests sent first, not counted (default: %(default)s)")
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight (default: %(default)s)")
    p.add_argument("--latency", type=float, default=0.0,
                   help="the simulator's seconds per request (default: %(default)s: the client is never idle)")
    p.add_argument("--profile", type=Path, default=None, help="write a cProfile of the measured rounds here")
    args = p.parse_args(argv)
    load = LoadSpec(capacity=max(64, args.concurrency), latency=args.latency, decode_per_token=0.0)
    with (tempfile.TemporaryDirectory(prefix="request-cpu-") as tmp,
          simulator(load, Path(tmp) / "sim.jsonl", stderr_path=Path(tmp) / "sim.err") as sim):
        rounds = anyio.run(_measure, sim.url, args)
    per_request = [cpu / args.requests * 1000 for cpu, _ in rounds]
    for index, ((cpu, wall), ms) in enumerate(zip(rounds, per_request, strict=True), 1):
        print(f"round {index}: {args.requests} requests in {wall:.2f} s, CPU {cpu:.2f} s: {ms:.3f} ms/request")
    print(f"median CPU per request: {statistics.median(per_request):.3f} ms "
          f"(min {min(per_request):.3f}, max {max(per_request):.3f}; concurrency {args.concurrency})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
