"""Bad usage through the CLI: exit 2, a message naming where the value came from, no traceback, no request."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pipeline.ledger import run_lock
from tests.conftest import ROOT, Cli, Corpus


def _run(cli: Cli, corpus: Corpus, url: str, *extra: str | Path, env: dict[str, str] | None = None) -> Any:
    return cli("--c-files", corpus.corpus, "--json-files", corpus.corpus, "--base-url", url, "--model", "sim-model",
               *extra, env=env, timeout=60)


def _refused(result: Any, sim: Any, *fragments: str) -> None:
    assert result.returncode == 2, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.stderr, fragment
    assert sim.requests == []


# (case id, extra flags, environment, sactor.toml text, job [job] lines, message fragments)
BAD_VALUES = [
    pytest.param(["--test-timeout", "nan"], {}, None, None, ["--test-timeout nan must be a finite number"],
                 id="flag-nan"),
    pytest.param(["--request-timeout", "inf"], {}, None, None, ["--request-timeout inf must be a finite number"],
                 id="flag-inf"),
    pytest.param(["--workers", "0"], {}, None, None, ["--workers 0 must be greater than zero"], id="flag-zero"),
    pytest.param(["--max-tokens", "-5"], {}, None, None, ["--max-tokens -5 must be greater than zero"],
                 id="flag-negative"),
    pytest.param(["--workers", "many"], {}, None, None, ["--workers 'many' is not a whole number"],
                 id="flag-not-a-number"),
    pytest.param(["--num-tests", "0"], {}, None, None, ["--num-tests 0 must be greater than zero"],
                 id="flag-num-tests-zero"),
    pytest.param(["--progress-interval", "nan"], {}, None, None,
                 ["--progress-interval: nan must be a finite number of seconds"], id="flag-cli-only-nan"),
    pytest.param([], {"VLLM_TEMPERATURE": "nan"}, None, None,
                 ["environment variable VLLM_TEMPERATURE=nan must be a finite number"], id="env-nan"),
    pytest.param([], {"VLLM_MAX_TOKENS": "0"}, None, None,
                 ["environment variable VLLM_MAX_TOKENS=0 must be greater than zero"], id="env-zero"),
    pytest.param([], {}, "[general]\ntimeout_seconds = nan\n", None,
                 ["sactor.toml: [general] timeout_seconds = nan must be a finite number"], id="file-nan"),
    pytest.param([], {}, "[pipeline]\noutage_budget = inf\n", None,
                 ["sactor.toml: [pipeline] outage_budget = inf must be a finite number"], id="file-inf"),
    pytest.param([], {}, "[sandbox]\nmemory_mb = -1\n", None,
                 ["sactor.toml: [sandbox] memory_mb = -1 must be greater than zero"], id="file-negative"),
    pytest.param([], {}, "[general]\nnum_tests = 0\n", None,
                 ["sactor.toml: [general] num_tests = 0 must be greater than zero"], id="file-zero"),
    pytest.param([], {}, None, ["workers = 0"], ["nightly.toml: [job] workers = 0 must be greater than zero"],
                 id="job-zero"),
    pytest.param([], {}, None, ["test_timeout = nan"], ["nightly.toml: [job] test_timeout = nan must be a finite"],
                 id="job-nan"),
    pytest.param([], {}, None, ['workers = "8"'], ["nightly.toml: [job] workers must be a whole number, not str"],
                 id="job-type"),
    pytest.param([], {}, None, ["temperature = true"], ["nightly.toml: [job] temperature must be a number"],
                 id="job-bool-for-number"),
    pytest.param([], {}, None, ["retry_failed = \"yes\""], ["nightly.toml: [job] retry_failed must be true or false"],
                 id="job-switch-type"),
    pytest.param([], {}, None, ["output = 5"], ["nightly.toml: [job] output must be a path"], id="job-path-type"),
]


@pytest.mark.parametrize(("flags", "env", "toml", "job", "fragments"), BAD_VALUES)
def test_bad_values_are_refused_naming_their_source(
    cli: Cli, corpus: Corpus, simulator_factory: Any, tmp_path: Path,
    flags: list[str], env: dict[str, str], toml: str | None, job: list[str] | None, fragments: list[str],
) -> None:
    """NaN, infinity, zero, negative and mistyped values, from flag, variable, file or job file: exit 2."""
    corpus.add_task("t")
    sim, url = simulator_factory(answers_dir=corpus.answers)
    if toml is not None:
        (cli.cwd / "sactor.toml").write_text(toml)
    extra: list[str | Path] = [*flags]
    if job is not None:
        path = tmp_path / "nightly.toml"
        path.write_text("[job]\n" + "\n".join(job) + "\n")
        extra += ["--job", path]
    if not any("output" in line for line in job or []):
        extra += ["--output", tmp_path / "out"]
    _refused(_run(cli, corpus, url, *extra, env=env), sim, *fragments)


def test_non_utf8_settings_file_is_refused(cli: Cli, corpus: Corpus, simulator_factory: Any, tmp_path: Path) -> None:
    """A sactor.toml saved in Latin-1 is named with the line of the bad byte and the fix."""
    corpus.add_task("t")
    sim, url = simulator_factory(answers_dir=corpus.answers)
    (cli.cwd / "sactor.toml").write_bytes(b'[general]\nsystem_message = "Gr\xfc\xdfe"\n')
    _refused(_run(cli, corpus, url, "--output", tmp_path / "out"), sim,
             "sactor.toml: not UTF-8 text (byte 0xfc on line 2): save the configuration file as UTF-8")


@pytest.mark.parametrize("shape", ["file", "under-file"])
def test_output_that_cannot_be_a_directory_is_refused(
    cli: Cli, corpus: Corpus, simulator_factory: Any, tmp_path: Path, shape: str
) -> None:
    """--output naming a file, or a path under a file, exits 2 before anything starts."""
    corpus.add_task("t")
    sim, url = simulator_factory(answers_dir=corpus.answers)
    blocker = tmp_path / "results.txt"
    blocker.write_text("not a directory")
    output = blocker if shape == "file" else blocker / "sub" / "out"
    expected = "is a file, not a directory" if shape == "file" else f"{blocker} is a file, so no directory"
    _refused(_run(cli, corpus, url, "--output", output), sim, f"--output {output}", expected)
    assert blocker.read_text() == "not a directory"


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")
def test_read_only_output_is_refused(cli: Cli, corpus: Corpus, simulator_factory: Any, tmp_path: Path) -> None:
    """--output on a read-only file system (a read-only bind mount) exits 2 naming the flag and the reason."""
    corpus.add_task("t")
    sim, url = simulator_factory(answers_dir=corpus.answers)
    ro = tmp_path / "ro"
    ro.mkdir()
    wrapper = tmp_path / "ro-run.sh"
    wrapper.write_text(f'#!/bin/sh\nmount --bind {ro} {ro} && mount -o remount,bind,ro {ro} && exec "$@"\n')
    wrapper.chmod(0o755)
    argv = ["unshare", "-m", str(wrapper), sys.executable, str(ROOT / "batch_translate_generic.py"),
            "--c-files", str(corpus.corpus), "--json-files", str(corpus.corpus), "--base-url", url, "--model",
            "sim-model", "--output", str(ro / "out"), "--cache-dir", str(cli.cache_dir)]
    proc = subprocess.run(argv, cwd=cli.cwd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"--output {ro / 'out'}" in proc.stderr and "Read-only file system" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sim.requests == []


@pytest.mark.parametrize("case", ["file", "held-by-a-batch"])
def test_translate_result_dir_that_cannot_be_used_is_refused_before_any_request(
    cli: Cli, corpus: Corpus, simulator_factory: Any, tmp_path: Path, case: str
) -> None:
    """`translate -r` naming a file, or a directory a batch holds (named by its pid): exit 2, no request."""
    corpus.add_task("t")
    sim, url = simulator_factory(answers_dir=corpus.answers)
    target = tmp_path / ("result.txt" if case == "file" else "batch-out")
    if case == "file":
        target.write_text("x")
    with run_lock(tmp_path / "batch-out"):
        result = cli("translate", corpus.corpus / "t.c", corpus.corpus / "t.json", "-r", target, "--base-url",
                     url, "--model", "sim-model")
    if case == "file":
        _refused(result, sim, f"-r/--result-dir {target} is a file")
    else:
        _refused(result, sim, f"pid {os.getpid()}", "-r/--result-dir")
        assert sorted(p.name for p in target.iterdir()) == [".run.lock"]
