"""The command line as a user meets it: `check`, configuration mistakes, job files, usage errors."""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli, Corpus
from tests.test_batch_e2e import _start_run, _wait_for


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


# A settings file in the shape of SACToR's sactor.default.toml (every section and key it has had), pointed at
# our server with llm = "VLLM". Written for these tests; the values are ours.
SACTOR_SHAPED = """
[general]
llm = "VLLM"
max_translation_attempts = 3
max_verifier_harness_attempts = 2
unidiomatic_fallback_c2rust = false
unidiomatic_fallback_c2rust_fix_attempts = 2
timeout_seconds = 30
command_output_byte_limit = 20000
const_global_max_translation_len = 1000
max_llm_input_tokens = 9000
system_message = '''
You translate C to Rust.
'''
encoding = "cl100k_base"
model = "some-router-model"

[test_generator]
max_attempts = 2
timeout_seconds = 30

[test_runner]
timeout_seconds = 30

[verifier]
[verifier.selftest]
enabled = false
samples_path = ""
struct_spec_path = ""

[logging]
console_level = "INFO"
file_level = "INFO"
color = false
jsonl = false
prompt_trace = false
filename_pattern = "run-{timestamp}.log"
timestamp_format = "%Y%m%d"
subdir = "logs"

[OpenAI]
api_key = "not-a-real-key"
model = "gpt-x"
max_tokens = 1000
base_url = "https://example.invalid/v1"

[AzureOpenAI]
api_key = "not-a-real-key"
endpoint = "https://example.invalid/"
api_version = "2024-01-01"
model = "gpt-x"
max_tokens = 1000

[DeepSeek]
base_url = "https://example.invalid"
api_key = "not-a-real-key"
model = "ds"

[Anthropic]
api_key = "not-a-real-key"
model = "claude-x"
max_tokens = 1000

[Google]
api_key = "not-a-real-key"
model = "gemini-x"

[Ollama]
host = "http://127.0.0.1:11434"
model = "llama-x"
max_tokens = 1000
[Ollama.headers]
Authorization = "Bearer nothing"

[litellm]
[litellm.router_settings]
routing_strategy = "simple-shuffle"
num_retries = 1
timeout = 60

[[litellm.model_list]]
model_name = "some-router-model"
[litellm.model_list.litellm_params]
model = "openai/gpt-x"
api_key = "os.environ/OPENAI_API_KEY"

[[litellm.model_list]]
model_name = "local"
[litellm.model_list.litellm_params]
model = "ollama/llama-x"
api_base = "http://localhost:11434"

[VLLM]
base_url = "{url}"
model = "sim-model"
max_tokens = 2048
temperature = 0.0
"""


def test_sactor_settings_file_runs_and_lists_what_it_ignores(
    cli: Cli, corpus: Corpus, simulator_factory: Any, tmp_path: Path
) -> None:
    """A SACToR-shaped sactor.toml with llm = "VLLM" runs; keys we do not use are listed once as ignored."""
    corpus.add_task("t")
    _sim, url = simulator_factory(answers_dir=corpus.answers)
    (cli.cwd / "sactor.toml").write_text(SACTOR_SHAPED.replace("{url}", url))
    out = tmp_path / "out"
    result = cli("--c-files", corpus.corpus, "--json-files", corpus.corpus, "--output", out)
    assert result.returncode == 0, result.output
    notices = [line for line in result.stderr.splitlines() if "ignored:" in line]
    assert len(notices) == 1, result.stderr
    for name in ("[general] max_verifier_harness_attempts", "unidiomatic_fallback_c2rust_fix_attempts",
                 "encoding", "model", "[test_generator]", "[test_runner]", "[verifier]", "[logging]", "[OpenAI]",
                 "[AzureOpenAI]", "[DeepSeek]", "[Anthropic]", "[Google]", "[Ollama]", "[litellm]"):
        assert name in notices[0], name
    config = json.loads((out / "batch_summary.json").read_text())["config"]
    assert config["translation"]["max_attempts"] == 3
    assert config["translation"]["test_timeout"] == 30.0
    assert config["model"]["max_tokens"] == 2048


@pytest.mark.parametrize(
    ("section", "line", "message"),
    [
        pytest.param("[VLLM]", 'modle = "x"', "[VLLM] unknown key 'modle'. Did you mean 'model'?", id="vllm"),
        pytest.param("[general]", "max_translation_attempt = 3", "Did you mean 'max_translation_attempts'?",
                     id="general-near-miss"),
        pytest.param("", "[sandbox]\nmemory = 5", "[sandbox] unknown key 'memory'. Did you mean 'memory_mb'?",
                     id="sandbox"),
        pytest.param("", "[pipline]\nworkers = 2", "unknown section [pipline]. Did you mean 'pipeline'?",
                     id="section"),
    ],
)
def test_our_own_keys_stay_strict(cli: Cli, corpus: Corpus, section: str, line: str, message: str) -> None:
    """A typo in a key we read is still an error with a suggestion, next to SACToR's ignored keys."""
    corpus.add_task("t")
    text = SACTOR_SHAPED.replace("{url}", "http://127.0.0.1:9/v1")
    text = text.replace(f"\n{section}\n", f"\n{section}\n{line}\n", 1) if section else f"{text}\n{line}\n"
    (cli.cwd / "sactor.toml").write_text(text)
    result = cli("--c-files", corpus.corpus, "--json-files", corpus.corpus, "--output", cli.cwd / "out")
    assert result.returncode == 2, result.output
    assert message in result.stderr


