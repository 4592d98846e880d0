"""What a user of a vLLM 0.32 server sees through the CLI: cut-off answers, request counts, a stopping server."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.conftest import RUST_OK, Cli, Corpus, answer
from tests.test_batch_e2e import _finished, _start_run, flat_corpus, run

#: Prose long enough that any answer starting with it is cut off before its code.
RAMBLING = "Let me think about this program step by step before writing any Rust. " * 400


def run_corpus(cli: Cli, corpus: Corpus, url: str, out: Path, *extra: str) -> Any:
    return run(cli, corpus.corpus, out, url, "--workers", "2", *extra)


def stage_requests(sim: Any, name: str, stage: str) -> list[Any]:
    return [r for r in sim.chat_requests if r.stage == stage
            and f"{name}.c" in next(m["content"] for m in r.body["messages"] if m["role"] == "user")]


def test_a_cut_off_answer_is_not_sent_back_and_the_repair_fits(
    cli: Cli, corpus: Corpus, simulator_factory: Any, tmp_path: Path
) -> None:
    """An answer cut off at max_tokens is replaced by a stub in the repair; the repair fits and verifies.

    Sent back whole, the 1400-token cut-off answer would leave no room in a 2000-token context.
    """
    ok = answer(RUST_OK.format(out="hello"))
    corpus.add_task("cutoff", unidiomatic=[RAMBLING, ok])
    sim, url = simulator_factory(answers_dir=corpus.answers, max_model_len=2000)
    out = tmp_path / "out"
    result = run_corpus(cli, corpus, url, out, "--max-tokens", "1400", "--no-idiomatic")
    assert result.returncode == 0, result.output
    first, repair = stage_requests(sim, "cutoff", "unidiomatic")
    assert first.finish_reason == "length"
    resent = repair.body["messages"][-2]["content"]
    assert RAMBLING[:200] not in resent and "cut off at the length limit" in resent
    assert repair.prompt_tokens + repair.body["max_tokens"] <= 2000
    info = json.loads((out / "cutoff" / "unidiomatic_failure_info.json").read_text())
    assert [a["kind"] for a in info["attempts"]] == ["truncated"]


def test_a_stage_whose_answers_are_always_cut_off_says_truncated(
    cli: Cli, corpus: Corpus, simulator_factory: Any, tmp_path: Path
) -> None:
    """Every answer cut off: the stage fails after its attempts and its reason says truncated, not overflow."""
    corpus.add_task("rambler", unidiomatic=[RAMBLING])
    sim, url = simulator_factory(answers_dir=corpus.answers, max_model_len=2000)
    out = tmp_path / "out"
    result = run_corpus(cli, corpus, url, out, "--max-tokens", "1400", "--max-attempts", "3", "--no-idiomatic")
    assert result.returncode == 1, result.output
    stage = json.loads((out / "rambler" / "result.json").read_text())["stages"]["unidiomatic"]
    assert stage["status"] == "failed"
    assert "truncated" in stage["reason"] and "exceeds" not in stage["reason"], stage["reason"]
    assert len(stage_requests(sim, "rambler", "unidiomatic")) == 3


def test_llm_stat_total_queries_counts_every_request_sent(
    cli: Cli, corpus: Corpus, simulator_factory: Any, tmp_path: Path
) -> None:
    """A 503 then an answer: total_queries is 2, the requests the server received for the stage, not 1."""
    corpus.add_task("busy")
    first = corpus.answers / "busy" / "unidiomatic-1.md"
    first.write_text('<!-- sim: {"fault": "503", "fault_times": 1} -->\n' + first.read_text())
    sim, url = simulator_factory(answers_dir=corpus.answers)
    (cli.cwd / "sactor.toml").write_text("[pipeline]\nretry_max_wait = 0.05\n")
    out = tmp_path / "out"
    result = run_corpus(cli, corpus, url, out)
    assert result.returncode == 0, result.output
    for stage in ("unidiomatic", "idiomatic"):
        stat = json.loads((out / "busy" / f"llm_stat_{stage}.json").read_text())
        assert stat["total_queries"] == len(stage_requests(sim, "busy", stage))
    assert json.loads((out / "busy" / "llm_stat_unidiomatic.json").read_text())["total_queries"] == 2


def test_a_server_stopping_like_vllm_on_sigterm_stops_the_run_with_exit_3(cli: Cli, tmp_path: Path) -> None:
    """New connections refused while requests hang: exit 3 after the outage budget, not after request_timeout;
    the rerun against a live server resumes."""
    from pipeline.simulator import FaultPlan, LoadModel, SimConfig, Simulator

    corpus = tmp_path / "corpus"
    flat_corpus(corpus, 6)
    (cli.cwd / "sactor.toml").write_text(
        "[pipeline]\nretry_max_wait = 0.05\nrequest_timeout = 300\noutage_budget = 2\n")
    out = tmp_path / "out"
    # The first two tasks ask at once: the first request is generating when the second starts the shutdown, so
    # both hang and no request of this run ever sees an error.
    sim = Simulator(SimConfig(load=LoadModel(capacity=2, latency=3.0), faults=FaultPlan(script=("ok", "shutdown"))))
    with sim.running() as url:
        started = time.monotonic()
        proc = _start_run(cli, corpus, out, url, "--workers", "2")
        try:
            _stdout, stderr = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise AssertionError("the run waited for the hanging requests") from None
        took = time.monotonic() - started
    assert proc.returncode == 3, stderr
    assert took < 60
    assert "refused new connections" in stderr or "has not answered" in stderr, stderr
    done = _finished(out)
    with Simulator(SimConfig()).running() as url2:
        result = run(cli, corpus, out, url2)
    assert result.returncode == 0, result.output
    assert len(_finished(out)) == 6 and done <= _finished(out)
