"""Several candidates per request (``--candidates N``, vLLM's ``n``) through the real CLI and the simulator."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline.simulator.tokens import text_tokens
from tests.conftest import RUST_OK, Cli, Corpus, answer
from tests.test_batch_e2e import run, samples_json, summary, task_json

SAMPLING = ("--temperature", "0.7")


def directive_task(root: Path, name: str, unidiomatic: list[Any]) -> None:
    """A flat task whose @sim directive plans the unidiomatic stage per attempt (an entry per choice, or one)."""
    root.mkdir(parents=True, exist_ok=True)
    plan = {"id": name, "unidiomatic": unidiomatic, "stdout": f"out {name}", "tokens": 40}
    (root / f"{name}.c").write_text(f'// @sim {json.dumps(plan)}\n#include <stdio.h>\n'
                                    f'int main(void) {{ puts("out {name}"); return 0; }}\n')
    (root / f"{name}_samples.json").write_text(samples_json(f"out {name}"))
    (root / f"{name}.json").write_text(task_json(name))


def transcript(out: Path, task: str) -> list[dict[str, Any]]:
    lines = (out / task / "transcript.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.parametrize("stream", [pytest.param(False, id="json"), pytest.param(True, id="stream")])
def test_a_second_candidate_that_verifies_wins_in_one_request(
    cli: Cli, simulator_factory: Any, tmp_path: Path, stream: bool
) -> None:
    """Candidate 1 fails its tests, candidate 2 verifies: one request with n=2, its program kept, both counted."""
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    directive_task(corpus, "pair", [["test_fail", "pass"]])
    sim, url = simulator_factory()
    result = run(cli, corpus, out, url, "--candidates", "2", *SAMPLING, "--no-idiomatic",
                 *(["--stream"] if stream else []))
    assert result.returncode == 0, result.output
    requests = sim.chat_requests
    assert [(r.n, r.body["n"], r.status) for r in requests] == [(2, 2, 200)]
    stage = summary(out)["tasks"][0]["stages"]["unidiomatic"]
    assert (stage["status"], stage["attempts"], stage["requests"]) == ("verified", 1, 1)
    assert "(choice 2)" in (out / "pair" / "translated_code_unidiomatic" / "combined.rs").read_text()
    answered = next(e for e in transcript(out, "pair") if e.get("event") == "answer")
    assert answered["candidate"] == 2
    first = answered["candidates"][0]
    # Its test run failed, or was cancelled when candidate 2 verified first (they run side by side).
    assert first["candidate"] == 1 and first["kind"] in ("test_failure", "cancelled")
    # The summary counts the completion tokens of both choices: what the server reported for the request.
    both = text_tokens(first["content"]) + text_tokens(answered["content"])
    assert stage["completion_tokens"] == requests[0].completion_tokens == both
    assert summary(out)["totals"]["completion_tokens"] == both
    assert stage["prompt_tokens"] == requests[0].prompt_tokens


def test_one_candidate_sends_requests_as_before(cli: Cli, simulator_factory: Any, tmp_path: Path) -> None:
    """Without --candidates (or with 1), requests carry no n and the summary's settings say 1."""
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    directive_task(corpus, "single", ["pass"])
    sim, url = simulator_factory()
    result = run(cli, corpus, out, url, "--candidates", "1")
    assert result.returncode == 0, result.output
    assert len(sim.chat_requests) == 2
    assert all("n" not in r.body and r.n == 1 for r in sim.chat_requests)
    rerun = run(cli, corpus, out, url)  # --candidates 1 is the default: the same fingerprint, nothing redone
    assert rerun.returncode == 0, rerun.output
    assert len(sim.chat_requests) == 2


def test_the_repair_continues_from_the_candidate_that_got_furthest(
    cli: Cli, simulator_factory: Any, tmp_path: Path
) -> None:
    """Neither candidate verifies: the repair request carries the one that compiled and ran the tests."""
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    directive_task(corpus, "repair", [["compile_error", "test_fail"], "pass"])
    sim, url = simulator_factory()
    result = run(cli, corpus, out, url, "--candidates", "2", *SAMPLING, "--no-idiomatic")
    assert result.returncode == 0, result.output
    first, second = sim.chat_requests
    assert (first.n, second.n) == (2, 2)
    assistant = [m["content"] for m in second.body["messages"] if m["role"] == "assistant"]
    assert len(assistant) == 1 and "(choice 2)" in assistant[0]
    assert "does not compile" not in second.body["messages"][-1]["content"]
    stage = summary(out)["tasks"][0]["stages"]["unidiomatic"]
    assert (stage["attempts"], stage["requests"]) == (2, 2)
    assert stage["completion_tokens"] == first.completion_tokens + second.completion_tokens


