"""The model client over real HTTP against the simulator: retries, outage budget, context budget, limits."""

from __future__ import annotations

import json
import logging
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx2
import openai
import pytest

import pipeline.llm as llm_module
from pipeline.config import ClientSettings, ModelSettings
from pipeline.errors import (
    ContextOverflow,
    ModelUnavailable,
    RequestFailed,
    ServerBusy,
    ServerUnreachable,
)
from pipeline.llm import Completion, ModelClient, estimate_tokens
from pipeline.scheduling import BEFORE_STAGES, PriorityLimiter, request_rank, server_priority
from pipeline.simulator import FaultPlan, LoadModel, SimConfig, Simulator

MODEL = "sim-model"
HELLO = [{"role": "user", "content": "Translate this C program into Rust."}]
#: The simulator's protocols: vLLM 0.32 (default) and older servers; tests of behaviour that differs run on both.
COMPATS = [pytest.param("0.32", id="vllm-0.32"), pytest.param("legacy", id="legacy")]


class FakeTime:
    """A clock that only moves when the client sleeps, so waits are instant and outages take no fake."""

    def __init__(self, *, real_clock: bool = False) -> None:
        self.now = 1000.0
        self.real_clock = real_clock
        self.sleeps: list[float] = []
        self.on_sleep: Callable[[], Awaitable[None]] | None = None

    def clock(self) -> float:
        return time.monotonic() if self.real_clock else self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        hook, self.on_sleep = self.on_sleep, None
        if hook is not None:
            await hook()
        await anyio.lowlevel.checkpoint()


def make_sim(
    *,
    script: tuple[str, ...] = (),
    rate: float = 0.0,
    kinds: tuple[str, ...] = ("503",),
    retry_after: float = 1.0,
    max_model_len: int = 8192,
    tokenize: bool = True,
    latency: float = 0.0,
    capacity: int = 8,
    stall_seconds: float = 30.0,
    compat: str = "0.32",
    api_key: str | None = None,
    trickle_interval: float = 2.0,
) -> Simulator:
    return Simulator(SimConfig(
        answers_dir=None, model=MODEL, max_model_len=max_model_len,
        load=LoadModel(capacity=capacity, latency=latency, decode_per_token=0.0),
        faults=FaultPlan(rate=rate, kinds=kinds, script=script, seed=0, retry_after=retry_after,
                         stall_seconds=stall_seconds, trickle_interval=trickle_interval),
        tokenize=tokenize, log_path=None, record_bodies=True, compat=compat, api_key=api_key,
    ))


def settings(**overrides: Any) -> ClientSettings:
    """Small retry settings so the failure paths finish at once."""
    values: dict[str, Any] = dict(workers=4, request_timeout=10.0, connect_timeout=2.0, retry_attempts=3,
                                  retry_deadline=60.0, retry_max_wait=0.05, outage_budget=30.0)
    values.update(overrides)
    return ClientSettings(**values)


@asynccontextmanager
async def client_for(
    base_url: str, fake: FakeTime, *, model: str = MODEL, max_tokens: int = 1024, preflight: bool = True,
    api_key: str = "EMPTY", limiter: PriorityLimiter | anyio.CapacityLimiter | None = None, **client: Any,
) -> AsyncIterator[ModelClient]:
    model_settings = ModelSettings(base_url=base_url, model=model, max_tokens=max_tokens, api_key=api_key)
    async with ModelClient.open(model_settings, settings(**client), limiter=limiter, sleep=fake.sleep,
                                clock=fake.clock) as llm:
        if preflight:
            await llm.preflight()
        yield llm


@pytest.fixture
def closed_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    yield port


def chat_bodies(sim: Simulator) -> list[dict[str, Any]]:
    return [r.body if isinstance(r.body, dict) else json.loads(r.body) for r in sim.chat_requests]


# --------------------------------------------------------------------------------------------------
# transient faults are ridden out, within retry_attempts


@pytest.mark.parametrize("script", [
    pytest.param(("503", "503"), id="two-503s"),
    pytest.param(("500", "502"), id="500-then-502"),
    pytest.param(("429",), id="429-with-retry-after"),
    pytest.param(("drop", "drop"), id="dropped-connections"),
    pytest.param(("malformed",), id="malformed-body"),
    pytest.param(("drop", "503", "malformed"), id="mixed-up-to-the-last-attempt"),
    pytest.param(("abort",), id="vllm-stopping-aborts-the-answer"),
])
@pytest.mark.parametrize("compat", COMPATS)
async def test_rides_out_transient_faults(script: tuple[str, ...], compat: str) -> None:
    """Scripted transient faults are retried until an answer arrives, one request per attempt."""
    sim, fake = make_sim(script=script, compat=compat), FakeTime()
    async with sim.serve() as url, client_for(url, fake, retry_attempts=4) as llm:
        completion = await llm.complete(HELLO, purpose="t:unidiomatic:1")
    assert completion.text
    assert completion.requests == len(script) + 1
    assert [r.fault or "ok" for r in sim.chat_requests] == [*script, "ok"]
    assert len(fake.sleeps) == len(script)
    assert llm.stats.retries == len(script)
    assert llm.stats.requests_sent == len(script) + 1


