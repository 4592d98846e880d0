"""A second real vLLM, started with --api-key: the key through the CLI, then the server stopped mid-run.

The server is module-scoped and the last test stops it, so the tests here run in file order.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Cli, Corpus
from tests.test_batch_e2e import _finished, _wait_for, summary
from tests.vllm.conftest import Answers, Server, add_long_tasks, http, start_server

pytestmark = pytest.mark.timeout(400)

KEY = "sk-vllm-suite-4f1d9c2e7a"
WRONG = "sk-wrong-8b3e6a0d5c"


@pytest.fixture(scope="module")
def keyed(vllm_environment: Any, answers: Answers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server started with --api-key KEY (same model and served name as the main one)."""
    log = tmp_path_factory.mktemp("vllm-keyed") / "vllm.log"
    yield from start_server(vllm_environment, log, answers, api_key=KEY)


def every_file_text(root: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize(("method", "route"), [
    pytest.param("GET", "/v1/models", id="models"),
    pytest.param("POST", "/v1/chat/completions", id="chat"),
    pytest.param("POST", "/v1/completions", id="completions"),
])
def test_every_v1_route_wants_the_key(keyed: Server, method: str, route: str) -> None:
    """With --api-key, /v1 routes answer 401 {"error": "Unauthorized"} without the key or with a wrong one."""
    body = {"model": keyed.name, "messages": [{"role": "user", "content": "hi"}], "prompt": "hi", "max_tokens": 2}
    for headers in ({}, {"authorization": f"Bearer {WRONG}"}):
        status, answer_body = http(method, f"{keyed.root_url}{route}", body if method == "POST" else None,
                                   headers=headers)
        assert (status, answer_body) == (401, {"error": "Unauthorized"})
    status, _ = http(method, f"{keyed.root_url}{route}", body if method == "POST" else None,
                     headers={"authorization": f"Bearer {KEY}"})
    assert status == 200


def test_health_and_tokenize_stay_open(keyed: Server) -> None:
    """/health and /tokenize answer without any key."""
    assert http("GET", f"{keyed.root_url}/health")[0] == 200
    status, body = http("POST", f"{keyed.root_url}/tokenize",
                        {"model": keyed.name, "messages": [{"role": "user", "content": "hi"}]})
    assert status == 200 and body["count"] > 0


@pytest.mark.parametrize("how", [pytest.param("flag", id="flag"), pytest.param("env", id="VLLM_API_KEY")])
def test_right_key_works(cli: Cli, keyed: Server, how: str) -> None:
    """The key given by --api-key or VLLM_API_KEY passes check."""
    if how == "flag":
        result = cli("check", *keyed.args(), "--api-key", KEY)
    else:
        result = cli("check", *keyed.args(), env={"VLLM_API_KEY": KEY})
    assert result.returncode == 0, result.output
    assert "model server check: OK" in result.stdout
    assert KEY not in result.output


def test_wrong_key_is_a_clear_error_and_is_never_printed(cli: Cli, keyed: Server, corpus: Corpus) -> None:
    """A wrong key: check fails, a run exits 3 before any chat, saying which setting to fix; the key shows nowhere."""
    check = cli("check", *keyed.args(), "--api-key", WRONG)
    assert check.returncode == 1
    assert "HTTP 401" in check.stdout and "--api-key" in check.stdout
    corpus.add_task("vkey_wrong")
    out = corpus.root / "out"
    mark = keyed.mark()
    result = cli("--c-files", corpus.corpus, "--json-files", corpus.corpus, "--output", out, *keyed.args(),
                 "--api-key", WRONG)
    assert result.returncode == 3, result.output
    assert "refused the API key (HTTP 401)" in result.stderr
    assert "VLLM_API_KEY" in result.stderr
    assert keyed.seen_since(mark).chats == []
    for text in (check.output, result.output, every_file_text(out) if out.exists() else ""):
        assert WRONG not in text


def start_run(cli: Cli, corpus: Corpus, out: Path, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_")}
    argv = [sys.executable, str(ROOT / "batch_translate_generic.py"), "--c-files", str(corpus.corpus),
            "--json-files", str(corpus.corpus), "--output", str(out), "--cache-dir", str(cli.cache_dir), *args]
    return subprocess.Popen(argv, cwd=cli.cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def refuses_connections(server: Server) -> bool:
    try:
        with urllib.request.urlopen(f"{server.root_url}/health", timeout=2):
            return False
    except (urllib.error.URLError, OSError):
        return True


class RawRequest(threading.Thread):
    """A long chat request sent with the stdlib (no retries, no timeouts of ours); records what came back."""

    def __init__(self, server: Server, *, stream: bool) -> None:
        super().__init__(daemon=True)
        self.server, self.stream = server, stream
        self.events: list[tuple[float, str]] = []  # (time, data line)
        self.finish: str | None = None
        self.error: str | None = None

    def run(self) -> None:
        body = {"model": self.server.name, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4000,
                "ignore_eos": True, "stream": self.stream}
        request = urllib.request.Request(f"{self.server.base_url}/chat/completions", data=json.dumps(body).encode(),
                                         headers={"content-type": "application/json",
                                                  "authorization": f"Bearer {KEY}"})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                if not self.stream:
                    self.finish = json.loads(response.read())["choices"][0]["finish_reason"]
                    return
                for line in response:
                    if line.strip():
                        self.events.append((time.monotonic(), line.decode(errors="replace").strip()))
        except (urllib.error.URLError, OSError, ValueError) as exc:
            self.error = repr(exc)

    def finish_reasons(self) -> list[str]:
        """The finish_reason of every chunk that had one."""
        reasons = []
        for _, line in self.events:
            if line.startswith("data: {"):
                choices = json.loads(line.removeprefix("data: ")).get("choices") or [{}]
                if choices[0].get("finish_reason"):
                    reasons.append(str(choices[0]["finish_reason"]))
        return reasons



def test_server_stopped_mid_run_exits_3_and_a_rerun_resumes(
    cli: Cli, keyed: Server, vllm: Server, corpus: Corpus, answers: Answers
) -> None:
    """vLLM told to stop mid-run (SIGTERM, SIGKILL after a grace): exit 3, finished tasks kept; the rerun does the rest.

    Beside the run, a raw plain request and a raw streamed one are in flight when SIGTERM arrives: the plain one
    is answered at once, HTTP 200 with finish_reason "abort" or HTTP 500; the streamed one either stalls (no
    finish chunk, no [DONE]) or ends with finish_reason "abort", never normally (and vLLM may keep running until
    killed: seen in a standalone probe, not on every stop).
    """
    # About 4,500 tokens each (15 s or so): the next request is still in flight when the first task has finished.
    names = add_long_tasks(corpus, answers, "vstop_", 10, lines=400)
    out = corpus.root / "out"
    common = ("--no-idiomatic", "--outage-budget", "15")
    proc = start_run(cli, corpus, out, *keyed.args(), "--api-key", KEY, "--workers", "1", *common)
    plain, streamed = RawRequest(keyed, stream=False), RawRequest(keyed, stream=True)
    server = keyed.proc.proc
    assert server is not None
    try:
        _wait_for(lambda: len(_finished(out)) >= 1, timeout=240)
        assert proc.poll() is None, "the run ended before the server was stopped"
        plain.start()
        streamed.start()
        _wait_for(lambda: len(streamed.events) > 5, timeout=60)
        server.send_signal(signal.SIGTERM)  # what an operator does first
        _wait_for(lambda: refuses_connections(keyed), timeout=30)
        plain.join(timeout=30)
        time.sleep(5)
        hung = server.poll() is None
        keyed.proc.stop(grace=0)  # then SIGKILL, as vllm_env does after its grace period
        stopped = time.monotonic()
        _stdout, stderr = proc.communicate(timeout=180)
        streamed.join(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 3, stderr
    assert time.monotonic() - stopped < 120
    assert "server" in stderr and "rerun to resume" in stderr
    assert KEY not in stderr
    done = _finished(out)
    assert 1 <= len(done) < len(names)
    mark = vllm.mark()
    rerun = cli("--c-files", corpus.corpus, "--json-files", corpus.corpus, "--output", out, *vllm.args(),
                "--workers", "4", *common)
    assert rerun.returncode == 0, rerun.output
    assert sorted(task for task, _stage in vllm.seen_since(mark).answered) == sorted(set(names) - done)
    assert {t["task_id"]: t["status"] for t in summary(out)["tasks"]} == dict.fromkeys(names, "verified")
    # The raw requests: what any client meets when vLLM 0.32 is told to stop. It varies from stop to stop, so it is
    # reported, not asserted (docs/vllm-protocol.md rows 12-13): a plain request got a 200 with finish_reason
    # "abort", a 500, or nothing until the kill; a stream stalled, ended with "abort", or was drained to its end.
    # The client treats each as transient or as an answer, and the run's outcome above is what is asserted.
    print(f"plain request on SIGTERM: {plain.finish or plain.error}; stream: {streamed.finish_reasons() or 'stalled'}; "
          f"vLLM still up 5 s later: {hung}")
