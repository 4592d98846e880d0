"""The command line as a user meets it: `check`, configuration mistakes, job files, usage errors."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli, Corpus


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_check_passes_against_the_simulator(cli: Cli, simulator_factory: Any) -> None:
    """`check` lists the model with its context length, sends one request and exits 0."""
    sim, url = simulator_factory(max_model_len=4096)
    result = cli("check", "--base-url", url, "--model", "sim-model", "--api-key", "sk-check-secret")
    assert result.returncode == 0, result.output
    assert "sim-model" in result.stdout and "4096" in result.stdout
    assert len(sim.chat_requests) == 1
    assert "sk-check-secret" not in result.output


def test_check_fails_readably_against_a_closed_port(cli: Cli) -> None:
    """A closed port gives a one-line reason, not a traceback, and exit 1."""
    result = cli("check", "--base-url", f"http://127.0.0.1:{closed_port()}/v1", "--model", "m", timeout=60)
    assert result.returncode == 1
    assert "connection refused" in result.output.lower()
    assert "Traceback" not in result.output


def test_check_names_the_served_models_when_the_model_is_wrong(cli: Cli, simulator_factory: Any) -> None:
    """A model the server does not serve is named, with what it does serve."""
    _sim, url = simulator_factory()
    result = cli("check", "--base-url", url, "--model", "no-such-model")
    assert result.returncode == 1
    assert "no-such-model" in result.output and "sim-model" in result.output


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        pytest.param('[VLLM]\nbase_url = "http://localhost:8000"\n', "must end with /v1", id="no-v1"),
        pytest.param('[pipeline]\nworkerz = 4\n', "Did you mean 'workers'", id="typo"),
        pytest.param('[general]\nmax_translation_attempts = 0\n', "must be greater than zero", id="zero"),
    ],
)
def test_bad_config_file_stops_a_run_with_exit_2(cli: Cli, corpus: Corpus, toml: str, message: str) -> None:
    """Configuration mistakes are reported once at start-up, naming the file; nothing runs."""
    corpus.add_task("t")
    (cli.cwd / "sactor.toml").write_text(toml)
    result = cli("--c-files", corpus.corpus, "--json-files", corpus.corpus, "--output", cli.cwd / "out")
    assert result.returncode == 2, result.output
    assert message in result.stderr and "sactor.toml" in result.stderr
    assert "Traceback" not in result.output


def test_missing_config_file_is_an_error(cli: Cli, corpus: Corpus) -> None:
    """--config naming a file that does not exist exits 2."""
    corpus.add_task("t")
    result = cli("--config", cli.cwd / "absent.toml", "--c-files", corpus.corpus, "--json-files", corpus.corpus,
                 "--output", cli.cwd / "out")
    assert result.returncode == 2
    assert "absent.toml: configuration file not found" in result.stderr


def test_missing_input_directory_is_a_usage_error(cli: Cli, tmp_path: Path) -> None:
    """A --c-files that is not a directory exits 2 with the flag named."""
    result = cli("--c-files", tmp_path / "nope", "--json-files", tmp_path, "--output", tmp_path / "out")
    assert result.returncode == 2
    assert "--c-files" in result.stderr


def test_job_file_runs_a_corpus_with_paths_relative_to_it(
    cli: Cli, corpus: Corpus, simulator_factory: Any, tmp_path: Path
) -> None:
    """`--job jobs/x.toml` reads corpus, output and server from the file; flags still override."""
    corpus.add_task("jobbed")
    _sim, url = simulator_factory(answers_dir=corpus.answers)
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "nightly.toml").write_text(
        f'[job]\nc_files = "../data/corpus"\njson_files = "../data/corpus"\noutput = "../job-out"\n'
        f'base_url = "{url}"\nmodel = "wrong-model"\nworkers = 2\n'
    )
    result = cli("--job", jobs / "nightly.toml", "--model", "sim-model")
    assert result.returncode == 0, result.output
    summary = json.loads((tmp_path / "job-out" / "batch_summary.json").read_text())
    assert [t["task_id"] for t in summary["tasks"]] == ["jobbed"]
    assert summary["config"]["client"]["workers"] == 2
    assert "api_key" not in json.dumps(summary["config"])


@pytest.mark.parametrize("key_flag", [
    pytest.param(None, id="VLLM_API_KEY"), pytest.param("--api-key", id="flag"), pytest.param("--api-key=", id="flag="),
])
def test_summary_holds_settings_without_secrets(
    cli: Cli, corpus: Corpus, simulator_factory: Any, tmp_path: Path, key_flag: str | None
) -> None:
    """batch_summary.json records model, server and limits; the API key is in no file of the output directory."""
    corpus.add_task("t1")
    _sim, url = simulator_factory(answers_dir=corpus.answers)
    out = tmp_path / "out"
    key = "sk-very-secret-key"
    how: dict[str, Any] = {"env": {"VLLM_API_KEY": key}}
    if key_flag == "--api-key":
        how = {"env": {}}
        extra = ["--api-key", key]
    elif key_flag == "--api-key=":
        how = {"env": {}}
        extra = [f"--api-key={key}"]
    else:
        extra = []
    result = cli("--c-files", corpus.corpus, "--json-files", corpus.corpus, "--output", out, "--base-url", url,
                 "--model", "sim-model", *extra, **how)
    assert result.returncode == 0, result.output
    text = (out / "batch_summary.json").read_text()
    summary = json.loads(text)
    assert summary["server"]["model"] == "sim-model"
    assert summary["config"]["translation"]["max_attempts"] == 6
    assert "sk-very-secret-key" not in text
    assert "sk-very-secret-key" not in result.output
    for path in out.rglob("*"):
        if path.is_file():
            assert "sk-very-secret-key" not in path.read_text(errors="replace"), path
