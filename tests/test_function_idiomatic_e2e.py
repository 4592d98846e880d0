"""The idiomatic stage of function-level programs through the real CLI and the simulator (issue 12): numbers.c
translated function by function, then made safe unit by unit (pipeline/function_idiomatic.py) from the canned
answers of tests/functions/answers/numbers/idiomatic-functions/, each step built and tested as a whole program.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from pipeline.function_idiomatic import MARKER
from pipeline.rust_source import first_unsafe_line
from tests.conftest import Cli
from tests.functions.function_fixtures import RUST_FUNCTIONS
from tests.test_batch_e2e import run, summary
from tests.test_function_level_e2e import ANSWERS, numbers_corpus

IDIOMATIC_ANSWERS = Path(__file__).parent / "functions" / "answers" / "numbers" / "idiomatic-functions"
UNITS = ["push", "sum", "is_even+is_odd", "main"]
#: The unidiomatic body of each function, as the combined program has it.
BODIES = {"push": "(*n).next = head;", "sum": "(*n).value + sum((*n).next)",
          "is_even": "if n == 0 { 1 } else { is_odd(n - 1) }", "is_odd": "if n == 0 { 0 } else { is_even(n - 1) }",
          "main": "g_list = push(g_list, libc::atoi(text.as_ptr()));"}
SUM_UNSAFE = "Still the raw version.\n----RUST BEGIN----\n" + RUST_FUNCTIONS[("function:sum",)].strip() \
    + "\n----RUST END----\n"


def corpus_with_idiomatic_answers(root: Path, overrides: dict[str, str] | None = None) -> tuple[Path, Path]:
    """numbers.c and its function-level answers (sum right the second time), with the idiomatic answers."""
    corpus, answers = numbers_corpus(root, ANSWERS, header="")
    target = answers / "numbers" / "idiomatic-functions"
    shutil.copytree(IDIOMATIC_ANSWERS, target)
    for name, text in (overrides or {}).items():
        (target / name).write_text(text)
    return corpus, answers


def idiomatic_requests(sim: Any) -> list[tuple[str, str]]:
    """(label of the idiomatic marker line, first user message) of every idiomatic function-level request."""
    found = []
    for request in sim.chat_requests:
        first = next(m["content"] for m in request.body["messages"] if m["role"] == "user")
        for line in first.splitlines():
            if line.startswith(MARKER):
                found.append((line[len(MARKER):], first))
    return found


def test_a_function_level_program_is_made_safe_unit_by_unit(
    cli: Cli, simulator_factory: Any, tmp_path: Path
) -> None:
    """--granularity function: after the unidiomatic groups, one idiomatic prompt per unit bottom-up, each with
    only its own unidiomatic body; the safe program has no `unsafe`, verifies, and is written with SACToR's
    per-item layout; the summary counts the idiomatic stage's requests."""
    corpus, answers = corpus_with_idiomatic_answers(tmp_path / "data")
    sim, url = simulator_factory(answers_dir=answers)
    out = tmp_path / "out"
    result = run(cli, corpus, out, url, "--granularity", "function")
    assert result.returncode == 0, result.output

    asked = idiomatic_requests(sim)
    assert [label for label, _ in asked] == UNITS
    for label, prompt in asked:
        shown = {name for name, body in BODIES.items() if body in prompt}
        assert shown == set(label.split("+")), (label, shown)
    task = summary(out)["tasks"][0]
    assert task["status"] == "verified" and task["granularity"] == "function"
    assert task["stages"]["idiomatic"]["status"] == "verified"
    assert task["stages"]["idiomatic"]["requests"] == 4

    stage_dir = out / "numbers" / "translated_code_idiomatic"
    combined = (stage_dir / "combined.rs").read_text()
    assert first_unsafe_line(combined) is None and "mod unidiomatic" not in combined
    for name in ("push", "sum", "is_even", "is_odd", "main"):
        assert first_unsafe_line((stage_dir / "functions" / f"{name}.rs").read_text()) is None, name
    assert "Option<Box<Node>>" in (stage_dir / "structs" / "Node.rs").read_text()
    stats = json.loads((out / "numbers" / "llm_stat_idiomatic.json").read_text())
    assert stats["total_queries"] == 4 and set(stats["items"]) == set(UNITS)


def test_a_unit_that_cannot_be_made_safe_fails_with_a_reason_per_item_and_a_rerun_asks_only_for_it(
    cli: Cli, simulator_factory: Any, tmp_path: Path
) -> None:
    """The model keeps answering sum with `unsafe`: the idiomatic stage fails naming sum, main is blocked by it,
    the safe units' files are kept; the rerun with a model that gets sum right asks only for sum and main."""
    corpus, answers = corpus_with_idiomatic_answers(tmp_path / "first", {"sum-1.md": SUM_UNSAFE})
    sim, url = simulator_factory(answers_dir=answers)
    out = tmp_path / "out"
    first = run(cli, corpus, out, url, "--granularity", "function", "--max-attempts", "2")
    assert first.returncode == 1, first.output
    assert [label for label, _ in idiomatic_requests(sim)] == ["push", "sum", "sum", "is_even+is_odd"]
    task = summary(out)["tasks"][0]
    assert task["stages"]["unidiomatic"]["status"] == "verified"
    assert task["stages"]["idiomatic"]["status"] == "failed"
    assert "sum: not made safe after 2 attempts" in task["stages"]["idiomatic"]["reason"]
    failure = json.loads((out / "numbers" / "idiomatic_failure_info.json").read_text())
    assert "`sum` is not safe Rust (`unsafe` on line" in failure["items"]["function:sum"]["reason"]
    assert failure["items"]["function:main"] == {"status": "blocked_by_failed_dependency", "attempts": 0,
                                                 "reason": "calls sum, which could not be made safe",
                                                 "blocked_by": "sum"}
    stage_dir = out / "numbers" / "translated_code_idiomatic"
    assert not (stage_dir / "combined.rs").exists()
    assert (stage_dir / "functions" / "push.rs").is_file() and not (stage_dir / "functions" / "sum.rs").exists()

    _, fixed = corpus_with_idiomatic_answers(tmp_path / "second")
    sim2, url2 = simulator_factory(answers_dir=fixed)
    second = run(cli, corpus, out, url2, "--granularity", "function", "--max-attempts", "2", "--retry-failed")
    assert second.returncode == 0, second.output
    assert [label for label, _ in idiomatic_requests(sim2)] == ["sum", "main"]
    assert len(sim2.chat_requests) == 2  # no unidiomatic request: every group is resumed from items.json
    assert first_unsafe_line((stage_dir / "combined.rs").read_text()) is None
