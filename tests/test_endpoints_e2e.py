"""Several model servers through the real CLI: simulators as separate processes, one killed mid-run."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import ROOT, Cli
from tests.test_batch_e2e import flat_corpus, summary

FAST = """
[pipeline]
retry_attempts = 8
retry_max_wait = 0.2
retry_deadline = 30
outage_budget = {budget}
request_timeout = 20
"""


@dataclass
class SimProcess:
    """`python -m pipeline.simulator` in its own session, logging one JSON line per request."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def chat_requests(self) -> int:
        if not self.log.exists():
            return 0
        return sum('"/v1/chat/completions"' in line for line in self.log.read_text().splitlines())

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@contextlib.contextmanager
def simulators(tmp_path: Path, count: int, *args: str) -> Iterator[list[SimProcess]]:
    """``count`` simulator processes on 127.0.0.1 (free ports), each killed by its pid at the end."""
    sims: list[SimProcess] = []
    try:
        for number in range(count):
            log = tmp_path / f"sim{number}-{time.monotonic_ns()}.jsonl"
            proc = subprocess.Popen([sys.executable, "-m", "pipeline.simulator", "--port", "0", "--log", str(log),
                                     *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                    start_new_session=True)
            sims.append(SimProcess(proc, "", log))
            assert proc.stdout is not None
            line = proc.stdout.readline().decode()
            match = re.fullmatch(r"listening on (http://127\.0\.0\.1:\d+/v1)\n", line)
            assert match, line
            sims[-1].url = match.group(1)
        yield sims
    finally:
        for sim in sims:
            sim.kill()


def free_port_url() -> str:
    """The URL of a port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def start_run(cli: Cli, corpus: Path, out: Path, urls: list[str], *extra: str) -> subprocess.Popen[str]:
    argv = [sys.executable, str(ROOT / "batch_translate_generic.py"), "--c-files", str(corpus), "--json-files",
            str(corpus), "--output", str(out), "--model", "sim-model", "--cache-dir", str(cli.cache_dir),
            *[a for url in urls for a in ("--base-url", url)], *extra]
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_")}
    return subprocess.Popen(argv, cwd=cli.cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until(condition: Any, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, "the run ended before the condition held"
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.05)


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("the run did not finish") from None


def prepare(cli: Cli, tmp_path: Path, tasks: int, budget: float) -> tuple[Path, Path, list[str]]:
    """A flat corpus of ``tasks`` tasks and a settings file with quick retries and ``budget`` as outage budget."""
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    (cli.cwd / "sactor.toml").write_text(FAST.format(budget=budget))
    return corpus, out, flat_corpus(corpus, tasks)


def verified(out: Path) -> set[str]:
    return {t["task_id"] for t in summary(out)["tasks"] if t["status"] == "verified"}


def test_a_server_killed_mid_run_its_requests_go_to_the_other_and_every_task_verifies(
    cli: Cli, tmp_path: Path
) -> None:
    """Two servers, one SIGKILLed while busy: exit 0, every task verified, both served requests."""
    corpus, out, names = prepare(cli, tmp_path, 16, 30)
    with simulators(tmp_path, 2, "--latency", "0.3", "--capacity", "2") as (a, b):
        proc = start_run(cli, corpus, out, [a.url, b.url], "--workers", "4")
        wait_until(lambda: b.chat_requests() >= 4, proc)
        b.kill()
        stdout, stderr = finish(proc)
        served_by_a = a.chat_requests()
    assert proc.returncode == 0, stderr
    assert verified(out) == set(names)
    assert b.chat_requests() >= 4 and served_by_a > b.chat_requests()
    assert "taken out of service" in stderr
    stages = [stage for task in summary(out)["tasks"] for stage in task["stages"].values()]
    assert {stage["attempts"] for stage in stages} == {1}  # a request sent elsewhere spends no attempt
    assert sum(stage["requests"] for stage in stages) > len(stages)  # ... though some were sent twice
    rows = {row["base_url"]: row for row in summary(out)["endpoints"]}
    assert rows[b.url]["taken_out"] >= 1 and rows[b.url]["out_of_service_seconds"] > 0
    assert rows[a.url]["requests"] > 0 and rows[a.url]["errors"] == 0
    assert b.url in stdout and "out of service" in stdout  # the end-of-run table has a line per server


def test_a_server_down_from_the_start_the_run_goes_on_with_the_other_and_a_warning(
    cli: Cli, tmp_path: Path
) -> None:
    """One server never up: a warning naming it, the run finishes on the other, exit 0."""
    corpus, out, names = prepare(cli, tmp_path, 4, 30)
    dead = free_port_url()
    with simulators(tmp_path, 1) as (a,):
        proc = start_run(cli, corpus, out, [dead, a.url])
        _stdout, stderr = finish(proc)
    assert proc.returncode == 0, stderr
    assert re.search(rf"WARNING .*model server {re.escape(dead)} cannot be reached .*goes on with the others",
                     stderr), stderr
    assert verified(out) == set(names)
    assert a.chat_requests() > 0
    rows = {row["base_url"]: row for row in summary(out)["endpoints"]}
    assert rows[dead]["requests"] == 0 and rows[dead]["in_service"] is False


def test_every_server_down_exits_3_and_a_rerun_with_them_up_resumes(cli: Cli, tmp_path: Path) -> None:
    """Both servers killed mid-run: exit 3 after the outage budget naming each; the rerun redoes no finished task."""
    corpus, out, names = prepare(cli, tmp_path, 16, 2)
    with simulators(tmp_path, 2, "--latency", "0.3", "--capacity", "1") as (a, b):
        proc = start_run(cli, corpus, out, [a.url, b.url], "--workers", "2")
        wait_until(lambda: (out / "ledger.jsonl").exists() or any(out.glob("*/result.json")), proc)
        wait_until(lambda: len(list(out.glob("*/result.json"))) >= 2, proc)
        a.kill()
        b.kill()
        _stdout, stderr = finish(proc)
    assert proc.returncode == 3, stderr
    assert "none of the 2 model servers has answered for the outage budget" in stderr
    assert a.url in stderr and b.url in stderr
    done = {p.parent.name for p in out.glob("*/result.json")}
    assert 2 <= len(done) < len(names)
    with simulators(tmp_path, 2) as (c, d):
        result = cli("--c-files", corpus, "--json-files", corpus, "--output", out, "--model", "sim-model",
                     "--base-url", c.url, "--base-url", d.url)
        asked = {name for sim in (c, d) if sim.log.exists() for line in sim.log.read_text().splitlines()
                 if '"/v1/chat/completions"' in line for name in re.findall(r"prog\d{3}", json.dumps(json.loads(line)))}
    assert result.returncode == 0, result.output
    assert verified(out) == set(names)
    assert summary(out)["this_run"]["skipped_unchanged"] == len(done)
    assert asked and not asked & done  # the rerun asked only for the tasks the stopped run had not finished


def test_servers_serving_different_models_are_refused(cli: Cli, tmp_path: Path) -> None:
    """A server that does not serve the run's model stops the run before any task, naming it (exit 3)."""
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    flat_corpus(corpus, 1)
    with simulators(tmp_path, 1) as (a,), simulators(tmp_path, 1, "--model", "other-model") as (b,):
        proc = start_run(cli, corpus, out, [a.url, b.url])
        _stdout, stderr = finish(proc)
    assert proc.returncode == 3, stderr
    assert f"model server 2 of 2 ({b.url})" in stderr and "serves: other-model" in stderr
    assert "every server of a run must serve the same model" in stderr
    assert a.chat_requests() == 0


def test_check_reports_every_server(cli: Cli, tmp_path: Path) -> None:
    """`check` with two servers, one down: a report for each, exit 1."""
    dead = free_port_url()
    with simulators(tmp_path, 1) as (a,):
        result = cli("check", "--model", "sim-model", env={"VLLM_BASE_URL": f"{a.url},{dead}"})
    assert result.returncode == 1, result.output
    assert "2 model servers: 1 OK, 1 FAILED" in result.stdout
    assert f"server:         {a.url}" in result.stdout and f"server:         {dead}" in result.stdout
    assert result.stdout.count("model server check: OK") == 1
    assert "connection refused" in result.stdout