@pytest.mark.parametrize("stream", [pytest.param(False, id="plain"), pytest.param(True, id="stream")])
async def test_a_stalled_request_times_out_and_is_retried(stream: bool) -> None:
    """A server that holds the connection without answering is cut off at request_timeout and retried."""
    sim, fake = make_sim(script=("stall",), stall_seconds=30.0), FakeTime()
    async with sim.serve() as url, client_for(url, fake, request_timeout=1.0, stream=stream) as llm:
        with anyio.fail_after(10):
            completion = await llm.complete(HELLO)
    assert completion.requests == 2
    assert [r.fault or "ok" for r in sim.chat_requests] == ["stall", "ok"]


async def test_429_waits_at_least_retry_after() -> None:
    """A 429's Retry-After (fractional seconds) is a lower bound on the wait, above retry_max_wait."""
    sim, fake = make_sim(script=("429",), retry_after=2.5), FakeTime()
    async with sim.serve() as url, client_for(url, fake, retry_max_wait=0.05) as llm:
        await llm.complete(HELLO)
    assert len(fake.sleeps) == 1
    assert fake.sleeps[0] >= 2.5


async def test_a_request_is_never_sent_more_than_retry_attempts_times() -> None:
    """With every request failing and another request succeeding meanwhile, a cycle is retry_attempts long."""
    sim, fake = make_sim(script=("503", "ok", "503", "503", "503")), FakeTime()
    async with sim.serve() as url, client_for(url, fake, retry_attempts=3) as llm:

        async def another_request_succeeds() -> None:
            await llm.complete(HELLO, purpose="other")

        fake.on_sleep = another_request_succeeds
        with pytest.raises(RequestFailed, match="answered others") as failed:
            await llm.complete(HELLO, purpose="unlucky")
    assert failed.value.status == 503
    assert [r.fault or "ok" for r in sim.chat_requests] == ["503", "ok", "503", "503"]
    assert isinstance(failed.value.__cause__, ServerBusy)


async def test_retry_deadline_counts_from_the_first_attempt(caplog: pytest.LogCaptureFixture) -> None:
    """retry_deadline bounds the whole cycle from the first request's start: a first attempt that outlasts it is
    not retried; one that fails at once is retried with the backoff logged (attempt 1 failed)."""
    from pipeline.llm import retry_transient

    calls: list[float] = []

    async def slow_503() -> str:
        calls.append(time.monotonic())
        await anyio.sleep(0.3)
        raise ServerBusy("HTTP 503", status=503)

    with pytest.raises(ServerBusy):
        await retry_transient(slow_503, attempts=5, deadline=0.2, max_wait=0.01)
    assert len(calls) == 1

    answers = iter([ServerBusy("HTTP 503", status=503), "ready"])

    async def fails_once() -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    with caplog.at_level(logging.INFO, logger="pipeline.llm"):
        assert await retry_transient(fails_once, attempts=5, deadline=60, max_wait=0.01, what="unit") == "ready"
    assert "unit: attempt 1 failed (HTTP 503); retrying in" in caplog.text


@pytest.mark.parametrize(("down", "says"), [
    pytest.param("503", "answered HTTP 503: The server is overloaded", id="every-request-503"),
    pytest.param("drop", "dropped the connection before answering", id="every-connection-dropped"),
    pytest.param("refused", "cannot connect to http://127.0.0.1:", id="port-closed"),
])
@pytest.mark.parametrize("compat", COMPATS)
async def test_outage_waits_then_stops_the_run_after_the_outage_budget(
    down: str, says: str, compat: str, closed_port: int,
) -> None:
    """A dead server: the request waits through retry cycles, then ModelUnavailable when the budget is out.

    The message says what happened: an error status, a dropped connection, or no connection at all.
    """
    fake = FakeTime()
    sim = make_sim(rate=1.0, kinds=(down,), compat=compat) if down != "refused" else None
    async with _maybe_serve(sim) as url:
        url = url or f"http://127.0.0.1:{closed_port}/v1"
        async with client_for(url, fake, preflight=False, retry_attempts=2, retry_max_wait=1.0,
                              outage_budget=20.0) as llm:
            started = fake.now
            with pytest.raises(ModelUnavailable, match=r"has not answered for \d+ s \(outage budget 20 s\)") as stop:
                await llm.complete(HELLO)
            sent = llm.stats.requests_sent
    assert says in str(stop.value)
    if down != "refused":
        assert "cannot connect" not in str(stop.value)
    assert fake.now - started >= 20.0
    assert sent > 2, "it must start the retry cycle again rather than give up after one cycle"
    assert sent % 2 == 0, "every cycle is exactly retry_attempts requests"
    if sim is not None:
        assert len(sim.chat_requests) == sent


@asynccontextmanager
async def _maybe_serve(sim: Simulator | None) -> AsyncIterator[str | None]:
    if sim is None:
        yield None
    else:
        async with sim.serve() as url:
            yield url


async def test_an_outage_that_ends_within_the_budget_is_waited_out() -> None:
    """Retries exhausted, nothing else succeeded, budget not spent: wait and try again without returning."""
    sim, fake = make_sim(script=("503", "503", "503", "503")), FakeTime()
    async with sim.serve() as url, client_for(url, fake, retry_attempts=2, retry_max_wait=1.0,
                                              outage_budget=300.0) as llm:
        completion = await llm.complete(HELLO)
    assert completion.requests == 5
    assert completion.seconds == pytest.approx(sum(fake.sleeps))


