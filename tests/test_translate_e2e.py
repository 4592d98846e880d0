"""One task's stages end to end, through the real CLI and the simulator: ask, extract, build, test, repair."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import RUST_OK, Cli, Corpus, answer

BAD_TYPES = 'fn main() {\n    let n: i32 = "seven";\n    println!("{}", n);\n}\n'
UNSAFE_OK = (
    'fn main() {\n    let x = 1;\n    let p = &x as *const i32;\n    unsafe { let _ = *p; }\n'
    '    println!("hello");\n}\n'
)


def run_corpus(cli: Cli, corpus: Corpus, url: str, out: Path, *extra: str) -> Any:
    return cli("--c-files", corpus.corpus, "--json-files", corpus.corpus, "--output", out,
               "--base-url", url, "--model", "sim-model", "--workers", "4", *extra)


def user_messages(body: dict[str, Any]) -> list[str]:
    return [m["content"] for m in body["messages"] if m["role"] == "user"]


def requests_for(sim: Any, name: str) -> list[Any]:
    return [r for r in sim.chat_requests if f"{name}.c" in user_messages(r.body)[0]]


def failure_kinds(out: Path, task: str, stage: str) -> list[str]:
    info = json.loads((out / task / f"{stage}_failure_info.json").read_text())
    return [a["kind"] for a in info["attempts"]]


def test_repair_request_carries_the_compiler_error(
    cli: Cli, corpus: Corpus, simulator_factory: Any, tmp_path: Path
) -> None:
    """The second request of a task whose first answer does not compile quotes rustc's error."""
    corpus.add_task("typo", unidiomatic=[answer(BAD_TYPES), answer(RUST_OK.format(out="hello"))])
    sim, url = simulator_factory(answers_dir=corpus.answers)
    out = tmp_path / "out"
    result = run_corpus(cli, corpus, url, out)
    assert result.returncode == 0, result.output
    reqs = requests_for(sim, "typo")
    assert len(reqs) == 3  # unidiomatic x2, idiomatic x1
    repair = user_messages(reqs[1].body)[-1]
    assert "mismatched types" in repair
    assert '"seven"' in reqs[1].body["messages"][-2]["content"]  # the previous answer is in the conversation
    assert failure_kinds(out, "typo", "unidiomatic") == ["compile_error"]
    assert (out / "typo" / "translated_code_unidiomatic" / "combined.rs").read_text().strip() == \
        RUST_OK.format(out="hello").strip()


def test_test_failure_feedback_shows_expected_and_actual(
    cli: Cli, corpus: Corpus, simulator_factory: Any, tmp_path: Path
) -> None:
    """A program that prints the wrong thing gets the expected and the actual output back."""
    corpus.add_task("greet", expected="hello",
                    unidiomatic=[answer(RUST_OK.format(out="goodbye")), answer(RUST_OK.format(out="hello"))])
    sim, url = simulator_factory(answers_dir=corpus.answers)
    result = run_corpus(cli, corpus, url, tmp_path / "out")
    assert result.returncode == 0, result.output
    feedback = user_messages(requests_for(sim, "greet")[1].body)[-1]
    assert "hello" in feedback and "goodbye" in feedback
    assert failure_kinds(tmp_path / "out", "greet", "unidiomatic") == ["test_failure"]


def test_task_that_never_verifies_fails_after_the_attempt_limit(
    cli: Cli, corpus: Corpus, simulator_factory: Any, tmp_path: Path
) -> None:
    """Every attempt is recorded, no combined.rs is written, and the run exits 1."""
    corpus.add_task("hopeless", unidiomatic=[answer(BAD_TYPES)])
    corpus.add_task("fine")
    sim, url = simulator_factory(answers_dir=corpus.answers)
    out = tmp_path / "out"
    result = run_corpus(cli, corpus, url, out, "--max-attempts", "3")
    assert result.returncode == 1, result.output
    assert len(requests_for(sim, "hopeless")) == 3
    assert failure_kinds(out, "hopeless", "unidiomatic") == ["compile_error"] * 3
    assert not (out / "hopeless" / "translated_code_unidiomatic" / "combined.rs").exists()
    assert sorted(p.name for p in (out / "hopeless" / "attempts").iterdir()) == [
        "unidiomatic-1.rs", "unidiomatic-2.rs", "unidiomatic-3.rs"]
    record = json.loads((out / "hopeless" / "result.json").read_text())
    assert record["status"] == "failed"
    assert "not verified after 3 attempts" in record["stages"]["unidiomatic"]["reason"]
    assert record["stages"]["idiomatic"]["status"] == "not_run"
    summary = json.loads((out / "batch_summary.json").read_text())
    assert {t["task_id"]: t["status"] for t in summary["tasks"]} == {"hopeless": "failed", "fine": "verified"}


