"""vLLM's request ``priority`` ([pipeline] request_priority, pipeline/scheduling.py ServerPriority): the client's
order told to the server, through the CLI against the simulator started as vLLM with and without
``--scheduling-policy priority``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from pipeline.scheduling import PRIORITY_LEVELS, stage_rank
from pipeline.simulator import LoadModel, SimConfig, Simulator
from pipeline.stages import STAGES
from tests.conftest import Cli
from tests.test_batch_e2e import run, summary
from tests.test_scheduling import _corpus, task_and_stage

MAX_ATTEMPTS = 6  # the default: a task's first request ranks 2 stages x 6 attempts


def sent_priority(record: Any) -> int | None:
    return record.body.get("priority") if isinstance(record.body, dict) else None


# --------------------------------------------------------------------------------------------------
# the simulator, as vLLM


@pytest.mark.parametrize("policy, order", [
    pytest.param("priority", ["p1", "p3", "p5"], id="priority-smallest-first"),
    pytest.param("fcfs", ["p5", "p1", "p3"], id="fcfs-arrival-order-priority-ignored"),
])
async def test_the_simulator_serves_its_waiting_queue_by_priority_under_the_priority_policy(
    policy: str, order: list[str]
) -> None:
    """One slot, held; three requests wait with priorities 5, 1, 3 (arriving in that order)."""
    sim = Simulator(SimConfig(load=LoadModel(capacity=1, latency=0.3), scheduling_policy=policy))
    async with sim.serve() as url, httpx2.AsyncClient(base_url=url, timeout=10, trust_env=False) as c:

        async def ask(name: str, priority: int) -> None:
            body = {"model": "sim-model", "messages": [{"role": "user", "content": name}], "max_tokens": 5,
                    "priority": priority}
            assert (await c.post("/chat/completions", json=body)).status_code == 200

        async with anyio.create_task_group() as tg:
            tg.start_soon(ask, "holding", 0)
            for name, priority in (("p5", 5), ("p1", 1), ("p3", 3)):
                await anyio.sleep(0.05)
                tg.start_soon(ask, name, priority)
    served = [r.body["messages"][0]["content"] for r in sorted(sim.chat_requests, key=lambda r: r.start)]
    assert served == ["holding", *order]


@pytest.mark.parametrize("compat, priority, status, words", [
    pytest.param("legacy", 7, 400, "Got priority 7 but Priority scheduling is not enabled.", id="legacy-refuses"),
    pytest.param("legacy", 0, 200, "", id="legacy-takes-priority-0"),
    pytest.param("0.32", 7, 200, "", id="0.32-ignores-it"),
    pytest.param("0.32", "high", 400, "priority", id="not-an-integer"),
])
def test_a_server_without_priority_scheduling_answers_a_priority_as_its_vllm_version(
    compat: str, priority: Any, status: int, words: str
) -> None:
    with Simulator(SimConfig(compat=compat)).running() as url, \
            httpx2.Client(base_url=url, timeout=10, trust_env=False) as c:
        response = c.post("/chat/completions", json={
            "model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5,
            "priority": priority})
    assert response.status_code == status, response.text
    assert words in response.text


# --------------------------------------------------------------------------------------------------
# through the CLI


def test_requests_carry_the_clients_rank_and_a_priority_server_serves_its_queue_by_it(
    cli: Cli, simulator_factory: Any, tmp_path: Path
) -> None:
    """More requests in flight than the server has slots (--workers 8, one slot): the server's own queue decides.
    Every request carries PRIORITY_LEVELS minus its rank, and the server always serves the smallest waiting
    priority: a repair goes before an idiomatic request that came earlier."""
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    names = _corpus(corpus, 6)
    sim, url = simulator_factory(load=LoadModel(capacity=1, latency=0.5), scheduling_policy="priority")
    result = run(cli, corpus, out, url, "--workers", "8", "--jobs", "1", "--request-priority", "on")
    assert result.returncode == 0, result.output
    assert summary(out)["totals"]["verified"] == len(names)
    chats = sim.chat_requests
    assert len(chats) == 1 + len(names) * 5 // 2  # the preflight probe, then every task's requests
    probe, *requests = sorted(chats, key=lambda r: r.arrival)
    assert probe.body["max_tokens"] == 1 and probe.status == 200
    for record in requests:
        expected = PRIORITY_LEVELS - stage_rank(STAGES.index(record.stage), 2, record.attempt, MAX_ATTEMPTS)
        assert sent_priority(record) == expected, (task_and_stage(record), record.attempt, record.body)
    overtaken = 0
    for served in requests:
        waiting = [r for r in requests if r.arrival < served.start - 0.2 and r.start > served.start]
        assert all(sent_priority(served) <= sent_priority(w) for w in waiting), (served, waiting)
        overtaken += sum(w.arrival < served.arrival for w in waiting)
    assert overtaken > 0  # the order differed from arrival order


@pytest.mark.parametrize("compat, carried", [
    pytest.param("legacy", "one", id="old-vllm-refuses-it-once-then-none-is-sent"),
    pytest.param("0.32", "all", id="vllm-0.32-accepts-and-ignores-it"),
])
def test_auto_never_costs_a_task_against_a_server_without_priority_scheduling(
    cli: Cli, simulator_factory: Any, tmp_path: Path, compat: str, carried: str
) -> None:
    """The default (auto) against a server started without --scheduling-policy priority: every task verifies.
    An old vLLM's 400 for a non-zero priority is met by exactly one request (the others waited for the answer
    instead of carrying the field too), which goes again at once without it; vLLM 0.32 takes the field (and
    ignores it), so every request after the first answer carries it."""
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    names = _corpus(corpus, 4)
    sim, url = simulator_factory(load=LoadModel(capacity=4, latency=0.2), compat=compat)
    result = run(cli, corpus, out, url, "--workers", "4", "--jobs", "1")
    assert result.returncode == 0, result.output
    assert summary(out)["totals"]["verified"] == len(names)
    chats = sorted(sim.chat_requests, key=lambda r: r.arrival)
    with_field = [r for r in chats if sent_priority(r) is not None]
    answered = [r for r in chats if r.status == 200]
    assert len(answered) == len(names) * 5 // 2  # no request lost, no attempt spent on the refusal
    if carried == "one":
        assert [r.status for r in with_field] == [400]
        refused = with_field[0]
        resent = [r for r in chats if r.arrival > refused.arrival and r.body["messages"] == refused.body["messages"]]
        assert resent and sent_priority(resent[0]) is None and resent[0].status == 200
        assert len(chats) == len(answered) + 1
    else:
        scout = with_field[0]
        assert all(r.status == 200 for r in chats) and len(chats) == len(answered)
        assert all(sent_priority(r) is not None for r in chats if r.arrival > scout.end + 0.05)


@pytest.mark.parametrize("servers", [pytest.param(1, id="one-server"), pytest.param(2, id="two-servers")])
def test_on_against_a_server_that_refuses_priority_stops_at_preflight_naming_the_setting(
    cli: Cli, simulator_factory: Any, tmp_path: Path, servers: int
) -> None:
    """--request-priority on and an (old) vLLM without --scheduling-policy priority: exit 2 before any task's
    request, the message naming the setting and both fixes."""
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    _corpus(corpus, 2)
    started = [simulator_factory(compat="legacy") for _ in range(servers)]
    extra = [arg for _sim, url in started[1:] for arg in ("--base-url", url)]
    result = run(cli, corpus, out, started[0][1], *extra, "--request-priority", "on")
    assert result.returncode == 2, result.output
    for words in ("[pipeline] request_priority", "--request-priority on", "--scheduling-policy priority",
                  "Priority scheduling is not enabled"):
        assert words in result.output, result.output
    asked = [r for sim, _url in started for r in sim.chat_requests]
    assert asked and all(r.body["max_tokens"] == 1 for r in asked)  # only the preflight probes


@pytest.mark.parametrize("compat, policy, code", [
    pytest.param("legacy", "fcfs", 1, id="refused"),
    pytest.param("legacy", "priority", 0, id="taken"),
])
def test_check_with_request_priority_on_says_whether_the_server_takes_it(
    cli: Cli, simulator_factory: Any, compat: str, policy: str, code: int
) -> None:
    """`check --request-priority on` sends preflight's probe: a server that refuses the field fails the check
    with the fix; one that takes it passes."""
    sim, url = simulator_factory(compat=compat, scheduling_policy=policy)
    result = cli("check", "--base-url", url, "--model", "sim-model", "--request-priority", "on")
    assert result.returncode == code, result.output
    assert ("--scheduling-policy priority" in result.output) == (code == 1), result.output
    assert [r.body["max_tokens"] == 1 and "priority" in r.body for r in sim.chat_requests][:1] == [True]
