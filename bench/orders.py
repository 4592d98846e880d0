"""Which order of waiting model requests finishes a run soonest: a deterministic model of the engine's schedule.

    python -m bench.orders

No server, no compiler: discrete events only. ``slots`` generation slots serve one request each for ``service``
seconds; after each answer the task's candidate is verified on one of ``jobs`` CPU slots for ``cpu`` seconds;
then the task sends its next request (a repair, the next stage) or ends. At most ``task workers`` tasks are
under way; a new one starts when one ends. Tasks follow throughput.py's corpus plans (blocks of 10 with the
preset's repairs and failures, max 3 attempts a stage, two stages). Waiting requests are served by one of:

* ``arrival``: first come, first served (anyio's CapacityLimiter; main before #16);
* ``under-way``: the task furthest along first (a later stage, a later attempt), then arrival;
* ``most-left``: the task that may still send the most requests first (pipeline/scheduling.py), then arrival.

It prints the makespan of each (seconds from the first request to the last verification) against the server
bound (requests x service / slots). Used for the choice in bench/README.md (#16).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Sequence

from .throughput import MAX_ATTEMPTS, make_plans

Plan = tuple[tuple[bool, ...], ...]  # per stage, per attempt: does the answer verify
Rank = Callable[[int, int, int], int]  # (stage index, attempt, stage count) -> higher is served first

ORDERS: dict[str, Rank] = {
    "arrival": lambda stage, attempt, stages: 0,
    "under-way": lambda stage, attempt, stages: stage * MAX_ATTEMPTS + attempt - 1,
    "most-left": lambda stage, attempt, stages: (stages - stage) * MAX_ATTEMPTS - attempt + 1,
}


def plans(count: int, repair_rate: float, fail_rate: float) -> list[Plan]:
    """throughput.py's corpus plans (same mix, same shuffle), as verdicts."""
    return [tuple(tuple(step == "pass" for step in stage) for stage in (p.unidiomatic, p.idiomatic))
            for p in make_plans(count, repair_rate, fail_rate, tokens=0)]


def makespan(tasks: Sequence[Plan], *, slots: int, service: float, cpu: float, jobs: int, workers: int,
             rank: Rank) -> tuple[float, int]:
    """(seconds until the last task ends, chat requests served)."""
    arrivals = itertools.count()
    events: list[tuple[float, int, str, int]] = []
    waiting: list[tuple[int, int, int]] = []
    verifying: list[int] = []
    where: dict[int, tuple[int, int]] = {}
    free, cpu_free, started, active, end, served = slots, jobs, 0, 0, 0.0, 0

    def ask(task: int) -> None:
        stage, attempt = where[task]
        heapq.heappush(waiting, (-rank(stage, attempt, len(tasks[task])), next(arrivals), task))

    def start_tasks() -> None:
        nonlocal started, active
        while active < workers and started < len(tasks):
            where[started] = (0, 1)
            ask(started)
            started, active = started + 1, active + 1

    def dispatch(now: float) -> None:
        nonlocal free, cpu_free, served
        while free and waiting:
            free, served = free - 1, served + 1
            heapq.heappush(events, (now + service, next(arrivals), "answer", heapq.heappop(waiting)[2]))
        while cpu_free and verifying:
            cpu_free -= 1
            heapq.heappush(events, (now + cpu, next(arrivals), "verified", verifying.pop(0)))

    start_tasks()
    dispatch(0.0)
    while events:
        now, _, kind, task = heapq.heappop(events)
        if kind == "answer":
            free += 1
            verifying.append(task)
        else:
            cpu_free += 1
            stage, attempt = where[task]
            steps = tasks[task][stage]
            ok = steps[min(attempt, len(steps)) - 1]
            if ok and stage + 1 < len(tasks[task]):
                where[task] = (stage + 1, 1)
                ask(task)
            elif ok or attempt >= MAX_ATTEMPTS:
                active, end = active - 1, now
                start_tasks()
            else:
                where[task] = (stage, attempt + 1)
                ask(task)
        dispatch(now)
    return end, served


def main() -> int:
    cases = [  # (name, tasks, slots, service s, repair rate, fail rate, CPU s per verification)
        ("48 tasks, 16 slots, 4 s, first-try passes", 48, 16, 4.0, 0.0, 0.0, 0.15),
        ("256 tasks, model-bound preset", 256, 64, 5.5, 0.2, 0.1, 0.1),
        ("1024 tasks, model-bound preset", 1024, 64, 5.5, 0.2, 0.1, 0.1),
    ]
    print("| corpus | task workers | " + " | ".join(f"{name} s (of bound)" for name in ORDERS) + " |")
    print("|---|---|" + "---|" * len(ORDERS))
    for name, count, slots, service, repairs, failures, cpu in cases:
        tasks = plans(count, repairs, failures)
        for factor in (2, 4):
            cells = []
            for rank in ORDERS.values():
                span, served = makespan(tasks, slots=slots, service=service, cpu=cpu, jobs=2,
                                        workers=factor * slots + 4, rank=rank)
                bound = served * service / slots
                cells.append(f"{span:.1f} ({bound / span:.3f})")
            print(f"| {name} | {factor} x slots + 4 | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
