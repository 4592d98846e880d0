"""The `check` command's core: one short request against the server, reported in plain words."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.check import CHECK_PROMPT, run_check
from pipeline.config import ClientSettings, Config, ModelSettings
from pipeline.simulator import FaultPlan, LoadModel, SimConfig, Simulator
from tests.conftest import Cli

SECRET = "sk-check-secret-9876"
COMPATS = [pytest.param("0.32", id="vllm-0.32"), pytest.param("legacy", id="legacy")]


def make_sim(*, script: tuple[str, ...] = (), compat: str = "0.32", answers: Path | None = None,
             rate: float = 0.0, kinds: tuple[str, ...] = ("503",)) -> Simulator:
    return Simulator(SimConfig(
        answers_dir=answers, model="sim-model", max_model_len=8192,
        load=LoadModel(capacity=8, latency=0.0, decode_per_token=0.0),
        faults=FaultPlan(rate=rate, kinds=kinds, script=script, seed=0, retry_after=0.01,
                         stall_seconds=30.0),
        tokenize=True, log_path=None, record_bodies=True, compat=compat,
    ))


def config(base_url: str, *, model: str = "sim-model", outage_budget: float = 300.0) -> Config:
    return Config(model=ModelSettings(base_url=base_url, model=model, api_key=SECRET),
                  client=ClientSettings(retry_max_wait=0.05, outage_budget=outage_budget))


def check_answer(root: Path, text: str) -> Path:
    """A canned-answer directory whose answer to the check prompt is ``text``."""
    key = root / "answers" / "check"
    key.mkdir(parents=True)
    (key / "match.txt").write_text(CHECK_PROMPT)
    (key / "unidiomatic-1.md").write_text(text)
    return root / "answers"


@pytest.fixture
def closed_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    yield port


def assert_no_secret(report: object, lines: list[str]) -> None:
    assert SECRET not in repr(report)
    assert SECRET not in "\n".join(lines)


@pytest.mark.parametrize("compat", COMPATS)
@pytest.mark.parametrize("script", [pytest.param((), id="healthy"), pytest.param(("503",), id="one-503")])
async def test_check_passes_against_a_working_server(script: tuple[str, ...], compat: str) -> None:
    """A healthy server: ok, the served models, the context length, latency, tokens and the answer."""
    sim = make_sim(script=script, compat=compat)
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
    assert report.answer == "ready"
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


@pytest.mark.parametrize("compat", COMPATS)
async def test_check_names_the_served_models_when_ours_is_missing(compat: str) -> None:
    """A model the server does not serve: ok=False, and the error lists what it does serve."""
    sim = make_sim(compat=compat)
    async with sim.serve() as url:
        report = await run_check(config(url, model="qwen-typo"))
    assert not report.ok
    assert report.error == (
        f"model qwen-typo is not served by {url}; the server serves: sim-model: "
        f"set [VLLM] model (or --model) to one of them"
    )
    assert sim.chat_requests == []
    assert_no_secret(report, report.lines())


@pytest.mark.parametrize(("text", "says"), [
    pytest.param("", "was empty (finish_reason stop): the server answers but the model generates no text",
                 id="empty"),
    pytest.param("Well, let me think about what ready could mean here. " * 20,
                 "was cut off at max_tokens 32 (finish_reason length) instead of a one-word reply", id="cut-off"),
])
async def test_check_fails_when_the_answer_is_empty_or_cut_off(text: str, says: str, tmp_path: Path) -> None:
    """The server answers, but with nothing or with an answer cut off: the check fails and says why."""
    sim = make_sim(answers=check_answer(tmp_path, text))
    async with sim.serve() as url:
        report = await run_check(config(url))
    assert not report.ok
    assert report.error == f"the model's answer to {CHECK_PROMPT!r} {says}: check that the served model is an " \
        "instruction-tuned (chat) model and that vLLM uses its chat template (--chat-template)"
    assert report.latency_seconds is not None, "what the server did answer is still reported"
    assert report.lines()[0] == "model server check: FAILED"


def test_check_exits_1_when_the_answer_is_empty(cli: Cli, simulator_factory: Any, tmp_path: Path) -> None:
    """Through the CLI: `check` against a model that answers nothing exits 1 and prints why."""
    _sim, url = simulator_factory(answers_dir=check_answer(tmp_path, ""))
    result = cli("check", "--base-url", url, "--model", "sim-model")
    assert result.returncode == 1, result.output
    assert "model server check: FAILED" in result.stdout
    assert "was empty" in result.stdout


async def test_check_reports_a_dropped_connection_as_dropped() -> None:
    """Every chat connection closed without an answer: the error says dropped, not 'cannot connect'."""
    sim = make_sim(rate=1.0, kinds=("drop",))
    async with sim.serve() as url:
        report = await run_check(config(url, outage_budget=1.0))
    assert not report.ok and report.error is not None
    assert f"the server at {url} dropped the connection before answering" in report.error
    assert "cannot connect" not in report.error
    assert report.served == ("sim-model",)


async def test_check_never_shows_credentials_in_the_url(closed_port: int) -> None:
    """http://user:pass@host/v1 is shown as http://***@host/v1 in the report, whether the server is up or not."""
    sim = make_sim()
    async with sim.serve() as url:
        good = await run_check(config(url.replace("http://", "http://admin:pa55word@")))
    bad = await run_check(config(f"http://admin:pa55word@127.0.0.1:{closed_port}/v1"))
    assert good.ok, good.lines()
    assert good.base_url == url.replace("http://", "http://***@")
    assert bad.error is not None and bad.error.startswith(
        f"cannot connect to http://***@127.0.0.1:{closed_port}/v1: connection refused")
    for report in (good, bad):
        shown = repr(report) + "\n".join(report.lines())
        assert "pa55word" not in shown and "admin" not in shown


async def test_check_reports_a_server_that_accepts_but_never_answers() -> None:
    """Something listens but never answers GET /models: reported as such (with the fix), not 'cannot connect'."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # the kernel completes connections; nobody ever reads or answers them
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
        settings = Config(model=ModelSettings(base_url=url, model="sim-model"),
                          client=ClientSettings(retry_max_wait=0.05, request_timeout=0.5))
        report = await run_check(settings)
    assert not report.ok and report.error is not None
    assert report.error.startswith(
        f"GET /models: the server at {url} accepted the connection but sent no answer within 0.5 s")
    assert "is vLLM still loading the model, or is another program listening there?" in report.error
    assert "cannot connect" not in report.error
