"""Batch runs against a real vLLM 0.32: verified translations end to end, and --workers filling vLLM's batch."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Corpus
from tests.test_batch_e2e import summary
from tests.vllm.conftest import EXAMPLE_ANSWERS, EXAMPLE_CORPUS, Answers, MetricsSampler, Server, add_long_tasks

pytestmark = pytest.mark.timeout(600)

_RUST_BLOCK = re.compile(r"```rust\n(.*?)```", re.S)


def canned_code(key: str, stage: str) -> str:
    """The program of the last canned answer of a stage (the one that verifies)."""
    files = sorted((EXAMPLE_ANSWERS / key).glob(f"{stage}-*.md"), key=lambda p: int(p.stem.split("-")[1]))
    blocks = _RUST_BLOCK.findall(files[-1].read_text())
    assert len(blocks) == 1, files[-1]
    return str(blocks[0])


def test_bundled_examples_verify_through_both_stages(run_cli: Any, vllm: Server, tmp_path: Path) -> None:
    """The bundled corpus, answered by vLLM (canned answers forced inside vLLM): every task verified, both stages."""
    out = tmp_path / "out"
    mark = vllm.mark()
    result = run_cli("--c-files", EXAMPLE_CORPUS, "--json-files", EXAMPLE_CORPUS, "--output", out,
                     "--workers", "8", timeout=500)
    assert result.returncode == 0, result.output
    report = summary(out)
    tasks = {t["task_id"]: t for t in report["tasks"]}
    assert sorted(tasks) == ["gcdlcm", "reverse", "rpn", "sieve", "wordfreq"]
    attempts = {name: (t["stages"]["unidiomatic"]["attempts"], t["stages"]["idiomatic"]["attempts"])
                for name, t in tasks.items()}
    # The canned answers' repair paths (examples/README.md), now through vLLM's tokenizer and sampler.
    assert attempts == {"gcdlcm": (2, 1), "reverse": (1, 2), "rpn": (1, 1), "sieve": (1, 1), "wordfreq": (2, 1)}
    for name in tasks:
        for stage in ("unidiomatic", "idiomatic"):
            combined = (out / name / f"translated_code_{stage}" / "combined.rs").read_text()
            assert combined.strip() == canned_code(name, stage).strip(), (name, stage)
    assert vllm.seen_since(mark).chats == [200] * 13
    assert report["totals"]["completion_tokens"] > 0


def test_workers_keep_several_requests_running_in_vllm(
    run_cli: Any, vllm: Server, corpus: Corpus, answers: Answers, tmp_path: Path
) -> None:
    """--workers 8 over 12 tasks: vLLM's /metrics shows (nearly) 8 requests running at once, never more."""
    # About 2,800 tokens each (several seconds): the eight requests of a wave overlap even when they start apart.
    names = add_long_tasks(corpus, answers, "vwork_", 12, lines=250)
    out = tmp_path / "out"
    with MetricsSampler(vllm) as sampler:
        result = run_cli("--c-files", corpus.corpus, "--json-files", corpus.corpus, "--output", out,
                         "--workers", "8", "--no-idiomatic", timeout=500)
    assert result.returncode == 0, result.output
    assert summary(out)["totals"]["verified"] == len(names)
    assert sampler.samples > 10
    assert 6 <= sampler.peak_running <= 8, f"peak {sampler.peak_running} requests running in vLLM"