def test_the_first_verified_candidate_ends_a_slow_one(cli: Cli, simulator_factory: Any, corpus: Corpus) -> None:
    """A candidate whose program hangs is killed once the other verifies: the task does not wait for it."""
    hang = 'fn main() {\n    std::thread::sleep(std::time::Duration::from_secs(40));\n    println!("late");\n}\n'
    corpus.add_task("slow", unidiomatic=[answer(hang)])
    (corpus.answers / "slow" / "unidiomatic-1-c2.md").write_text(answer(RUST_OK.format(out="hello")))
    sim, url = simulator_factory(answers_dir=corpus.answers)
    out = corpus.root / "out"
    started = time.monotonic()
    result = run(cli, corpus.corpus, out, url, "--candidates", "2", *SAMPLING, "--no-idiomatic", "--jobs", "2",
                 "--test-timeout", "60")
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.output
    assert elapsed < 30, f"the run took {elapsed:.1f} s: the hanging candidate was waited for"
    assert [r.n for r in sim.chat_requests] == [2]
    answered = next(e for e in transcript(out, "slow") if e.get("event") == "answer")
    assert answered["candidate"] == 2
    assert answered["candidates"][0]["kind"] == "cancelled"


def test_candidates_without_sampling_are_refused(cli: Cli, tmp_path: Path) -> None:
    """vLLM refuses n > 1 with greedy sampling: the CLI says so before starting, naming both settings."""
    corpus = tmp_path / "corpus"
    directive_task(corpus, "greedy", ["pass"])
    result = run(cli, corpus, tmp_path / "out", "http://127.0.0.1:9/v1", "--candidates", "3")
    assert result.returncode == 2, result.output
    assert "--candidates" in result.output and "--temperature" in result.output


def test_the_simulator_refuses_n_with_greedy_sampling_as_vllm(simulator_factory: Any) -> None:
    """A request with n=2 and temperature 0 gets vLLM's 400."""
    import httpx2

    _sim, url = simulator_factory()
    body = {"model": "sim-model", "messages": [{"role": "user", "content": "Reply with the word ok."}], "n": 2,
            "temperature": 0}
    response = httpx2.post(f"{url}/chat/completions", json=body)
    assert response.status_code == 400
    assert "n must be 1 when using greedy sampling" in response.json()["error"]["message"]
    body["temperature"] = 0.5
    ok = httpx2.post(f"{url}/chat/completions", json=body).json()
    assert [c["index"] for c in ok["choices"]] == [0, 1]


async def test_a_request_for_n_choices_takes_one_answers_time_on_n_slots(simulator_factory: Any) -> None:
    """Capacity 2: a request for 2 choices takes one answer's time but both slots, so a request after it waits."""
    import anyio
    import httpx2

    from pipeline.simulator import LoadModel

    sim, url = simulator_factory(load=LoadModel(capacity=2, latency=0.4))

    async def post(client: httpx2.AsyncClient, n: int) -> None:
        body = {"model": "sim-model", "messages": [{"role": "user", "content": "Reply with the word ok."}], "n": n,
                "temperature": 0.5}
        response = await client.post(f"{url}/chat/completions", json=body)
        assert response.status_code == 200

    for first_n in (1, 2):
        sim.reset_log()
        async with httpx2.AsyncClient(timeout=30) as client, anyio.create_task_group() as tg:
            tg.start_soon(post, client, first_n)
            await anyio.sleep(0.1)
            tg.start_soon(post, client, 1)
        first, second = sim.chat_requests
        assert first.end - first.start == pytest.approx(0.4, abs=0.15)  # one answer's time, whatever n
        if first_n == 1:
            assert second.start < first.end  # a free slot: served side by side
        else:
            assert second.start >= first.end - 0.01  # both slots were held by the two choices
