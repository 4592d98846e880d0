"""Function-level translation through the real CLI and the simulator (issue 12): --granularity auto sends a
program that cannot fit the server's context function by function, each group FFI-verified and repaired, the
items combined into pure Rust, per-item results and counts written, and a rerun asks only for what is missing.

The program is tests/functions/function_fixtures.py's numbers.c (push, sum, the is_even+is_odd recursion
group, main) behind a long header comment, so that the whole file and its answer exceed the simulator's
context (max_model_len 1500) while each function's prompt fits. The canned answers are written by the tests in
the simulator's function-level layout (answers/numbers/functions/LABEL-N.md).
"""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path
from typing import Any

from pipeline.extract import BEGIN_MARK, END_MARK
from pipeline.prompts import FUNCTION_MARKER, FUNCTION_REPLY, first_prompt
from tests.conftest import Cli
from tests.functions.function_fixtures import EVEN_ODD, MAIN, PROGRAM_C, PUSH, SAMPLES, SUM, SUM_WRONG
from tests.test_batch_e2e import _signal_when, _start_run, finished_run, run, summary

#: What makes numbers.c too large for a small context: a header comment, outside every function.
HEADER = "/*\n" + "".join(f" * numbers.c, line {i}: a header comment as long as a licence text.\n"
                          for i in range(40)) + " */\n"
SMALL_CONTEXT = 1500
#: Answers of a small context are short: the client then budgets each request down to what the context leaves.
#: (These tests are about the unidiomatic stage: tests/test_function_idiomatic_e2e.py has the idiomatic one.)
SHORT_ANSWERS = ("--max-tokens", "400", "--no-idiomatic")
FUNCTIONS = ("push", "sum", "is_even", "is_odd", "main")
ANSWERS = {"push": [PUSH], "sum": [SUM_WRONG, SUM], "is_even+is_odd": [EVEN_ODD], "main": [MAIN]}


def numbers_corpus(root: Path, answers: dict[str, list[str]], *, header: str = HEADER) -> tuple[Path, Path]:
    """corpus/numbers.c with its tests (inputs as arguments), and answers/numbers/functions/LABEL-N.md."""
    corpus, canned = root / "corpus", root / "answers" / "numbers"
    corpus.mkdir(parents=True, exist_ok=True)
    (corpus / "numbers.c").write_text(header + PROGRAM_C)
    (corpus / "numbers_samples.json").write_text(json.dumps(SAMPLES))
    (corpus / "numbers.json").write_text(json.dumps([
        {"command": f"sactor run-tests --type bin ./numbers_samples.json %t {i} --feed-as-args", "test_id": i}
        for i in range(len(SAMPLES))
    ]))
    (canned / "functions").mkdir(parents=True, exist_ok=True)
    (canned / "match.txt").write_text("numbers.c")
    for label, codes in answers.items():
        for number, code in enumerate(codes, start=1):
            (canned / "functions" / f"{label}-{number}.md").write_text(
                f"Here it is.\n{BEGIN_MARK}\n{code.strip()}\n{END_MARK}\n")
    return corpus, root / "answers"


def asked(sim: Any) -> list[tuple[str, list[dict[str, str]]]]:
    """(label of the marker line, messages) of every chat request the simulator answered, in order."""
    found = []
    for request in sim.chat_requests:
        messages = request.body["messages"]
        first = next(m["content"] for m in messages if m["role"] == "user")
        marker = [line[len(FUNCTION_MARKER):] for line in first.splitlines() if line.startswith(FUNCTION_MARKER)]
        found.append((marker[0] if marker else "", messages))
    return found


def c_bodies() -> dict[str, str]:
    """Each function's C body (from its opening brace), as the program has it."""
    bodies = {}
    for name in FUNCTIONS:
        match = re.search(rf"^(?:static )?\w+ \*?{name}\([^;{{]*\)\s*(\{{[^\n]*}}$|\{{.*?^}})", PROGRAM_C, re.M | re.S)
        assert match is not None, name
        bodies[name] = match.group(1)
    return bodies