def test_top_level_help_shows_the_corpus_flags_and_the_commands(cli: Cli) -> None:
    """`python batch_translate_generic.py --help`, what the original script's users type, shows its flags."""
    result = cli("--help")
    assert result.returncode == 0, result.output
    for text in ("--c-files", "--json-files", "--output", "--workers", "--num-tests", "translate", "check"):
        assert text in result.stdout, text


def test_run_lock_holds_pid_host_and_time_but_never_the_key(
    cli: Cli, corpus: Corpus, simulator_factory: Any, tmp_path: Path
) -> None:
    """The lock file of a run started with --api-key names pid and host only; a second run is refused by pid."""
    from pipeline.simulator import LoadModel

    for name in ("a", "b", "c", "d"):
        corpus.add_task(name)
    _sim, url = simulator_factory(answers_dir=corpus.answers, load=LoadModel(capacity=1, latency=0.5))
    out = tmp_path / "out"
    first = _start_run(cli, corpus.corpus, out, url, "--workers", "1", "--api-key", "sk-lock-secret-1234")
    try:
        lock = out / ".run.lock"
        _wait_for(lambda: lock.exists() and "pid" in lock.read_text())
        text = lock.read_text()
        assert "sk-lock-secret-1234" not in text and "--api-key" not in text
        assert text.startswith(f"pid {first.pid} on {socket.gethostname()} since ")
        second = cli("--c-files", corpus.corpus, "--json-files", corpus.corpus, "--output", out, "--base-url", url,
                     "--model", "sim-model", env={"VLLM_API_KEY": "sk-lock-secret-1234"}, timeout=30)
        assert second.returncode == 2, second.output
        assert f"pid {first.pid}" in second.stderr
        assert "sk-lock-secret-1234" not in second.output
    finally:
        first.send_signal(signal.SIGTERM)
        _out, err = first.communicate(timeout=60)
    assert first.returncode == 130, err
    assert "sk-lock-secret-1234" not in err


def test_credentials_in_the_server_url_are_never_shown_or_stored(
    cli: Cli, corpus: Corpus, simulator_factory: Any, tmp_path: Path
) -> None:
    """http://user:pass@host/v1 appears as http://***@host/v1 in the CLI's lines and in batch_summary.json."""
    corpus.add_task("t")
    _sim, url = simulator_factory(answers_dir=corpus.answers)
    secret_url = url.replace("http://", "http://alice:pw-s3cret-9@")
    out = tmp_path / "out"
    result = cli("--c-files", corpus.corpus, "--json-files", corpus.corpus, "--output", out, "--base-url",
                 secret_url, "--model", "sim-model", "--api-key", "sk-flag-secret-5678")
    assert result.returncode == 0, result.output
    assert "pw-s3cret-9" not in result.output and "sk-flag-secret-5678" not in result.output
    assert "--api-key puts the key on the command line" in result.stderr
    assert url.replace("http://", "http://***@") in result.stderr
    summary = (out / "batch_summary.json").read_text()
    assert "pw-s3cret-9" not in summary and "alice" not in summary
    assert json.loads(summary)["config"]["model"]["base_url"] == url.replace("http://", "http://***@")
    down = cli("check", "--base-url", f"http://alice:pw-s3cret-9@127.0.0.1:{closed_port()}/v1", "--model", "m",
               timeout=60)
    assert down.returncode == 1
    assert "pw-s3cret-9" not in down.output and "127.0.0.1" in down.output


def test_absurd_concurrency_is_capped_with_a_warning(
    cli: Cli, corpus: Corpus, simulator_factory: Any, tmp_path: Path
) -> None:
    """--workers 10000000 and --jobs 10000000 are lowered to the ceilings, said so, and the run completes."""
    corpus.add_task("t")
    _sim, url = simulator_factory(answers_dir=corpus.answers)
    out = tmp_path / "out"
    result = cli("--c-files", corpus.corpus, "--json-files", corpus.corpus, "--output", out, "--base-url", url,
                 "--model", "sim-model", "--workers", "10000000", "--jobs", "10000000", timeout=60)
    assert result.returncode == 0, result.output
    assert "--workers 10000000 is more than 1024; using 1024" in result.stderr
    assert "--jobs 10000000 is more than 256; using 256" in result.stderr
    config = json.loads((out / "batch_summary.json").read_text())["config"]
    assert (config["client"]["workers"], config["run"]["jobs"]) == (1024, 256)