# --------------------------------------------------------------------------------------------------
# permanent errors fail at once


@pytest.mark.parametrize("compat", COMPATS)
async def test_unknown_model_fails_at_once_listing_served_models(compat: str) -> None:
    """A 404 for the model is ModelUnavailable naming what the server serves, after one chat request."""
    sim, fake = make_sim(compat=compat), FakeTime()
    async with sim.serve() as url, client_for(url, fake, model="no-such-model", preflight=False) as llm:
        with pytest.raises(ModelUnavailable) as failed:
            await llm.complete(HELLO)
    assert str(failed.value) == (
        f"model no-such-model is not served by {url}; the server serves: {MODEL}: "
        f"set [VLLM] model (or --model) to one of them"
    )
    assert len(sim.chat_requests) == 1
    assert fake.sleeps == []


async def test_preflight_rejects_an_unknown_model_before_any_chat_request() -> None:
    """Preflight lists the served models and names them when ours is missing."""
    sim, fake = make_sim(), FakeTime()
    async with sim.serve() as url:
        with pytest.raises(ModelUnavailable, match=f"the server serves: {MODEL}"):
            async with client_for(url, fake, model="no-such-model"):
                pass
    assert sim.chat_requests == []


async def test_preflight_reports_the_server() -> None:
    """Preflight reads max_model_len from /v1/models and finds /tokenize at the server root."""
    sim, fake = make_sim(max_model_len=4096), FakeTime()
    async with sim.serve() as url, client_for(url, fake, preflight=False) as llm:
        info = await llm.preflight()
    assert (info.base_url, info.model, info.served, info.max_model_len, info.tokenize) == (
        url, MODEL, (MODEL,), 4096, True)
    assert any(r.path == "/tokenize" for r in sim.requests)


async def test_preflight_against_a_closed_port_says_how_to_start_vllm(closed_port: int) -> None:
    """Connection refused is a ModelUnavailable with the fix, after a couple of quick tries at most."""
    fake = FakeTime()
    url = f"http://127.0.0.1:{closed_port}/v1"
    with pytest.raises(ModelUnavailable) as failed:
        async with client_for(url, fake):
            pass
    assert str(failed.value).startswith(f"cannot connect to {url}: connection refused; is vLLM running?")
    assert "scripts/start_vllm.sh" in str(failed.value)
    assert len(fake.sleeps) <= 2


PROMPT_FIX = ("this task's prompt is too long for the model: start vLLM with a larger --max-model-len "
              "(MAX_MODEL_LEN=) or leave the task out; lowering [VLLM] max_tokens cannot help")
BOTH_FIX = "lower [VLLM] max_tokens or start vLLM with a larger --max-model-len"


@pytest.mark.parametrize("tokenize", [pytest.param(True, id="tokenize"), pytest.param(False, id="estimate")])
@pytest.mark.parametrize(("chars", "context", "part"), [
    pytest.param(4000, 1400, "both", id="prompt-plus-max-tokens"),
    pytest.param(7000, 1500, "prompt", id="prompt-alone"),
])
async def test_context_overflow_is_caught_before_sending(tokenize: bool, chars: int, context: int, part: str) -> None:
    """A prompt that leaves too little room fails naming the part that is too long and its fix; nothing is sent."""
    sim, fake = make_sim(max_model_len=context, tokenize=tokenize), FakeTime()
    prompt = [{"role": "user", "content": "x" * chars}]
    async with sim.serve() as url, client_for(url, fake, max_tokens=4096) as llm:
        assert llm.stats.requests_sent == 0
        with pytest.raises(ContextOverflow) as failed:
            await llm.complete(prompt)
    counted = chars // 4 + 4 if tokenize else estimate_tokens(prompt)
    how = "counted by /tokenize" if tokenize else "estimated"
    if part == "both":
        expected = f"max_tokens 4096 + prompt {counted} exceeds the model's context of {context}: {BOTH_FIX}"
    else:
        expected = (f"the prompt alone ({counted} tokens) does not fit the model's context of {context} tokens: "
                    f"{PROMPT_FIX}")
    assert str(failed.value) == f"{expected} (prompt tokens {how})"
    assert failed.value.requests == 0
    assert sim.chat_requests == []


@pytest.mark.parametrize("compat", COMPATS)
async def test_prompt_plus_max_tokens_over_the_context(compat: str) -> None:
    """Without a preflight budget: vLLM 0.32 shortens max_tokens and cuts the answer (finish_reason length);
    an older server refuses with a 400 that becomes ContextOverflow with its numbers, never retried."""
    sim, fake = make_sim(max_model_len=2048, compat=compat), FakeTime()
    directive = '// @sim {"id": "long", "tokens": 800}\n'  # asks the simulator for an 800-token answer
    prompt = [{"role": "user", "content": directive + "x" * (7000 - len(directive))}]  # 1754 tokens
    async with sim.serve() as url, client_for(url, fake, max_tokens=1000, preflight=False) as llm:
        if compat == "legacy":
            with pytest.raises(ContextOverflow) as failed:
                await llm.complete(prompt)
            assert str(failed.value) == f"max_tokens 1000 + prompt 1754 exceeds the model's context of 2048: {BOTH_FIX}"
            assert failed.value.requests == 1
        else:
            cut = await llm.complete(prompt)
            assert (cut.finish_reason, cut.truncated) == ("length", True)
            assert cut.usage.completion_tokens == 2048 - 1754 == sim.chat_requests[0].max_tokens
    assert len(sim.chat_requests) == 1
    assert fake.sleeps == []