def test_auto_translates_a_program_too_large_for_the_context_function_by_function(
    cli: Cli, simulator_factory: Any, tmp_path: Path
) -> None:
    """One prompt per group with only its C bodies; a wrong sum is repaired by a prompt naming sum; the
    combined program is pure Rust and verified; summary, per-item files and statistics count items."""
    corpus, answers = numbers_corpus(tmp_path / "data", ANSWERS)
    sim, url = simulator_factory(answers_dir=answers, max_model_len=SMALL_CONTEXT)
    out = tmp_path / "out"
    result = run(cli, corpus, out, url, "--granularity", "auto", *SHORT_ANSWERS)
    assert result.returncode == 0, result.output

    requests = asked(sim)
    assert [label for label, _ in requests] == ["push", "sum", "sum", "is_even+is_odd", "main"]
    bodies = c_bodies()
    for label, messages in requests:
        shown = {name for name, body in bodies.items() if body in messages[1]["content"]}
        assert shown == set(label.split("+")), (label, shown)
    # Prefix-cache friendly: everything before the marker line is the same bytes for every item (and task).
    assert len({messages[1]["content"].split(FUNCTION_MARKER)[0] for _, messages in requests}) == 1
    assert "numbers" not in requests[0][1][1]["content"].split(FUNCTION_MARKER)[0]
    repair = requests[2][1][-1]["content"]
    assert "With the Rust translation of `sum` linked into the C program, tests fail" in repair
    assert repair.endswith(FUNCTION_REPLY)

    task = summary(out)["tasks"][0]
    assert task["status"] == "verified"
    assert task["granularity"] == "function"
    assert f"max_model_len {SMALL_CONTEXT}" in task["granularity_reason"]
    assert task["items"] == {"verified": 5, "failed": 0, "blocked": 0, "total": 5}
    assert task["stages"]["unidiomatic"]["requests"] == 5
    assert task["stages"]["idiomatic"] == {"status": "not_run"}  # tests/test_function_idiomatic_e2e.py
    assert summary(out)["totals"]["items"] == {"function_level_tasks": 1, "verified": 5, "failed": 0, "blocked": 0}
    assert "function-level: 1 tasks, items 5 verified, 0 failed, 0 blocked" in result.output
    assert "items 5 ok / 0 failed / 0 blocked" in result.output  # the progress line

    task_dir = out / "numbers"
    combined = (task_dir / "translated_code_unidiomatic" / "combined.rs").read_text()
    assert 'extern "C" {' not in combined and "fn sum(" in combined and "fn main()" in combined
    for name in FUNCTIONS:
        assert (task_dir / "translated_code_unidiomatic" / "functions" / f"{name}.rs").is_file(), name
    assert (task_dir / "translated_code_unidiomatic" / "structs" / "Node.rs").is_file()
    failure = json.loads((task_dir / "unidiomatic_failure_info.json").read_text())
    assert failure["items"] == {}
    stats = json.loads((task_dir / "llm_stat_unidiomatic.json").read_text())
    assert stats["items"]["sum"]["total_queries"] == 2 and stats["items"]["is_even+is_odd"]["total_queries"] == 1
    assert stats["total_queries"] == 5


