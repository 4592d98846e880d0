"""A task's files through the real CLI, as the engine reads and writes them in one worker-thread trip each (#16):
what a new result folder holds, what the ledger says, and what a rerun redoes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import Cli
from tests.test_batch_e2e import directive_c, flat_corpus, requested_ids, run
from tests.test_inputs_e2e import STAGE_FILES


def _files(folder: Path) -> set[str]:
    """Every file under ``folder`` (hidden ones too), relative to it."""
    return {str(path.relative_to(folder)) for path in folder.rglob("*") if not path.is_dir()}


def _ledger(out: Path) -> dict[str, dict[str, Any]]:
    return {record["task_id"]: record for record in map(json.loads, (out / "ledger.jsonl").read_text().splitlines())}


def test_a_new_result_folder_holds_the_results_and_nothing_else_and_the_ledger_agrees(
    cli: Cli, simulator_factory: Any, tmp_path: Path
) -> None:
    """A task that verified at its second attempt: its new folder holds SACToR's files, its failed attempt's code,
    the transcript and result.json, and no temporary file; the ledger records it verified with its input hash."""
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    flat_corpus(corpus, 2)
    (corpus / "prog000.c").write_text(directive_c("prog000", "out prog000", unidiomatic=("compile_error", "pass")))
    _sim, url = simulator_factory()
    first = run(cli, corpus, out, url)
    assert first.returncode == 0, first.output
    assert _files(out / "prog000") == {*STAGE_FILES["unidiomatic"], *STAGE_FILES["idiomatic"],
                                       "attempts/unidiomatic-1.rs", "transcript.jsonl", "result.json"}
    for name in ("result.json", "llm_stat_unidiomatic.json", "unidiomatic_failure_info.json",
                 "translated_code_idiomatic/clippy_stat.json"):
        text = (out / "prog000" / name).read_text()
        assert text == json.dumps(json.loads(text), indent=2) + "\n", name  # the layout users' scripts read
    result = json.loads((out / "prog000" / "result.json").read_text())
    assert result["status"] == "verified" and result["stages"]["unidiomatic"]["attempts"] == 2
    transcript = [json.loads(line) for line in (out / "prog000" / "transcript.jsonl").read_text().splitlines()]
    verdicts = [event["kind"] for event in transcript if event["event"] == "verdict"]
    assert verdicts == ["compile_error", "verified", "verified"]
    assert "fn main" in (out / "prog000" / "attempts" / "unidiomatic-1.rs").read_text()
    ledger = _ledger(out)
    assert {task: record["status"] for task, record in ledger.items()} == {"prog000": "verified",
                                                                          "prog001": "verified"}
    assert ledger["prog000"]["input_hash"] == result["input_hash"]
    assert not (out / "ledger.journal.jsonl").exists()


def test_a_rerun_redoes_only_the_changed_task_and_a_broken_input_fails_it_with_the_file_named(
    cli: Cli, simulator_factory: Any, tmp_path: Path
) -> None:
    """Rerun: an unchanged finished task is neither asked for nor rewritten; a task whose test file
    became broken JSON fails with a reason naming the file, and the ledger and batch_summary.json say so."""
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    flat_corpus(corpus, 2)
    sim, url = simulator_factory()
    assert run(cli, corpus, out, url).returncode == 0
    kept = (out / "prog000" / "result.json").stat().st_mtime_ns
    sim.reset_log()
    (corpus / "prog001.json").write_text('[{"command": "sactor run-tests --type bin"')
    again = run(cli, corpus, out, url)
    assert again.returncode == 1, again.output
    assert "tasks: 2 (1 verified, 1 failed, 1 unchanged from earlier runs)" in again.stdout
    assert requested_ids(sim) == set()
    assert (out / "prog000" / "result.json").stat().st_mtime_ns == kept
    result = json.loads((out / "prog001" / "result.json").read_text())
    assert result["failure_kind"] == "input_error"
    assert result["reason"] == f"{corpus / 'prog001.json'}: invalid JSON at line 1, column 43: Expecting ',' delimiter"
    assert _ledger(out)["prog001"]["status"] == "failed"
    summary = json.loads((out / "batch_summary.json").read_text())
    assert summary["totals"]["input_errors"] == 1
    assert not any(name.endswith(".tmp") for name in _files(out / "prog001"))