@pytest.mark.parametrize(("compat", "chars", "max_tokens", "expected"), [
    pytest.param("0.32", 9000, 100, "the prompt alone (at least 2049 tokens) does not fit the model's context of "
                 f"2048 tokens: {PROMPT_FIX}", id="0.32-prompt-alone-at-least"),
    pytest.param("0.32", (2048 - 4) * 4, 100, f"the prompt alone does not fit the model's context: {PROMPT_FIX}",
                 id="0.32-prompt-fills-the-context"),  # "max_tokens must be at least 1, got 0." gives no count
    pytest.param("0.32", 400, 4096, "[VLLM] max_tokens 4096 is larger than the model's whole context of 2048 "
                 "tokens: lower [VLLM] max_tokens below the context length, or start vLLM with a larger "
                 "--max-model-len", id="0.32-max-tokens-alone"),
    pytest.param("legacy", 9000, 100, "the prompt alone (2254 tokens) does not fit the model's context of 2048 "
                 f"tokens: {PROMPT_FIX}", id="legacy-prompt-alone"),
    pytest.param("legacy", 400, 4096, f"max_tokens 4096 + prompt 104 exceeds the model's context of 2048: {BOTH_FIX}",
                 id="legacy-prompt-plus-max-tokens"),
])
async def test_server_overflow_messages_name_the_part_that_is_too_long(
    compat: str, chars: int, max_tokens: int, expected: str,
) -> None:
    """The server's 400 (0.32's wording or older) becomes ContextOverflow naming the part and its fix, at once."""
    sim, fake = make_sim(max_model_len=2048, compat=compat), FakeTime()
    async with sim.serve() as url, client_for(url, fake, max_tokens=max_tokens, preflight=False) as llm:
        with pytest.raises(ContextOverflow) as failed:
            await llm.complete([{"role": "user", "content": "x" * chars}])
    assert str(failed.value) == expected
    assert len(sim.chat_requests) == 1 and sim.chat_requests[0].status == 400
    assert fake.sleeps == []


@pytest.mark.parametrize("compat", COMPATS)
async def test_a_refused_request_that_is_no_overflow_fails_at_once(compat: str) -> None:
    """A 400 that is not about the context (a negative temperature) is RequestFailed with the server's words."""
    sim, fake = make_sim(compat=compat), FakeTime()
    async with sim.serve() as url:
        model_settings = ModelSettings(base_url=url, model=MODEL, temperature=-0.5)
        async with ModelClient.open(model_settings, settings(), sleep=fake.sleep, clock=fake.clock) as llm:
            with pytest.raises(RequestFailed, match=r"HTTP 400\): temperature must be non-negative") as failed:
                await llm.complete(HELLO)
    assert not isinstance(failed.value, ContextOverflow)
    assert failed.value.requests == 1 and len(sim.chat_requests) == 1


@pytest.mark.parametrize(("configured", "tokenize"), [
    pytest.param(8192, True, id="budget-by-tokenize"),
    pytest.param(8192, False, id="budget-by-estimate"),
    pytest.param(300, True, id="configured-fits"),
])
async def test_max_tokens_sent_is_the_smaller_of_configured_and_what_the_context_leaves(
    configured: int, tokenize: bool,
) -> None:
    """max_tokens = min([VLLM] max_tokens, max_model_len - prompt - context_margin), as the sim got it."""
    sim, fake = make_sim(max_model_len=8192, tokenize=tokenize), FakeTime()
    prompt = [{"role": "system", "content": "s" * 400}, {"role": "user", "content": "u" * 2000}]
    async with sim.serve() as url, client_for(url, fake, max_tokens=configured, context_margin=32) as llm:
        await llm.complete(prompt)
    counted = (100 + 4 + 500 + 4) if tokenize else estimate_tokens(prompt)
    assert chat_bodies(sim)[0]["max_tokens"] == min(configured, 8192 - counted - 32)


@pytest.mark.parametrize(("max_model_len", "tokenize_calls"), [
    pytest.param(32768, 0, id="roomy-context-skips-tokenize"),
    pytest.param(4000, 1, id="tight-context-counts-exactly"),
])
async def test_tokenize_is_asked_only_when_the_prompt_might_not_fit(max_model_len: int, tokenize_calls: int) -> None:
    """A prompt whose byte count plus max_tokens fits the context is sent without a /tokenize round trip."""
    sim, fake = make_sim(max_model_len=max_model_len), FakeTime()
    prompt = [{"role": "user", "content": "u" * 3000}]
    async with sim.serve() as url, client_for(url, fake, max_tokens=1024) as llm:
        sim.reset_log()
        await llm.complete(prompt)
    assert sum(r.path == "/tokenize" for r in sim.requests) == tokenize_calls
    assert chat_bodies(sim)[0]["max_tokens"] == 1024


# --------------------------------------------------------------------------------------------------
# answers: usage, truncation, streaming


