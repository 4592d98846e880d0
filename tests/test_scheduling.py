"""Which waiting model request gets a free slot: the most work left first (pipeline/scheduling.py), through the
limiter alone, through the client against the simulator, and through the CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from pipeline.scheduling import PriorityLimiter, WaitingLine, request_rank, stage_rank
from tests.conftest import Cli
from tests.test_batch_e2e import directive_c, run, samples_json, summary, task_json
from tests.test_llm import FakeTime, client_for, make_sim


async def _until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(5):
        while not condition():  # noqa: ASYNC110 (the limiter has no event to wait on)
            await anyio.sleep(0.005)


# --------------------------------------------------------------------------------------------------
# the limiter


async def test_waiters_get_freed_slots_by_rank_then_arrival() -> None:
    """With every slot held, waiters are served highest rank first, equal ranks in arrival order."""
    limiter = PriorityLimiter(1)
    served: list[str] = []

    async def wait(name: str, rank: int) -> None:
        async with limiter:
            served.append(name)
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        await limiter.acquire()
        for number, (name, rank) in enumerate([("low", 1), ("high-a", 5), ("mid", 3), ("high-b", 5)]):
            with request_rank(rank):
                tg.start_soon(wait, name, rank)
            await _until(lambda n=number + 1: limiter.waiting == n)  # type: ignore[misc]
        limiter.release()
    assert served == ["high-a", "high-b", "mid", "low"]
    assert limiter.borrowed_tokens == 0


async def test_a_waiter_cancelled_while_waiting_takes_no_slot() -> None:
    """A cancelled waiter leaves the line: the slot goes to the next one, and all slots come back."""
    limiter = PriorityLimiter(1)
    served: list[str] = []

    async def wait(name: str) -> None:
        async with limiter:
            served.append(name)

    async with anyio.create_task_group() as tg:
        await limiter.acquire()
        doomed = anyio.CancelScope()
        tg.start_soon(_cancellable, limiter, 9, doomed)
        await _until(lambda: limiter.waiting == 1)
        tg.start_soon(wait, "next")
        await _until(lambda: limiter.waiting == 2)
        doomed.cancel()
        await _until(lambda: limiter.waiting == 1)
        limiter.release()
    assert served == ["next"]
    assert (limiter.borrowed_tokens, limiter.waiting) == (0, 0)
    await limiter.acquire()  # the slot is free again: no leak
    limiter.release()


async def _cancellable(limiter: PriorityLimiter, rank: int, scope: anyio.CancelScope) -> None:
    with scope:
        await limiter.acquire(rank)
        limiter.release()


async def test_a_waiter_cancelled_as_the_slot_reaches_it_passes_the_slot_on() -> None:
    """The slot handed to a waiter that is cancelled before it runs goes to the next waiter, not astray."""
    limiter = PriorityLimiter(1)
    served: list[str] = []
    doomed = anyio.CancelScope()

    async def wait(name: str) -> None:
        async with limiter:
            served.append(name)

    async with anyio.create_task_group() as tg:
        await limiter.acquire()
        tg.start_soon(_cancellable, limiter, 9, doomed)
        await _until(lambda: limiter.waiting == 1)
        tg.start_soon(wait, "next")
        await _until(lambda: limiter.waiting == 2)
        limiter.release()  # granted to the rank-9 waiter, which has not run yet...
        doomed.cancel()  # ...and is cancelled before it does
    assert served == ["next"]
    assert (limiter.borrowed_tokens, limiter.available_tokens) == (0, 1)


async def test_a_free_slot_is_taken_at_once_and_over_release_is_a_bug() -> None:
    limiter = PriorityLimiter(2)
    async with limiter, limiter:
        assert limiter.available_tokens == 0
    with pytest.raises(RuntimeError, match="released more often"):
        limiter.release()
    with pytest.raises(ValueError, match="at least one slot"):
        PriorityLimiter(0)


def test_the_waiting_line_counts_the_requests_ahead() -> None:
    line = WaitingLine()
    late_new = line.join(6)
    idiomatic = line.join(3)
    repair = line.join(5)
    newer = line.join(6)
    assert [line.ahead(k) for k in (late_new, newer, repair, idiomatic)] == [0, 1, 2, 3]
    line.leave(late_new)
    assert (len(line), line.ahead(idiomatic)) == (3, 2)


def test_a_stage_ranks_by_the_most_requests_its_task_may_still_send() -> None:
    """A new task's first request ranks highest; a repair below the attempt before it; an idiomatic request
    below every unidiomatic one; with the idiomatic stage off, a unidiomatic request ranks as an idiomatic one."""
    ranks = [stage_rank(0, 2, 1, 3), stage_rank(0, 2, 2, 3), stage_rank(0, 2, 3, 3),
             stage_rank(1, 2, 1, 3), stage_rank(1, 2, 3, 3)]
    assert ranks == sorted(ranks, reverse=True) == [6, 5, 4, 3, 1]
    assert stage_rank(0, 1, 1, 3) == stage_rank(1, 2, 1, 3)


# --------------------------------------------------------------------------------------------------
# through the client and the simulator


async def test_the_server_receives_the_waiting_requests_most_work_left_first() -> None:
    """One slot, held: an idiomatic request that waits first is served after a new task's first request."""
    sim, fake = make_sim(latency=0.3, capacity=1), FakeTime(real_clock=True)
    limiter = PriorityLimiter(1)
    async with sim.serve() as url, client_for(url, fake, limiter=limiter, workers=1) as llm:

        async def ask(name: str, rank: int) -> None:
            with request_rank(rank):
                await llm.complete([{"role": "user", "content": f"request {name}"}])

        async with anyio.create_task_group() as tg:
            tg.start_soon(ask, "holding", 1)
            await _until(lambda: limiter.borrowed_tokens == 1)
            tg.start_soon(ask, "idiomatic", stage_rank(1, 2, 1, 3))
            await _until(lambda: limiter.waiting == 1)
            tg.start_soon(ask, "new task", stage_rank(0, 2, 1, 3))
            await _until(lambda: limiter.waiting == 2)
    order = [r.body["messages"][-1]["content"] for r in sorted(sim.chat_requests, key=lambda r: r.start)]
    assert order == ["request holding", "request new task", "request idiomatic"]


