"""The bundled examples through the real CLI and simulator; every combined.rs written is checked again here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pipeline.build import Toolchain
from pipeline.config import SandboxSettings, ToolchainSettings
from pipeline.discovery import discover
from pipeline.sandbox import Sandbox
from pipeline.task import Task
from pipeline.testing import load_test_suite, run_test_suite
from tests.conftest import ROOT, Cli

EXAMPLES = ROOT / "examples" / "corpus"
ANSWERS = ROOT / "examples" / "answers"


@pytest.fixture(scope="module")
def examples_run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> tuple[Path, Any]:
    """One batch run over examples/corpus against the simulator serving examples/answers."""
    from pipeline.simulator import SimConfig, Simulator

    out = tmp_path_factory.mktemp("examples") / "out"
    cwd = tmp_path_factory.mktemp("cwd")
    sim = Simulator(SimConfig(answers_dir=ANSWERS, model="sim-model"))
    with sim.running() as url:
        result = Cli(cache_dir=cache_dir, cwd=cwd)(
            "--c-files", EXAMPLES, "--json-files", EXAMPLES, "--output", out, "--base-url", url,
            "--model", "sim-model", "--workers", "4",
        )
    assert result.returncode == 0, result.output
    assert "batch_summary.json" in result.stdout
    return out, sim


def test_every_example_verifies_both_stages(examples_run: tuple[Path, Any]) -> None:
    """All five bundled programs end verified in both stages."""
    out, _sim = examples_run
    summary = json.loads((out / "batch_summary.json").read_text())
    assert summary["totals"]["tasks"] == 5
    for task in summary["tasks"]:
        assert task["stages"]["unidiomatic"]["status"] == "verified", task
        assert task["stages"]["idiomatic"]["status"] == "verified", task


@pytest.mark.parametrize(
    ("task", "stage", "kinds"),
    [
        pytest.param("wordfreq", "unidiomatic", ["compile_error"], id="repair-after-compile-error"),
        pytest.param("gcdlcm", "unidiomatic", ["test_failure"], id="repair-after-test-failure"),
        pytest.param("reverse", "idiomatic", ["refused"], id="unsafe-idiomatic-refused"),
        pytest.param("rpn", "unidiomatic", [], id="first-try"),
    ],
)
def test_examples_exercise_each_repair_path(
    examples_run: tuple[Path, Any], task: str, stage: str, kinds: list[str]
) -> None:
    """The canned answers take each task down the path examples/README.md promises."""
    out, _sim = examples_run
    info = json.loads((out / task / f"{stage}_failure_info.json").read_text())
    assert [a["kind"] for a in info["attempts"]] == kinds


async def test_every_combined_rs_compiles_and_passes_its_tests_again(
    examples_run: tuple[Path, Any], cache_dir: Path
) -> None:
    """Each combined.rs the tool wrote, rebuilt from the file and run against its task's tests, passes."""
    out, _sim = examples_run
    tasks = [t async for t in discover(EXAMPLES, EXAMPLES) if isinstance(t, Task)]
    toolchain = await Toolchain.prepare(ToolchainSettings(cache_dir=str(cache_dir), clippy=False))
    checked = 0
    async with Sandbox.open(SandboxSettings()) as sandbox:
        for task in tasks:
            suite = load_test_suite(task)
            for stage in ("unidiomatic", "idiomatic"):
                source = (out / task.id / f"translated_code_{stage}" / "combined.rs").read_text()
                async with sandbox.build_dir() as build_dir:
                    build = await toolchain.build(source, build_dir)
                    assert build.ok and build.binary is not None, build.diagnostics
                    limits = sandbox.limits(wall_seconds=20, output_bytes=40_000)
                    verdict = await run_test_suite(build.binary, suite, sandbox=sandbox, limits=limits)
                assert verdict.passed, verdict.feedback()
                checked += 1
    assert checked == 10


def test_clippy_and_llm_statistics_are_written(examples_run: tuple[Path, Any]) -> None:
    """clippy_stat.json counts lints and the unsafe share; llm_stat has SACToR's keys with real token counts."""
    out, _sim = examples_run
    clippy = json.loads((out / "rpn" / "translated_code_unidiomatic" / "clippy_stat.json").read_text())
    assert "unsafe_fraction" in clippy and "lints" in clippy
    idiomatic = json.loads((out / "rpn" / "translated_code_idiomatic" / "clippy_stat.json").read_text())
    assert idiomatic["unsafe_fraction"] == 0
    stat = json.loads((out / "wordfreq" / "llm_stat_unidiomatic.json").read_text())
    assert stat["total_queries"] == 2
    assert len(stat["costed_input_tokens"]) == 2 and all(t > 0 for t in stat["costed_output_tokens"])


def test_demo_script_runs_the_examples_end_to_end(tmp_path: Path, cache_dir: Path) -> None:
    """`scripts/demo.py` (the README's first command) starts the simulator, translates, and says where."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py"), "--output", str(tmp_path / "demo"), "--",
         "--cache-dir", str(cache_dir)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"results in {tmp_path / 'demo'}" in proc.stdout
    assert len(list((tmp_path / "demo").glob("*/translated_code_idiomatic/combined.rs"))) == 5