async def test_usage_and_truncation_are_reported() -> None:
    """Usage comes from the response; finish_reason length marks the completion truncated."""
    sim, fake = make_sim(script=("ok", "length")), FakeTime()
    async with sim.serve() as url, client_for(url, fake) as llm:
        whole = await llm.complete(HELLO)
        cut = await llm.complete(HELLO)
    first, second = sim.chat_requests
    assert (whole.finish_reason, whole.truncated) == ("stop", False)
    assert (cut.finish_reason, cut.truncated) == ("length", True)
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (
        first.prompt_tokens, first.completion_tokens)
    assert cut.usage.completion_tokens == second.completion_tokens
    total = whole.usage + cut.usage
    assert (llm.stats.prompt_tokens, llm.stats.completion_tokens) == (
        total.prompt_tokens, total.completion_tokens)
    assert whole.usage.prompt_tokens > 0 and whole.usage.completion_tokens > 0


@pytest.mark.parametrize("script", [
    pytest.param((), id="clean"),
    pytest.param(("503", "drop"), id="after-faults"),
    pytest.param(("malformed",), id="after-a-broken-event"),
    pytest.param(("length",), id="truncated"),
])
@pytest.mark.parametrize("compat", COMPATS)
async def test_streaming_reassembles_the_answer(script: tuple[str, ...], compat: str) -> None:
    """With stream on, the text, finish_reason and usage match what a plain request reports."""
    sim, plain_sim = make_sim(script=script, compat=compat), make_sim(script=script, compat=compat)
    fake = FakeTime()
    async with sim.serve() as url, client_for(url, fake, stream=True) as llm:
        streamed = await llm.complete(HELLO)
    async with plain_sim.serve() as url, client_for(url, fake) as llm:
        plain = await llm.complete(HELLO)
    last = sim.chat_requests[-1]
    assert all(r.stream for r in sim.chat_requests)
    assert streamed.requests == len(sim.chat_requests) == len(plain_sim.chat_requests)
    assert (streamed.text, streamed.finish_reason) == (plain.text, plain.finish_reason)
    assert streamed.usage == plain.usage
    assert streamed.usage.completion_tokens == last.completion_tokens


# --------------------------------------------------------------------------------------------------
# concurrency


async def test_requests_in_flight_are_bounded_by_the_limiter() -> None:
    """Eight tasks through a limiter of 2: the server never sees more than 2 chat requests at once."""
    sim, fake = make_sim(latency=0.05), FakeTime(real_clock=True)
    completions: list[Completion] = []
    async with sim.serve() as url, client_for(url, fake, limiter=anyio.CapacityLimiter(2)) as llm:

        async def one() -> None:
            completions.append(await llm.complete(HELLO))

        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(one)
        assert llm.stats.in_flight == 0
    events = sorted([(r.arrival, 1) for r in sim.chat_requests] + [(r.end, -1) for r in sim.chat_requests],
                    key=lambda e: (e[0], e[1]))
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert len(completions) == 8
    assert peak == 2
    assert max(c.queued_seconds for c in completions) > 0


# --------------------------------------------------------------------------------------------------
# error mapping at the boundary (a real AsyncOpenAI over httpx2.MockTransport)


def _mock_client(
    handler: Callable[[httpx2.Request], httpx2.Response], fake: FakeTime, *, api_key: str = "EMPTY",
    **client: Any,
) -> tuple[ModelClient, httpx2.AsyncClient]:
    http = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    oa = openai.AsyncOpenAI(api_key=api_key, base_url="http://model.test/v1", max_retries=0, http_client=http)
    model = ModelSettings(base_url="http://model.test/v1", model=MODEL, api_key=api_key)
    llm = ModelClient(oa, model, settings(**client), limiter=anyio.CapacityLimiter(1), sleep=fake.sleep,
                      clock=fake.clock)
    return llm, http


def _answer() -> httpx2.Response:
    return httpx2.Response(200, json={
        "id": "c1", "object": "chat.completion", "created": 0, "model": MODEL,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ready"}, "finish_reason": "stop"},
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    })


@pytest.mark.parametrize(("status", "error", "match"), [
    pytest.param(400, RequestFailed, r"HTTP 400\): bad sampling", id="400-refused"),
    pytest.param(422, RequestFailed, r"HTTP 422\): bad sampling", id="422-refused"),
    pytest.param(401, ModelUnavailable, r"refused the API key \(HTTP 401\)", id="401-key"),
    pytest.param(403, ModelUnavailable, r"refused the API key \(HTTP 403\)", id="403-key"),
])
async def test_permanent_statuses_are_not_retried(status: int, error: type[Exception], match: str) -> None:
    """400/401/403/422 fail on the first request with the server's message or the fix; the key never shows."""
    secret = "sk-this-is-secret-1234"
    sent: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        sent.append(request)
        return httpx2.Response(status, json={"object": "error", "message": "bad sampling", "code": status})

    fake = FakeTime()
    llm, http = _mock_client(handler, fake, api_key=secret)
    async with http:
        with pytest.raises(error, match=match) as failed:
            await llm.complete(HELLO)
    assert len(sent) == 1
    assert fake.sleeps == []
    assert secret not in str(failed.value) and secret not in repr(llm)


