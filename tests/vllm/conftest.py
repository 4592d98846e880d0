"""The real-vLLM suite: a real vLLM 0.32 server (CPU build, tiny local model) instead of our simulator.

Collected only when ``C2RUST_VLLM_SUITE=1`` (``make test-vllm`` sets it after building the environment with
``scripts/vllm/vllm_env.py ensure``), so the normal test run neither imports nor waits for any of it.

One server per configuration for the whole session: ``vllm`` (no key, canned answers, request logging) and,
in the module that needs it, one started with ``--api-key``. Answers to known tasks are forced inside vLLM by
``scripts/vllm/canned_logits.py``; tests add tasks with :meth:`Answers.publish`, under names unique in the
session (a task is recognised by ``NAME.c`` in its prompt).
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Cli, Corpus, answer

if not os.environ.get("C2RUST_VLLM_SUITE"):
    collect_ignore_glob = ["test_*.py"]

sys.path.insert(0, str(ROOT / "scripts" / "vllm"))
import vllm_env

EXAMPLE_ANSWERS = ROOT / "examples" / "answers"
EXAMPLE_CORPUS = ROOT / "examples" / "corpus"
_ACCESS = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3})')
_CANNED = re.compile(r"canned answer \S*/([^/\s]+)/(unidiomatic|idiomatic)-\d+\.md")
#: Automatic prefix caching on (vLLM 0.32's default; said so it stays on), in blocks of 32 tokens: the CPU build's
#: default is 128, a GPU's 16; a smaller block lets the suite see what prompts share at about a GPU's grain.
PREFIX_CACHING = ("--enable-prefix-caching", "--block-size", "32")
_MAX_TOKENS = re.compile(r"Received request \S+: params: SamplingParams\(.*?\bmax_tokens=(\d+)")


@dataclass(frozen=True)
class Seen:
    """What the server logged between two points: requests, max_tokens of each generation, canned answers given."""

    requests: list[tuple[str, str, int]]  # (method, path, status)
    max_tokens: list[int]
    answered: list[tuple[str, str]]  # (task, stage) of every canned answer vLLM was made to give

    def statuses(self, path: str, method: str = "POST") -> list[int]:
        return [status for m, p, status in self.requests if m == method and p == path]

    @property
    def chats(self) -> list[int]:
        """Statuses of every POST /v1/chat/completions, in order."""
        return self.statuses("/v1/chat/completions")


@dataclass
class Server:
    """A running real vLLM server, with what tests read from it: its log (requests received) and /metrics."""

    proc: vllm_env.VllmServer

    @property
    def name(self) -> str:
        return self.proc.name

    @property
    def base_url(self) -> str:
        return self.proc.base_url

    @property
    def root_url(self) -> str:
        return self.proc.root_url

    @property
    def max_model_len(self) -> int:
        return self.proc.max_model_len

    def mark(self) -> int:
        """A point in the server log; :meth:`seen_since` reads what came after it."""
        return len(self.proc.log_text())

    def seen_since(self, mark: int) -> Seen:
        text = self.proc.log_text()[mark:]
        requests = [(m["method"], m["path"], int(m["status"])) for m in _ACCESS.finditer(text)]
        return Seen(requests, [int(v) for v in _MAX_TOKENS.findall(text)], _CANNED.findall(text))

    def metrics(self) -> dict[str, float]:
        """vLLM's Prometheus gauges and counters for our model, labels dropped (``vllm:name`` -> value)."""
        with urllib.request.urlopen(f"{self.root_url}/metrics", timeout=10) as response:
            text = response.read().decode()
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("vllm:") and f'model_name="{self.name}"' in line:
                name = line.split("{", 1)[0]
                if "waiting_by_reason" in name:
                    continue
                values[name] = values.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        return values

    def args(self) -> list[str]:
        """The CLI flags that point a run at this server."""
        return ["--base-url", self.base_url, "--model", self.name]