def test_a_failed_function_blocks_main_and_a_rerun_asks_only_for_what_is_missing(
    cli: Cli, simulator_factory: Any, tmp_path: Path
) -> None:
    """sum never verifies: main is blocked_by_failed_dependency, the others verified and kept in the item
    book; the rerun (--retry-failed, a model that now gets sum right) asks for sum and main only."""
    corpus, answers = numbers_corpus(tmp_path / "first", {**ANSWERS, "sum": [SUM_WRONG]})
    sim, url = simulator_factory(answers_dir=answers, max_model_len=SMALL_CONTEXT)
    out = tmp_path / "out"
    first = run(cli, corpus, out, url, "--max-attempts", "2", *SHORT_ANSWERS)
    assert first.returncode == 1, first.output
    assert [label for label, _ in asked(sim)] == ["push", "sum", "sum", "is_even+is_odd"]
    task = summary(out)["tasks"][0]
    assert task["items"] == {"verified": 3, "failed": 1, "blocked": 1, "total": 5}
    failure = json.loads((out / "numbers" / "unidiomatic_failure_info.json").read_text())
    assert failure["items"]["function:main"] == {"status": "blocked_by_failed_dependency", "attempts": 0,
                                                 "reason": "needs function:sum, which failed",
                                                 "blocked_by": "function:sum"}
    assert failure["items"]["function:sum"]["status"] == "failed"
    assert not (out / "numbers" / "translated_code_unidiomatic" / "combined.rs").exists()
    assert (out / "numbers" / "translated_code_unidiomatic" / "functions" / "push.rs").is_file()

    _, fixed = numbers_corpus(tmp_path / "second", ANSWERS)
    sim2, url2 = simulator_factory(answers_dir=fixed, max_model_len=SMALL_CONTEXT)
    second = run(cli, corpus, out, url2, "--max-attempts", "2", "--retry-failed", *SHORT_ANSWERS)
    assert second.returncode == 0, second.output
    assert [label for label, _ in asked(sim2)] == ["sum", "sum", "main"]
    assert summary(out)["tasks"][0]["items"] == {"verified": 5, "failed": 0, "blocked": 0,
                                                                "total": 5}


def test_a_small_program_stays_whole_file_under_auto(cli: Cli, simulator_factory: Any, tmp_path: Path) -> None:
    """With the simulator's default context, numbers.c goes whole-file: the request is the whole-file one,
    byte for byte, the summary says why, and per-item files of an earlier function-level run are removed."""
    corpus, answers = numbers_corpus(tmp_path / "data", {}, header="")
    sim, url = simulator_factory(answers_dir=answers)
    out = tmp_path / "out"
    stale = out / "numbers" / "translated_code_unidiomatic" / "functions" / "sum.rs"  # of an earlier function-level run
    stale.parent.mkdir(parents=True)
    stale.write_text("// earlier\n")
    run(cli, corpus, out, url, "--max-attempts", "1", "--no-idiomatic")
    assert not stale.parent.exists()
    (request,) = sim.chat_requests
    assert request.body["messages"][1]["content"] == first_prompt(
        "unidiomatic", name="numbers.c", c_source=(corpus / "numbers.c").read_text())
    task = summary(out)["tasks"][0]
    assert task["granularity"] == "file" and task["granularity_reason"].startswith("auto: program and answer need")


def test_granularity_function_on_a_program_libclang_cannot_parse_fails_the_task(
    cli: Cli, simulator_factory: Any, tmp_path: Path
) -> None:
    """--granularity function and a C file that does not compile: the task fails naming the file and line,
    without a model request."""
    corpus, answers = numbers_corpus(tmp_path / "data", {}, header="int broken( {\n")
    sim, url = simulator_factory(answers_dir=answers)
    out = tmp_path / "out"
    result = run(cli, corpus, out, url, "--granularity", "function", "--no-idiomatic")
    assert result.returncode == 1, result.output
    task = summary(out)["tasks"][0]
    assert task["reason"].startswith(f"--granularity function: {corpus / 'numbers.c'}:1:"), task["reason"]
    assert "function-level translation needs a program that compiles" in task["reason"]
    assert sim.chat_requests == []


def test_default_granularity_keeps_earlier_results_and_other_settings_redo_them(
    cli: Cli, simulator_factory: Any, tmp_path: Path
) -> None:
    """A corpus finished with the defaults is unchanged for `--granularity auto --no-function-fallback` (no
    request); `--granularity file` or `function`, or `--function-fallback`, change the settings fingerprint."""
    import dataclasses

    from pipeline.config import Config
    from pipeline.engine import settings_fingerprint

    corpus, out, sim, url = finished_run(cli, simulator_factory, tmp_path, 1)
    sim.reset_log()
    same = run(cli, corpus, out, url, "--granularity", "auto", "--no-function-fallback")
    assert same.returncode == 0, same.output
    assert sim.chat_requests == [] and summary(out)["skipped_unchanged"] == 1
    default = Config()
    prints = {settings_fingerprint(dataclasses.replace(
        default, translation=dataclasses.replace(default.translation, **change)))
        for change in ({"granularity": "file"}, {"granularity": "function"}, {"function_fallback": True})}
    assert len(prints) == 3 and settings_fingerprint(default) not in prints


