"""vLLM's request ``priority`` ([pipeline] request_priority) against a real vLLM 0.32: a second server started with
``--scheduling-policy priority`` (and one sequence slot, so that its waiting queue decides), and the suite's
default server (FCFS), which takes the field and ignores it."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Corpus
from tests.test_batch_e2e import summary
from tests.vllm.conftest import Answers, Server, add_long_tasks, http, start_server

pytestmark = pytest.mark.timeout(600)

WAITING_TOKENS = 16  # each waiting answer's length (their order is read from the server's log)


@pytest.fixture(scope="module")
def prioritised(vllm_environment: Any, answers: Answers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The suite's server, started with --scheduling-policy priority and --max-num-seqs 1."""
    log = tmp_path_factory.mktemp("vllm-priority") / "vllm.log"
    yield from start_server(vllm_environment, log, answers,
                            extra=("--scheduling-policy", "priority", "--max-num-seqs", "1"))


def _chat(server: Server, content: str, max_tokens: int, **extra: Any) -> tuple[int, Any]:
    return http("POST", f"{server.base_url}/chat/completions", {
        "model": server.name, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
        "temperature": 0, "ignore_eos": True, **extra})


def test_a_priority_server_serves_its_waiting_queue_smallest_priority_first(prioritised: Server) -> None:
    """One sequence slot, held by a long answer; requests of priority 5 then 1 wait: 1 is served first.

    The order is the engine's own: the canned-answer logits processor logs each request as it enters the running
    batch. Client-side end times are not: under load the API server has handed answers back in a burst, a short
    one before a long one that ended earlier (seen twice in CI)."""
    sent: dict[str, float] = {}
    ended: dict[str, float] = {}
    mark = prioritised.mark()

    def ask(name: str, max_tokens: int, priority: int) -> None:
        sent[name] = time.monotonic()
        status, body = _chat(prioritised, f"request {name}", max_tokens, priority=priority)
        assert status == 200, body
        ended[name] = time.monotonic()

    # The tiny model decodes 100 to 1000 tokens a second here, depending on the load: the long answer (as long as the
    # context allows) holds the slot for 2 to 25 s, and both others arrive within 0.6 s. Holding has priority 0, so it
    # is scheduled first even if it is still waiting when they arrive.
    threads = [threading.Thread(target=ask, args=("holding", prioritised.max_model_len - 64, 0))]
    threads[0].start()
    for name, priority in (("p5", 5), ("p1", 1)):
        time.sleep(0.3)
        threads.append(threading.Thread(target=ask, args=(name, WAITING_TOKENS, priority)))
        threads[-1].start()
    for thread in threads:
        thread.join(timeout=300)
    assert set(ended) == {"holding", "p5", "p1"}
    assert ended["holding"] > sent["p1"] + 0.2, "the long answer ended before both waited: make it longer"
    log = prioritised.proc.log_text()[mark:]
    scheduled = [m.group(1) for m in re.finditer(r"first user message 'request (\w+)'", log)]
    assert scheduled == ["holding", "p1", "p5"], (scheduled, sent, ended)


def test_a_run_with_request_priority_on_verifies_against_a_priority_server(
    prioritised: Server, run_cli: Any, corpus: Corpus, answers: Answers, tmp_path: Path
) -> None:
    """--request-priority on: the preflight probe and every request carry a priority; vLLM takes them all."""
    names = add_long_tasks(corpus, answers, "vprio_", 3, lines=5)
    out = tmp_path / "out"
    mark = prioritised.mark()
    result = run_cli("--c-files", corpus.corpus, "--json-files", corpus.corpus, "--output", out, "--workers", "3",
                     "--no-idiomatic", "--request-priority", "on", server=prioritised, timeout=500)
    assert result.returncode == 0, result.output
    assert summary(out)["totals"]["verified"] == len(names)
    assert prioritised.seen_since(mark).chats == [200] * (1 + len(names))  # the probe, then one answer a task


def test_auto_against_the_default_server_takes_every_task_to_verified(
    vllm: Server, run_cli: Any, corpus: Corpus, answers: Answers, tmp_path: Path
) -> None:
    """vLLM 0.32 without --scheduling-policy priority answers a non-zero priority (and ignores it), so auto (the
    default) sends it and no request is refused or sent twice."""
    status, body = _chat(vllm, "hello", 4, priority=7)
    assert status == 200, body
    names = add_long_tasks(corpus, answers, "vauto_", 3, lines=5)
    out = tmp_path / "out"
    mark = vllm.mark()
    result = run_cli("--c-files", corpus.corpus, "--json-files", corpus.corpus, "--output", out, "--workers", "3",
                     "--no-idiomatic", "--request-priority", "auto", timeout=500)
    assert result.returncode == 0, result.output
    assert summary(out)["totals"]["verified"] == len(names)
    assert vllm.seen_since(mark).chats == [200] * len(names)