@pytest.mark.parametrize(("first", "min_wait"), [
    pytest.param(httpx2.Response(408), 0.0, id="408"),
    pytest.param(httpx2.Response(409), 0.0, id="409"),
    pytest.param(httpx2.Response(429, headers={"retry-after-ms": "1500"}), 1.5, id="429-retry-after-ms"),
    pytest.param(httpx2.Response(503, headers={"retry-after": "4"}), 4.0, id="503-retry-after"),
    pytest.param(httpx2.Response(504), 0.0, id="504"),
    pytest.param(httpx2.Response(200, text="<html>proxy</html>"), 0.0, id="200-html"),
    pytest.param(httpx2.Response(200, text="{not json", headers={"content-type": "application/json"}), 0.0,
                 id="200-broken-json"),
])
async def test_transient_answers_are_retried_honouring_retry_after(
    first: httpx2.Response, min_wait: float,
) -> None:
    """408/409/429/5xx and a 200 that is not JSON are retried; Retry-After (s or ms) bounds the wait."""
    answers = iter([first, _answer()])
    llm, http = _mock_client(lambda request: next(answers), fake := FakeTime())
    async with http:
        completion = await llm.complete(HELLO)
    assert (completion.text, completion.requests) == ("ready", 2)
    assert len(fake.sleeps) == 1 and fake.sleeps[0] >= min_wait


async def test_connection_errors_become_server_unreachable() -> None:
    """A transport failure is ServerUnreachable, retried until retry_attempts are spent."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("[Errno 111] Connection refused", request=request)

    fake = FakeTime()
    llm, http = _mock_client(handler, fake, retry_max_wait=1.0, outage_budget=5.0)
    async with http:
        # The health record has never seen a success: it waits, then the outage budget stops it.
        with pytest.raises(ModelUnavailable) as failed:
            await llm.complete(HELLO)
    assert isinstance(failed.value.__cause__, ServerUnreachable)
    assert llm.stats.requests_sent % 3 == 0


class _BreaksMidway(httpx2.AsyncByteStream):
    """Two events of an answer, then the connection fails."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield _sse({"choices": [{"index": 0, "delta": {"content": "fn main"}, "finish_reason": None}]})
        raise httpx2.ReadError("connection reset by peer")


def _sse(data: dict[str, Any]) -> bytes:
    event = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": MODEL, **data}
    return b"data: " + json.dumps(event).encode() + b"\n\n"


def _stream_response(*, finish: bool) -> httpx2.Response:
    body = _sse({"choices": [{"index": 0, "delta": {"content": "fn main() {}"}, "finish_reason": None}]})
    if finish:
        body += _sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        usage = {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}
        body += _sse({"choices": [], "usage": usage})
        body += b"data: [DONE]\n\n"
    return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)


@pytest.mark.parametrize("broken", [
    pytest.param(lambda: httpx2.Response(200, headers={"content-type": "text/event-stream"},
                                         stream=_BreaksMidway()), id="connection-fails-midway"),
    pytest.param(lambda: _stream_response(finish=False), id="ends-without-finish-reason"),
])
async def test_a_stream_that_breaks_midway_is_retried(broken: Callable[[], httpx2.Response]) -> None:
    """A stream cut short is a transient error: the whole answer is asked for again."""
    answers = iter([broken(), _stream_response(finish=True)])
    llm, http = _mock_client(lambda request: next(answers), fake := FakeTime(), stream=True)
    async with http:
        completion = await llm.complete(HELLO)
    assert (completion.text, completion.finish_reason, completion.requests) == ("fn main() {}", "stop", 2)
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (5, 4)
    assert len(fake.sleeps) == 1


# --------------------------------------------------------------------------------------------------
# time is bounded; what went wrong is said as it happened


@pytest.mark.parametrize("stream", [pytest.param(False, id="plain"), pytest.param(True, id="stream")])
async def test_a_trickling_server_cannot_hold_a_request_past_request_timeout(
    stream: bool, caplog: pytest.LogCaptureFixture,
) -> None:
    """A byte every 0.2 s keeps every read short, but request_timeout bounds the whole request; then a retry."""
    sim, fake = make_sim(script=("trickle",), trickle_interval=0.2), FakeTime()
    caplog.set_level(logging.INFO, logger="pipeline.llm")
    async with sim.serve() as url, client_for(url, fake, request_timeout=1.5, stream=stream) as llm:
        began = time.monotonic()
        with anyio.fail_after(20):
            completion = await llm.complete(HELLO)
        took = time.monotonic() - began
    assert completion.requests == 2
    assert [r.fault or "ok" for r in sim.chat_requests] == ["trickle", "ok"]
    assert took < 5, "the trickle would have held the request for about a minute"
    assert f"the server at {url} sent its response head but did not finish its answer within 1.5 s " \
        "([pipeline] request_timeout bounds a whole request)" in caplog.text


