"""The model client over real HTTP against the simulator: retries, outage budget, context budget, limits."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx2
import openai
import pytest

from pipeline.config import ClientSettings, ModelSettings
from pipeline.errors import (
    ContextOverflow,
    ModelUnavailable,
    RequestFailed,
    ServerBusy,
    ServerUnreachable,
)
from pipeline.llm import Completion, ModelClient, estimate_tokens
from pipeline.simulator import FaultPlan, LoadModel, SimConfig, Simulator

MODEL = "sim-model"
HELLO = [{"role": "user", "content": "Translate this C program into Rust."}]


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
) -> Simulator:
    return Simulator(SimConfig(
        answers_dir=None, model=MODEL, max_model_len=max_model_len,
        load=LoadModel(capacity=capacity, latency=latency, decode_per_token=0.0),
        faults=FaultPlan(rate=rate, kinds=kinds, script=script, seed=0, retry_after=retry_after,
                         stall_seconds=stall_seconds),
        tokenize=tokenize, log_path=None, record_bodies=True,
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
    api_key: str = "EMPTY", limiter: anyio.CapacityLimiter | None = None, **client: Any,
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
])
async def test_rides_out_transient_faults(script: tuple[str, ...]) -> None:
    """Scripted transient faults are retried until an answer arrives, one request per attempt."""
    sim, fake = make_sim(script=script), FakeTime()
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
    async with sim.serve() as url, client_for(url, fake, request_timeout=0.3, stream=stream) as llm:
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


@pytest.mark.parametrize("down", [
    pytest.param("503", id="every-request-503"),
    pytest.param("drop", id="every-connection-dropped"),
    pytest.param("refused", id="port-closed"),
])
async def test_outage_waits_then_stops_the_run_after_the_outage_budget(down: str, closed_port: int) -> None:
    """A dead server: the request waits through retry cycles, then ModelUnavailable when the budget is out."""
    fake = FakeTime()
    sim = make_sim(rate=1.0, kinds=(down,)) if down != "refused" else None
    async with _maybe_serve(sim) as url:
        url = url or f"http://127.0.0.1:{closed_port}/v1"
        async with client_for(url, fake, preflight=False, retry_attempts=2, retry_max_wait=1.0,
                              outage_budget=20.0) as llm:
            started = fake.now
            with pytest.raises(ModelUnavailable, match=r"has not answered for \d+ s \(outage budget 20 s\)"):
                await llm.complete(HELLO)
            sent = llm.stats.requests_sent
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


async def test_unknown_model_fails_at_once_listing_served_models() -> None:
    """A 404 for the model is ModelUnavailable naming what the server serves, after one chat request."""
    sim, fake = make_sim(), FakeTime()
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


@pytest.mark.parametrize("tokenize", [pytest.param(True, id="tokenize"), pytest.param(False, id="estimate")])
async def test_context_overflow_is_caught_before_sending(tokenize: bool) -> None:
    """A prompt that leaves too little room fails with the fix, and no chat request is sent."""
    sim, fake = make_sim(max_model_len=2048, tokenize=tokenize), FakeTime()
    prompt = [{"role": "user", "content": "x" * 7000}]  # 1754 tokens by the simulator's rule
    async with sim.serve() as url, client_for(url, fake, max_tokens=4096) as llm:
        assert llm.stats.requests_sent == 0
        with pytest.raises(ContextOverflow) as failed:
            await llm.complete(prompt)
    counted = 1754 if tokenize else estimate_tokens(prompt)
    assert str(failed.value).startswith(
        f"max_tokens 4096 + prompt {counted} exceeds the model's context of 2048: lower [VLLM] max_tokens or "
        f"start vLLM with a larger --max-model-len"
    )
    assert ("counted by /tokenize" if tokenize else "estimated") in str(failed.value)
    assert sim.chat_requests == []


async def test_server_side_context_overflow_is_not_retried() -> None:
    """Without a preflight budget, vLLM's 400 overflow becomes ContextOverflow with its numbers, at once."""
    sim, fake = make_sim(max_model_len=2048), FakeTime()
    prompt = [{"role": "user", "content": "x" * 7000}]
    async with sim.serve() as url, client_for(url, fake, max_tokens=4096, preflight=False) as llm:
        expected = r"max_tokens 4096 \+ prompt 1754 exceeds the model's context of 2048: lower \[VLLM\]"
        with pytest.raises(ContextOverflow, match=expected):
            await llm.complete(prompt)
    assert len(sim.chat_requests) == 1
    assert fake.sleeps == []


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
async def test_streaming_reassembles_the_answer(script: tuple[str, ...]) -> None:
    """With stream on, the text, finish_reason and usage match what a plain request reports."""
    sim, plain_sim, fake = make_sim(script=script), make_sim(script=script), FakeTime()
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
