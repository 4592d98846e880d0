"""Our CLI against a real vLLM 0.32: check, preflight, the context budget, cut-off answers, streaming and usage."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Corpus, answer
from tests.test_batch_e2e import summary
from tests.vllm.conftest import Answers, Server, text_of

pytestmark = pytest.mark.timeout(400)


def transcript(out: Path, task: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / task / "transcript.jsonl").read_text().splitlines()]


def failure_info(out: Path, task: str, stage: str) -> dict[str, Any]:
    return json.loads((out / task / f"{stage}_failure_info.json").read_text())  # type: ignore[no-any-return]


def filler(words: int, seed: str) -> str:
    """Text the tiny tokenizer never saw (about one token per 3 characters), different per ``seed``."""
    return " ".join(f"{seed}{i * 7919 % 10007:x}" for i in range(words))


def test_check_reports_the_served_model_its_context_and_an_answer(run_cli: Any, vllm: Server) -> None:
    """`check` lists the served model, reads max_model_len from vLLM and gets a short answer with usage."""
    result = run_cli("check")
    assert result.returncode == 0, result.output
    assert "model server check: OK" in result.stdout
    assert f"served models:  {vllm.name}" in result.stdout
    assert f"context length: {vllm.max_model_len} tokens" in result.stdout
    tokens = re.search(r"tokens:\s+(\d+) prompt \+ (\d+) completion", result.stdout)
    assert tokens and int(tokens.group(1)) > 0 and int(tokens.group(2)) > 0, result.stdout


def test_check_with_a_wrong_model_names_what_is_served(cli: Any, vllm: Server) -> None:
    """`check --model WRONG` fails and lists the model vLLM does serve, with the setting to fix."""
    result = cli("check", "--base-url", vllm.base_url, "--model", "Qwen/not-served")
    assert result.returncode == 1
    assert "model Qwen/not-served is not served" in result.stdout
    assert f"the server serves: {vllm.name}" in result.stdout
    assert "[VLLM] model" in result.stdout


def test_run_with_a_wrong_model_stops_at_preflight_without_asking(
    cli: Any, vllm: Server, corpus: Corpus
) -> None:
    """A run with a model vLLM does not serve exits 3 before any chat request, naming the served model."""
    corpus.add_task("vpre_wrongmodel")
    mark = vllm.mark()
    result = cli("--c-files", corpus.corpus, "--json-files", corpus.corpus, "--output", corpus.root / "out",
                 "--base-url", vllm.base_url, "--model", "Qwen/not-served")
    assert result.returncode == 3, result.output
    assert f"the server serves: {vllm.name}" in result.stderr
    seen = vllm.seen_since(mark)
    assert seen.chats == []
    assert seen.statuses("/v1/models", "GET")


def test_prompt_that_cannot_fit_fails_its_task_without_a_retry_storm(
    run_cli: Any, vllm: Server, corpus: Corpus, answers: Answers
) -> None:
    """A C file longer than the context fails its own task (refused locally or by one 400); the others verify."""
    corpus.add_task("vctx_small", expected="small")
    comment = text_of(vllm, vllm.max_model_len + 100)
    huge = f'#include <stdio.h>\n/* {comment} */\nint main(void) {{ puts("big"); return 0; }}\n'
    corpus.add_task("vctx_huge", expected="big", c_source=huge)
    answers.publish(corpus)
    mark = vllm.mark()
    result = run_cli("--c-files", corpus.corpus, "--json-files", corpus.corpus, "--output", corpus.root / "out")
    assert result.returncode == 1, result.output
    tasks = {t["task_id"]: t for t in summary(corpus.root / "out")["tasks"]}
    assert tasks["vctx_small"]["status"] == "verified"
    assert tasks["vctx_huge"]["status"] == "failed"
    assert "--max-model-len" in tasks["vctx_huge"]["reason"]
    assert str(vllm.max_model_len) in tasks["vctx_huge"]["reason"]
    chats = vllm.seen_since(mark).chats
    # Two requests for the small task (one per stage); at most one for the huge one, refused with a 400.
    assert sorted(chats).count(200) == 2, chats
    assert len(chats) <= 3 and all(status in (200, 400) for status in chats), chats


def test_max_tokens_above_the_context_is_budgeted_per_request(
    run_cli: Any, vllm: Server, corpus: Corpus, answers: Answers
) -> None:
    """--max-tokens above max_model_len: every request asks for what fits (prompt + max_tokens <= context)."""
    corpus.add_task("vbudget_prog", expected="budget")
    answers.publish(corpus)
    mark = vllm.mark()
    out = corpus.root / "out"
    result = run_cli("--c-files", corpus.corpus, "--json-files", corpus.corpus, "--output", out,
                     "--max-tokens", str(vllm.max_model_len * 4))
    assert result.returncode == 0, result.output
    seen = vllm.seen_since(mark)
    assert seen.chats == [200, 200]
    prompts = [e["prompt_tokens"] for e in transcript(out, "vbudget_prog") if e["event"] == "answer"]
    assert len(prompts) == len(seen.max_tokens) == 2
    for prompt, asked in zip(prompts, seen.max_tokens, strict=True):
        assert prompt + asked <= vllm.max_model_len


def test_cut_off_answer_is_reported_truncated_and_repaired_within_the_context(
    run_cli: Any, vllm: Server, corpus: Corpus, answers: Answers
) -> None:
    """An answer vLLM stops at max_tokens (finish_reason length) is a truncated attempt; the repair fits, verifies."""
    max_tokens = 1200
    long_code = "fn main() {\n" + "".join(f"    // {filler(12, f'l{i}')}\n" for i in range(160)) + "}\n"
    fixed = answer('fn main() {\n    println!("cut");\n}\n')
    # A C file that fills most of the context: attempt 1 fits with max_tokens, but a repair that quoted the whole
    # cut-off answer and asked for max_tokens again would not.
    comment = text_of(vllm, vllm.max_model_len - 2 * max_tokens - 300)
    c_source = f'#include <stdio.h>\n/* {comment} */\nint main(void) {{ puts("cut"); return 0; }}\n'
    corpus.add_task("vcut_prog", expected="cut", unidiomatic=[answer(long_code), fixed], c_source=c_source)
    answers.publish(corpus)
    mark = vllm.mark()
    out = corpus.root / "out"
    result = run_cli("--c-files", corpus.corpus, "--json-files", corpus.corpus, "--output", out,
                     "--max-tokens", str(max_tokens), "--no-idiomatic")
    assert result.returncode == 0, result.output
    info = failure_info(out, "vcut_prog", "unidiomatic")
    assert info["status"] == "verified"
    assert [a["kind"] for a in info["attempts"]] == ["truncated"]
    assert "cut off" in info["attempts"][0]["message"]
    answers_seen = [e for e in transcript(out, "vcut_prog") if e["event"] == "answer"]
    assert [a["finish_reason"] for a in answers_seen] == ["length", "stop"]
    assert answers_seen[0]["completion_tokens"] == max_tokens
    seen = vllm.seen_since(mark)
    assert seen.chats == [200, 200]
    # The repair request fits the context whole: vLLM did not have to shorten it (or refuse it).
    assert seen.max_tokens[0] == max_tokens
    assert answers_seen[1]["prompt_tokens"] + seen.max_tokens[1] <= vllm.max_model_len


@pytest.mark.parametrize("stream", [pytest.param(False, id="plain"), pytest.param(True, id="stream")])
def test_answers_and_usage_match_what_vllm_generated(
    run_cli: Any, vllm: Server, corpus: Corpus, answers: Answers, stream: bool
) -> None:
    """Plain and streamed answers arrive whole, and the run's token counts equal vLLM's own counters."""
    name = f"vusage_{'stream' if stream else 'plain'}"
    code = 'fn main() {\n    // ' + filler(40, "u") + '\n    println!("usage");\n}\n'
    corpus.add_task(name, expected="usage", unidiomatic=[answer(code)], idiomatic=[answer(code)])
    answers.publish(corpus)
    out = corpus.root / "out"
    before = vllm.metrics()
    result = run_cli("--c-files", corpus.corpus, "--json-files", corpus.corpus, "--output", out,
                     *(["--stream"] if stream else []))
    after = vllm.metrics()
    assert result.returncode == 0, result.output
    for stage in ("unidiomatic", "idiomatic"):
        assert (out / name / f"translated_code_{stage}" / "combined.rs").read_text().strip() == code.strip()
    totals = summary(out)["totals"]
    assert totals["prompt_tokens"] == after["vllm:prompt_tokens_total"] - before["vllm:prompt_tokens_total"]
    assert totals["completion_tokens"] == (
        after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"]
    )
    assert totals["completion_tokens"] > 0