@pytest.mark.parametrize("stream", [pytest.param(False, id="plain"), pytest.param(True, id="stream")])
async def test_a_server_that_accepts_but_never_answers_is_reported_as_such(stream: bool) -> None:
    """Every request accepted and held: the run stops naming the silence, never 'cannot connect'."""
    sim, fake = make_sim(rate=1.0, kinds=("stall",), stall_seconds=30.0), FakeTime()
    async with sim.serve() as url, client_for(url, fake, preflight=False, request_timeout=0.5, stream=stream,
                                              retry_attempts=2, retry_max_wait=1.0, outage_budget=2.0) as llm:
        with anyio.fail_after(30), pytest.raises(ModelUnavailable) as stop:
            await llm.complete(HELLO)
    message = str(stop.value)
    assert f"the server at {url} accepted the connection but sent no answer within 0.5 s" in message
    assert "cannot connect" not in message


async def test_a_stream_too_slow_to_finish_says_how_far_it_got() -> None:
    """Tokens streaming slower than request_timeout allows: the error counts the events that did arrive."""
    sim = Simulator(SimConfig(model=MODEL, load=LoadModel(decode_per_token=0.2)))
    async with sim.serve() as url, client_for(url, FakeTime(), preflight=False, stream=True, request_timeout=1.0,
                                              retry_attempts=1, retry_max_wait=1.0, outage_budget=0.5) as llm:
        with anyio.fail_after(30), pytest.raises(ModelUnavailable) as stop:
            await llm.complete(HELLO)
    assert re.search(r"the server at \S+ sent \d+ events but did not finish its answer within 1 s", str(stop.value))


async def test_a_server_that_stops_accepting_stops_the_run_while_old_requests_hang() -> None:
    """vLLM after SIGTERM: new connections refused, requests in flight hang. Past the outage budget the waiting
    requests end with ModelUnavailable, long before request_timeout."""
    sim = make_sim(latency=0.5)
    fake = FakeTime(real_clock=True)
    stops: list[BaseException] = []
    async with sim.serve() as url, client_for(url, fake, workers=2, request_timeout=120.0,
                                              outage_budget=2.0) as llm:

        async def one(name: str) -> None:
            try:
                await llm.complete([{"role": "user", "content": f"task {name}"}], purpose=name)
            except ModelUnavailable as exc:
                stops.append(exc)

        began = time.monotonic()
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(one, "a")
                tg.start_soon(one, "b")
                await anyio.sleep(0.2)
                sim.stop_accepting()
        took = time.monotonic() - began
    assert len(stops) == 2
    assert 2.0 <= took < 10
    assert "has refused new connections for" in str(stops[0])
    assert "connection refused; outage budget 2 s" in str(stops[0])
    assert "rerun to resume" in str(stops[0])
    assert isinstance(stops[0], ModelUnavailable) and stops[0].exit_code == 3


@pytest.mark.parametrize("compat", COMPATS)
async def test_a_wrong_api_key_stops_at_preflight_without_showing_it(compat: str) -> None:
    """vLLM's --api-key answers 401 {"error": "Unauthorized"}: ModelUnavailable with the fix, the key never shown."""
    secret = "sk-wrong-key-5678"
    sim, fake = make_sim(api_key="sk-right-key", compat=compat), FakeTime()
    async with sim.serve() as url:
        with pytest.raises(ModelUnavailable) as failed:
            async with client_for(url, fake, api_key=secret):
                pass
        async with client_for(url, fake, api_key="sk-right-key") as llm:
            assert (await llm.complete(HELLO)).text
    assert str(failed.value).startswith(f"the server at {url} refused the API key (HTTP 401): set [VLLM] api_key")
    assert secret not in str(failed.value)
    assert [r.status for r in sim.requests][:1] == [401]


async def test_credentials_in_the_url_never_show(caplog: pytest.LogCaptureFixture, closed_port: int) -> None:
    """http://user:pass@host/v1: every message and log line shows http://***@host/v1, never the password."""
    password = "s3cret-pass"
    sim, fake = make_sim(script=("503", "drop", "ok")), FakeTime()
    caplog.set_level(logging.INFO, logger="pipeline.llm")
    seen: list[str] = []
    async with sim.serve() as url:
        secret_url = url.replace("http://", f"http://admin:{password}@")
        async with client_for(secret_url, fake, retry_attempts=4) as llm:
            seen += [repr(llm), llm.base_url, llm.root_url]
            await llm.complete(HELLO)
    dead = f"http://admin:{password}@127.0.0.1:{closed_port}/v1"
    with pytest.raises(ModelUnavailable) as failed:
        async with client_for(dead, fake):
            pass
    seen += [str(failed.value), caplog.text]
    shown = "\n".join(seen)
    assert password not in shown and "admin" not in shown
    assert url.replace("http://", "http://***@") in shown
    assert f"cannot connect to http://***@127.0.0.1:{closed_port}/v1: connection refused" in str(failed.value)


