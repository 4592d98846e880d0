"""Tests that prove nothing never make a stage "verified": they fail the task before a request is spent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import Cli, Corpus, answer


def _run(cli: Cli, corpus: Corpus, out: Path, url: str, *extra: str) -> Any:
    return cli("--c-files", corpus.corpus, "--json-files", corpus.corpus, "--output", out, "--base-url", url,
               "--model", "sim-model", "--workers", "2", *extra)


def _prompted(sim: Any, names: list[str]) -> set[str]:
    """The tasks whose C source (Corpus.add_task marks it with a /* NAME */ comment) reached the server."""
    texts = ["\n".join(m["content"] for m in request.body["messages"]) for request in sim.chat_requests]
    return {name for name in names if any(f"/* {name} */" in text for text in texts)}


def test_vacuous_tests_fail_the_task_without_a_request(cli: Cli, corpus: Corpus, simulator_factory: Any,
                                                        tmp_path: Path) -> None:
    """Only empty expected outputs, no %t, or a command any program passes: the task fails, nothing asked."""
    corpus.add_task("sound")
    corpus.add_task("selfcheck", tests=[{"command": ["%t", "5"]}, {"command": "%t 6"}])
    corpus.add_task("nooutput")
    (corpus.corpus / "nooutput_samples.json").write_text(json.dumps([{"input": "1", "output": ""},
                                                                     {"input": "2", "output": ""}]))
    quiet = [answer("fn main() {}\n")]
    quiet_tests: list[dict[str, object]] = [
        {"command": "%t 1"}, {"command": "sactor run-tests --type bin ./quiet_samples.json %t 0 --feed-as-stdin"},
    ]
    corpus.add_task("quiet", unidiomatic=quiet, idiomatic=quiet, tests=quiet_tests)
    (corpus.corpus / "quiet_samples.json").write_text(json.dumps([{"input": "1", "output": ""}]))
    corpus.add_task("notarget", tests=[{"command": "%t 1"}, {"command": "echo hello"}])
    corpus.add_task("anyprogram", tests=[{"command": ["sh", "-c", "exit 0", "%t"]}])
    sim, url = simulator_factory(answers_dir=corpus.answers)
    out = tmp_path / "out"

    result = _run(cli, corpus, out, url)

    assert result.returncode == 1, result.output
    summary = json.loads((out / "batch_summary.json").read_text())
    tasks = {t["task_id"]: t for t in summary["tasks"]}
    assert tasks["sound"]["status"] == "verified"
    assert tasks["selfcheck"]["status"] == "verified"
    reasons = {name: tasks[name]["reason"] for name in ("nooutput", "notarget", "anyprogram")}
    assert tasks["quiet"]["status"] == "verified"  # an empty-output sample beside a test that exercises it
    assert reasons["nooutput"].startswith("test 0 does not exercise the program: its expected output is empty")
    assert "test 1 does not exercise the program" in reasons["nooutput"]
    assert reasons["notarget"].startswith("test 1 does not exercise the program: the command never runs")
    assert reasons["anyprogram"].startswith("test 0 does not exercise the program: it passes for a program that")
    for name in reasons:
        assert tasks[name]["status"] == "failed"
        assert tasks[name]["failure_kind"] == "vacuous_tests"
        assert tasks[name]["stages"]["unidiomatic"]["status"] == "not_run"
        assert not (out / name / "translated_code_unidiomatic" / "combined.rs").exists()
    assert summary["totals"]["vacuous_tests"] == 3
    assert "3 with tests that do not exercise the program" in result.stdout
    assert _prompted(sim, [*tasks]) == {"sound", "selfcheck", "quiet"}