def test_function_fallback_translates_function_by_function_after_the_whole_file_stage_failed(
    cli: Cli, simulator_factory: Any, tmp_path: Path
) -> None:
    """A small program whose whole-file answers never hold code: with --function-fallback it is translated
    again group by group and verified; its record holds both stages' requests and says why."""
    corpus, answers = numbers_corpus(tmp_path / "data", ANSWERS, header="")
    sim, url = simulator_factory(answers_dir=answers)
    out = tmp_path / "out"
    result = run(cli, corpus, out, url, "--function-fallback", "--max-attempts", "2", "--no-idiomatic")
    assert result.returncode == 0, result.output
    assert [label for label, _ in asked(sim)] == ["", "", "push", "sum", "sum", "is_even+is_odd", "main"]
    task = summary(out)["tasks"][0]
    assert task["granularity"] == "function"
    assert task["granularity_reason"].startswith("fallback after the whole-file stage failed")
    assert task["stages"]["unidiomatic"]["requests"] == 7 and task["stages"]["unidiomatic"]["status"] == "verified"


def test_an_interrupted_run_resumes_without_asking_for_verified_functions(
    cli: Cli, simulator_factory: Any, tmp_path: Path
) -> None:
    """SIGINT once push is verified (items.json in the task's folder): exit 130; the rerun never asks for push."""
    from pipeline.simulator import LoadModel

    corpus, answers = numbers_corpus(tmp_path / "data", ANSWERS)
    _slow, slow_url = simulator_factory(answers_dir=answers, max_model_len=SMALL_CONTEXT,
                                        load=LoadModel(capacity=1, latency=0.5, decode_per_token=0.0))
    out = tmp_path / "out"
    book = out / "numbers" / "items.json"

    def push_verified() -> bool:
        try:
            records = json.loads(book.read_text())["items"]
        except (OSError, ValueError):
            return False
        return any(r["key"] == "function:push" and r["status"] == "verified" for r in records)

    proc = _start_run(cli, corpus, out, slow_url, *SHORT_ANSWERS)
    stderr = _signal_when(proc, push_verified, signal.SIGINT)
    assert proc.returncode == 130, stderr
    sim, url = simulator_factory(answers_dir=answers, max_model_len=SMALL_CONTEXT)
    rerun = run(cli, corpus, out, url, *SHORT_ANSWERS)
    assert rerun.returncode == 0, rerun.output
    labels = [label for label, _ in asked(sim)]
    assert "push" not in labels and labels[-1] == "main", labels
    assert summary(out)["tasks"][0]["items"]["verified"] == 5


def test_with_several_servers_the_smallest_context_decides(
    cli: Cli, simulator_factory: Any, tmp_path: Path
) -> None:
    """Two servers of 8192 and 1500 tokens: the program fits the first but not the second, so auto goes
    function-level, naming the smaller context."""
    corpus, answers = numbers_corpus(tmp_path / "data", ANSWERS)
    big, big_url = simulator_factory(answers_dir=answers)
    small, small_url = simulator_factory(answers_dir=answers, max_model_len=SMALL_CONTEXT)
    out = tmp_path / "out"
    result = cli("--c-files", corpus, "--json-files", corpus, "--output", out, "--base-url", big_url,
                 "--base-url", small_url, "--model", "sim-model", *SHORT_ANSWERS)
    assert result.returncode == 0, result.output
    task = summary(out)["tasks"][0]
    assert task["granularity"] == "function" and f"max_model_len {SMALL_CONTEXT}" in task["granularity_reason"]
    assert sorted(label for label, _ in asked(big) + asked(small)) == sorted(
        ["push", "sum", "sum", "is_even+is_odd", "main"])