@pytest.mark.parametrize(("body", "expected"), [
    pytest.param({"error": {"message": "max_tokens=9000 cannot be greater than max_model_len=4096. "
                            "Please request fewer output tokens.", "type": "BadRequestError", "param": "max_tokens",
                            "code": 400}},
                 "[VLLM] max_tokens 9000 is larger than the model's whole context of 4096 tokens", id="0.32-nested"),
    pytest.param({"object": "error", "message": "'max_tokens' or 'max_completion_tokens' is too large: 8000. This "
                  "model's maximum context length is 4096 tokens and your request has 2778 input tokens "
                  "(8000 > 4096 - 2778).", "type": "BadRequestError", "param": None, "code": 400},
                 "max_tokens 8000 + prompt 2778 exceeds the model's context of 4096", id="older-flat"),
    pytest.param({"error": {"message": "This model's maximum context length is 4096 tokens. However, your request "
                            "has at least 4097 input tokens. Please reduce the length of the input messages.",
                            "type": "BadRequestError", "param": "input_tokens", "code": 400}},
                 "the prompt alone (at least 4097 tokens) does not fit the model's context of 4096 tokens",
                 id="0.32-at-least"),
])
async def test_server_messages_are_read_from_both_body_shapes(body: dict[str, Any], expected: str) -> None:
    """Nested (0.32) and flat (older) error bodies both give the server's message to the overflow reader."""
    sent: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        sent.append(request)
        return httpx2.Response(400, json=body)

    llm, http = _mock_client(handler, fake := FakeTime())
    async with http:
        with pytest.raises(ContextOverflow) as failed:
            await llm.complete(HELLO)
    assert str(failed.value).startswith(expected)
    assert len(sent) == 1 and fake.sleeps == []


# --------------------------------------------------------------------------------------------------
# what the server receives: the bytes the SDK's create() sends


class _RawServer:
    """A keep-alive HTTP/1.1 server on 127.0.0.1 that keeps every request's bytes (request line, headers, body)
    and answers each with one chat completion."""

    ANSWER = json.dumps({
        "id": "c1", "object": "chat.completion", "created": 0, "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ready"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }).encode()

    def __init__(self, *, close: bool = False) -> None:
        self.requests: list[bytes] = []
        self.connections = 0
        self.close = close  # close each connection after its first answer (without saying so)

    async def _serve(self, stream: anyio.abc.SocketStream) -> None:
        buffer = b""
        self.connections += 1
        async with stream:
            while True:
                while b"\r\n\r\n" not in buffer:
                    try:
                        buffer += await stream.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        return
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = int(re.search(rb"(?im)^content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
                while len(buffer) < length:
                    buffer += await stream.receive()
                self.requests.append(head + b"\r\n\r\n" + buffer[:length])
                buffer = buffer[length:]
                await stream.send(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                                  + str(len(self.ANSWER)).encode() + b"\r\n\r\n" + self.ANSWER)
                if self.close:
                    return

    @asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, self._serve)
            yield f"http://127.0.0.1:{port}/v1"
            tg.cancel_scope.cancel()


@pytest.mark.parametrize("sdk_internals", [pytest.param(True, id="memoised"), pytest.param(False, id="public-route")])
@pytest.mark.parametrize("rank", [pytest.param(BEFORE_STAGES, id="outside-stages"), pytest.param(7, id="stage-rank-7")])
async def test_a_chat_request_is_the_bytes_the_sdks_create_sends(
    rank: int, sdk_internals: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server receives from the model client exactly what openai's chat.completions.create(stream=False)
    sends with the same arguments through the SDK's default HTTP client: request line, every header in order,
    body bytes (vLLM's priority last, as extra_body); for the first request on a connection and the next ones.
    The same without the SDK's and httpx2's private parts (another version of either): post() and httpx2 as is."""
    if not sdk_internals:
        monkeypatch.setattr(llm_module, "FinalRequestOptions", None)
        monkeypatch.setattr(llm_module._HttpClient, "_MERGES", False)
    prompt = [{"role": "system", "content": "You translate C to Rust."},
              {"role": "user", "content": "Translate: int main(void) { puts(\"héllo\"); }"}]
    ours, theirs = _RawServer(), _RawServer()
    async with ours.running() as url, client_for(url, FakeTime(), preflight=False, max_tokens=300,
                                                 request_timeout=600.0, connect_timeout=10.0) as llm:
        assert (llm._chat_options is None) is (not sdk_internals)
        with request_rank(rank):
            for _ in range(3):
                assert (await llm.complete(prompt)).text == "ready"
    priority = server_priority(rank)
    extra = {"priority": priority} if priority else None
    async with theirs.running() as url, openai.AsyncOpenAI(api_key="EMPTY", base_url=url, max_retries=0,
                                                           timeout=httpx2.Timeout(600.0, connect=10.0)) as sdk:
        for _ in range(3):
            await sdk.chat.completions.create(model=MODEL, messages=prompt,  # type: ignore[arg-type]
                                              max_tokens=300, temperature=0.0, stream=False, extra_body=extra)
    port = re.compile(rb"127\.0\.0\.1:\d+")
    assert [port.sub(b"HOST", r) for r in ours.requests] == [port.sub(b"HOST", r) for r in theirs.requests]
    assert len(ours.requests) == 3 and b"x-stainless-retry-count: 0" in ours.requests[0]
    assert (b'"priority":' in ours.requests[0]) == bool(priority)


async def test_a_keep_alive_connection_the_server_closed_is_not_reused() -> None:
    """A server that closes idle keep-alive connections (without saying so): each next request goes on a new
    connection, never on the closed one (which would fail it: one attempt only here)."""
    server = _RawServer(close=True)
    async with server.running() as url, client_for(url, FakeTime(), preflight=False, retry_attempts=1) as llm:
        for _ in range(3):
            assert (await llm.complete(HELLO)).text == "ready"
            await anyio.sleep(0.05)  # the server's close arrives
    assert (len(server.requests), server.connections) == (3, 3)
