"""vLLM's automatic prefix caching (``--enable-prefix-caching``, on in the suite's server) against our prompts:
what tasks share comes first, so from the second task on most prompt tokens are served from the cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RUST_OK, Corpus, answer
from tests.test_batch_e2e import summary
from tests.vllm.conftest import Answers, Server

pytestmark = pytest.mark.timeout(600)

#: The share of prompt tokens of the second and later tasks that the cache must serve.
MIN_HIT_RATE = 0.6


def cache_counters(server: Server) -> tuple[float, float]:
    """(queried tokens, hit tokens) so far: vLLM 0.32's ``vllm:prefix_cache_queries`` and ``..._hits`` counters."""
    metrics = server.metrics()

    def counter(name: str) -> float:
        return metrics.get(f"{name}_total", metrics.get(name, 0.0))

    return counter("vllm:prefix_cache_queries"), counter("vllm:prefix_cache_hits")


def test_second_and_later_tasks_are_served_mostly_from_the_prefix_cache(
    run_cli: Any, vllm: Server, answers: Answers, tmp_path: Path
) -> None:
    """One task, then three more (one repaired): vLLM's /metrics says most prompt tokens of the later tasks hit the
    prefix cache (system message and instructions shared by every task, the conversation before each repair)."""
    wrong = answer('fn main() {\n    let count: i32 = "not a number";\n    println!("{}", count);\n}\n')
    first, later = Corpus(tmp_path / "first"), Corpus(tmp_path / "later")
    first.add_task("pcache_first", expected="first")
    later.add_task("pcache_repaired", expected="repaired",
                   unidiomatic=[wrong, answer(RUST_OK.format(out="repaired"))])
    for name in ("pcache_plain", "pcache_other"):
        later.add_task(name, expected=name)
    answers.publish(first)
    answers.publish(later)

    figures = []
    for label, corpus, count in (("first", first, 1), ("later", later, 3)):
        queries0, hits0 = cache_counters(vllm)
        out = tmp_path / f"out-{label}"
        result = run_cli("--c-files", corpus.corpus, "--json-files", corpus.corpus, "--output", out,
                         "--workers", "2", timeout=500)
        assert result.returncode == 0, result.output
        assert summary(out)["totals"]["verified"] == count
        queries, hits = cache_counters(vllm)
        figures.append((queries - queries0, hits - hits0))
    (first_q, first_h), (later_q, later_h) = figures
    rate = later_h / later_q if later_q else 0.0
    print(f"\nprefix cache: first task {first_h:.0f}/{first_q:.0f} prompt tokens hit; "
          f"later tasks {later_h:.0f}/{later_q:.0f} = {rate:.2f}")
    assert later_q > 0, "vLLM counted no prefix-cache queries: is --enable-prefix-caching on?"
    assert rate >= MIN_HIT_RATE, f"only {rate:.2f} of the later tasks' prompt tokens hit the prefix cache"
