"""The `check` command's core: one short request against the server, reported in plain words."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from pipeline.check import CHECK_PROMPT, run_check
from pipeline.config import ClientSettings, Config, ModelSettings
from pipeline.simulator import FaultPlan, LoadModel, SimConfig, Simulator

SECRET = "sk-check-secret-9876"


def make_sim(*, script: tuple[str, ...] = ()) -> Simulator:
    return Simulator(SimConfig(
        answers_dir=None, model="sim-model", max_model_len=8192,
        load=LoadModel(capacity=8, latency=0.0, decode_per_token=0.0),
        faults=FaultPlan(rate=0.0, kinds=("503",), script=script, seed=0, retry_after=0.01,
                         stall_seconds=30.0),
        tokenize=True, log_path=None, record_bodies=True,
    ))


def config(base_url: str, *, model: str = "sim-model") -> Config:
    return Config(model=ModelSettings(base_url=base_url, model=model, api_key=SECRET),
                  client=ClientSettings(retry_max_wait=0.05))


@pytest.fixture
def closed_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    yield port


def assert_no_secret(report: object, lines: list[str]) -> None:
    assert SECRET not in repr(report)
    assert SECRET not in "\n".join(lines)


@pytest.mark.parametrize("script", [pytest.param((), id="healthy"), pytest.param(("503",), id="one-503")])
async def test_check_passes_against_a_working_server(script: tuple[str, ...]) -> None:
    """A healthy server: ok, the served models, the context length, latency, tokens and the answer."""
    sim = make_sim(script=script)
    async with sim.serve() as url:
        report = await run_check(config(url))
    assert report.ok, report.lines()
    assert (report.base_url, report.model, report.served, report.max_model_len) == (
        url, "sim-model", ("sim-model",), 8192)
    assert report.error is None
    assert report.latency_seconds is not None and report.latency_seconds > 0
    answered = sim.chat_requests[-1]
    assert report.prompt_tokens == answered.prompt_tokens
    assert report.completion_tokens == answered.completion_tokens
    assert report.answer
    assert answered.body["messages"] == [{"role": "user", "content": CHECK_PROMPT}]
    assert answered.body["max_tokens"] <= 32
    lines = report.lines()
    assert lines[0] == "model server check: OK"
    assert any("8192 tokens" in line for line in lines)
    assert_no_secret(report, lines)


async def test_check_fails_readably_against_a_closed_port(closed_port: int) -> None:
    """Nothing listening: ok=False with 'connection refused' and how to start vLLM; no exception."""
    url = f"http://127.0.0.1:{closed_port}/v1"
    report = await run_check(config(url))
    assert not report.ok
    assert report.error is not None
    assert report.error.startswith(f"cannot connect to {url}: connection refused; is vLLM running?")
    assert report.latency_seconds is None
    lines = report.lines()
    assert lines[0] == "model server check: FAILED"
    assert lines[-1] == f"  error:          {report.error}"
    assert_no_secret(report, lines)


async def test_check_names_the_served_models_when_ours_is_missing() -> None:
    """A model the server does not serve: ok=False, and the error lists what it does serve."""
    sim = make_sim()
    async with sim.serve() as url:
        report = await run_check(config(url, model="qwen-typo"))
    assert not report.ok
    assert report.error == (
        f"model qwen-typo is not served by {url}; the server serves: sim-model: "
        f"set [VLLM] model (or --model) to one of them"
    )
    assert sim.chat_requests == []
    assert_no_secret(report, report.lines())