# --------------------------------------------------------------------------------------------------
# through the CLI


def task_and_stage(record: Any) -> tuple[str, str]:
    """The task id and stage of a chat request the simulator recorded."""
    first = next(m["content"] for m in record.body["messages"] if m["role"] == "user")
    line = next(x for x in first.splitlines() if "@sim " in x)
    return json.loads(line.split("@sim ", 1)[1])["id"], record.stage


def _corpus(root: Path, count: int) -> list[str]:
    """Tasks in pairs: one passing each stage at once, one whose unidiomatic stage needs a repair."""
    root.mkdir(parents=True)
    names = []
    for i in range(count):
        name = f"prog{i:03d}"
        unidiomatic = ("pass",) if i % 2 == 0 else ("compile_error", "pass")
        (root / f"{name}.c").write_text(directive_c(name, f"out {name}", unidiomatic=unidiomatic))
        (root / f"{name}_samples.json").write_text(samples_json(f"out {name}"))
        (root / f"{name}.json").write_text(task_json(name))
        names.append(name)
    return names


@pytest.mark.parametrize("servers", [pytest.param(1, id="one-server"), pytest.param(2, id="two-servers")])
def test_a_run_serves_unidiomatic_repairs_before_idiomatic_requests_that_waited_longer(
    cli: Cli, simulator_factory: Any, tmp_path: Path, servers: int
) -> None:
    """One slot per server, every task started at once, every other task repaired once: prog000's idiomatic
    request, sent as soon as its first answer verified, waits while the repairs of prog001 and prog003, sent
    later (their first answers came in the same wave and the next), are served. In arrival order it would go
    before them."""
    from pipeline.simulator import LoadModel

    corpus, out = tmp_path / "corpus", tmp_path / "out"
    names = _corpus(corpus, 4 * servers)
    started = [simulator_factory(load=LoadModel(capacity=1, latency=1.0, decode_per_token=0.0))
               for _ in range(servers)]
    extra: list[str] = []
    for _sim, url in started[1:]:
        extra += ["--base-url", url]
    result = run(cli, corpus, out, started[0][1], *extra, "--workers", str(servers), "--jobs", "1")
    assert result.returncode == 0, result.output
    assert summary(out)["totals"]["verified"] == len(names)
    served = sorted((r.start, *task_and_stage(r)) for sim, _url in started for r in sim.chat_requests)
    order = [(task, stage) for _start, task, stage in served]
    assert len(order) == len(names) * 5 // 2
    repairs = [i for i, item in enumerate(order) if item in {("prog001", "unidiomatic"), ("prog003", "unidiomatic")}]
    assert len(repairs) == 4  # each task's first request and its repair
    assert order.index(("prog000", "idiomatic")) > max(repairs), "\n".join(map(str, served))