def test_idiomatic_answer_with_unsafe_is_rejected_without_compiling(
    cli: Cli, corpus: Corpus, simulator_factory: Any, tmp_path: Path
) -> None:
    """`unsafe` in the idiomatic stage is refused before rustc sees it, and the reason is fed back."""
    corpus.add_task("lazy", idiomatic=[answer(UNSAFE_OK), answer(RUST_OK.format(out="hello"))])
    sim, url = simulator_factory(answers_dir=corpus.answers)
    out = tmp_path / "out"
    result = run_corpus(cli, corpus, url, out)
    assert result.returncode == 0, result.output
    assert failure_kinds(out, "lazy", "idiomatic") == ["refused"]
    info = json.loads((out / "lazy" / "idiomatic_failure_info.json").read_text())
    assert "without compiling" in info["attempts"][0]["message"]
    feedback = user_messages(requests_for(sim, "lazy")[-1].body)[-1]
    assert "unsafe" in feedback
    assert "unsafe" not in (out / "lazy" / "translated_code_idiomatic" / "combined.rs").read_text()


def test_answer_without_code_and_truncated_answer_are_failed_attempts(
    cli: Cli, corpus: Corpus, simulator_factory: Any, tmp_path: Path
) -> None:
    """Prose without code, then an answer cut by the length limit, then a good one."""
    truncated = '<!-- sim: {"finish_reason": "length"} -->\nHere it is:\n\n```rust\nfn main() {\n    println!('
    corpus.add_task("chatty", unidiomatic=[
        "I am not able to translate this program.", truncated, answer(RUST_OK.format(out="hello"))])
    sim, url = simulator_factory(answers_dir=corpus.answers)
    out = tmp_path / "out"
    result = run_corpus(cli, corpus, url, out)
    assert result.returncode == 0, result.output
    assert failure_kinds(out, "chatty", "unidiomatic") == ["no_code", "truncated"]
    feedback = user_messages(requests_for(sim, "chatty")[2].body)[-1]
    assert "cut off" in feedback


def test_translate_command_handles_one_task(
    cli: Cli, corpus: Corpus, simulator_factory: Any, tmp_path: Path
) -> None:
    """`translate FILE.c TEST.json -r DIR` writes SACToR's result layout."""
    corpus.add_task("single")
    _sim, url = simulator_factory(answers_dir=corpus.answers)
    result_dir = tmp_path / "result"
    result = cli("translate", corpus.corpus / "single.c", corpus.corpus / "single.json", "-r", result_dir,
                 "--base-url", url, "--model", "sim-model")
    assert result.returncode == 0, result.output
    for name in ("translated_code_unidiomatic/combined.rs", "translated_code_idiomatic/combined.rs",
                 "translated_code_unidiomatic/clippy_stat.json", "llm_stat_unidiomatic.json",
                 "llm_stat_idiomatic.json", "unidiomatic_failure_info.json", "result.json", "transcript.jsonl"):
        assert (result_dir / name).is_file(), name
    stat = json.loads((result_dir / "llm_stat_unidiomatic.json").read_text())
    assert stat["total_queries"] == 1 and stat["total_costed_input_tokens"] > 0
    events = [json.loads(line) for line in (result_dir / "transcript.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["prompt", "answer", "verdict"] * 2


def test_answer_with_several_programs_uses_the_one_that_compiles(
    cli: Cli, corpus: Corpus, simulator_factory: Any, tmp_path: Path
) -> None:
    """Two complete programs in one answer: the one that compiles is verified, not the longest or the last."""
    good = RUST_OK.format(out="hello")
    draft = ('fn main() {\n    // a longer sketch that does not build\n    let total: u64 = "many";\n'
             '    for i in 0..total {\n        println!("{}", i);\n    }\n}\n')
    two = f"Here is the program:\n\n```rust\n{good}```\n\nAnd a variant:\n\n```rust\n{draft}```\n"
    corpus.add_task("twice", unidiomatic=[two], idiomatic=[two])
    sim, url = simulator_factory(answers_dir=corpus.answers)
    out = tmp_path / "out"
    result = run_corpus(cli, corpus, url, out)
    assert result.returncode == 0, result.output
    assert len(requests_for(sim, "twice")) == 2  # one per stage: no repair was needed
    for stage in ("unidiomatic", "idiomatic"):
        assert (out / "twice" / f"translated_code_{stage}" / "combined.rs").read_text().strip() == good.strip()