def http(method: str, url: str, body: Any = None, *, headers: dict[str, str] | None = None,
         timeout: float = 120) -> tuple[int, Any]:
    """One raw HTTP request (stdlib, not our client): the status and the JSON body (or the text)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    text = raw.decode(errors="replace")
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def count_tokens(server: Server, content: str) -> int:
    """The prompt tokens of one user message, chat template included, as the server counts them."""
    status, body = http("POST", f"{server.root_url}/tokenize",
                        {"model": server.name, "messages": [{"role": "user", "content": content}]})
    assert status == 200, body
    return int(body["count"])


def text_of(server: Server, tokens: int) -> str:
    """A user message whose chat prompt is exactly ``tokens`` tokens long (by the server's own count)."""
    unit = " z"
    per_unit = (count_tokens(server, unit * 11) - count_tokens(server, unit)) // 10
    text = ""
    for _ in range(60):
        have = count_tokens(server, text)
        if have == tokens:
            return text
        if tokens - have >= per_unit:
            text += unit * max(1, (tokens - have) // per_unit)
        elif have > tokens:
            text = text[: -len(unit)]
        else:  # fewer tokens missing than one unit holds: a shorter tail
            text += next(tail for tail in ("\n", ".", "z", "\n\n")
                         if count_tokens(server, text + tail) <= tokens)
    raise AssertionError(f"could not make a prompt of exactly {tokens} tokens")


class MetricsSampler:
    """Polls /metrics in a thread while a run goes on; keeps the largest number of requests running."""

    def __init__(self, server: Server, interval: float = 0.1) -> None:
        self.server = server
        self.interval = interval
        self.peak_running = 0.0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                running = self.server.metrics().get("vllm:num_requests_running", 0.0)
            except OSError:
                running = 0.0
            self.peak_running = max(self.peak_running, running)
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> MetricsSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@dataclass
class Answers:
    """The session's canned-answer folder that the server reads for every new request."""

    root: Path

    def publish(self, corpus: Corpus) -> None:
        """Make the canned answers a test wrote with :class:`Corpus` visible to the server."""
        for folder in sorted(corpus.answers.iterdir()):
            link = self.root / folder.name
            assert not link.exists(), f"task name {folder.name} is already used in this session: pick another"
            link.symlink_to(folder, target_is_directory=True)


def add_long_tasks(corpus: Corpus, answers: Answers, prefix: str, count: int, *, lines: int) -> list[str]:
    """``count`` tasks whose canned unidiomatic answer passes after ``lines`` comment lines (about 11 tokens each),
    so that each request keeps vLLM busy for a while; published to the server. Returns the task names."""
    names = [f"{prefix}{i:02d}" for i in range(count)]
    for name in names:
        body = "".join(f"    // {name}: line {i} of a long translation\n" for i in range(lines))
        corpus.add_task(name, expected=name, unidiomatic=[answer(f'fn main() {{\n{body}    println!("{name}");\n}}\n')])
    answers.publish(corpus)
    return names


@pytest.fixture(scope="session")
def vllm_environment() -> vllm_env.Environment:
    return vllm_env.existing()


@pytest.fixture(scope="session")
def answers(tmp_path_factory: pytest.TempPathFactory) -> Answers:
    return Answers(tmp_path_factory.mktemp("vllm-answers"))


def start_server(env: vllm_env.Environment, log: Path, answers: Answers, *, extra: tuple[str, ...] = (),
                 **kwargs: Any) -> Iterator[Server]:
    """A canned-answer server like the suite's (``extra``: more vLLM flags), stopped when the generator ends."""
    server = vllm_env.canned_server(env, log, [answers.root, EXAMPLE_ANSWERS],
                                    extra_args=["--enable-log-requests", *PREFIX_CACHING, *extra], **kwargs)
    with server.running():
        yield Server(server)


@pytest.fixture(scope="session")
def vllm(vllm_environment: vllm_env.Environment, answers: Answers,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The suite's server: no API key, max_model_len 2048, canned answers, requests logged, prefix caching on."""
    log = tmp_path_factory.mktemp("vllm-main") / "vllm.log"
    yield from start_server(vllm_environment, log, answers)


@pytest.fixture
def run_cli(cli: Cli, vllm: Server) -> Callable[..., Any]:
    """The real CLI pointed at the main server: ``run_cli(*args)`` (``check`` or a run's flags)."""

    def call(*args: str | Path, server: Server | None = None, **kw: Any) -> Any:
        target = server or vllm
        return cli(*args, *target.args(), **kw)

    return call
