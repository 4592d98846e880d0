"""The two schedules we compare the engine with, running the pipeline's own task translation, for ``bench.throughput``.

* ``sequential``: one task at a time, as SACToR runs.
* ``pool``: ``--workers`` threads, each running one whole task at a time (request, compile, test, repair; then
  the idiomatic stage), blocking on the model, as the original batch_translate_generic.py did.

Per task both run exactly what the engine runs: :func:`pipeline.translate.translate_task` (the same stage loop,
prompts, extraction, vacuous-test check, verifier and results writer) with the same settings
(``pipeline.config.load_config`` with the same ``--config`` and flags). Only the schedule and two adapters
differ: the model is the synchronous ``openai.OpenAI`` client called inline (:class:`BlockingModel`; the
pipeline's retry policy for transient errors, ``max_tokens`` budgeted from the served context length and
``pipeline.llm.estimate_tokens``), and, without ``--sandbox``, tests run as bare subprocesses
(:func:`bare_runner`) instead of in the sandbox, as the original script did. Each worker thread has its own
event loop, sandbox and verifier.

Run: ``python -m bench.baselines --mode pool --c-files D --output O --base-url URL --workers N ...``; writes
``O/baseline_summary.json`` with every task's status, attempts, requests and wall time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty, Queue
from typing import Any

import anyio
import httpx2
import openai

from pipeline.build import Toolchain
from pipeline.config import Config, load_config
from pipeline.errors import RequestFailed
from pipeline.llm import estimate_tokens
from pipeline.prompts import Message
from pipeline.records import Completion, TaskResult, TestCase, TestSuite, Usage
from pipeline.results import write_task_results
from pipeline.sandbox import Sandbox
from pipeline.stages import StageEnv
from pipeline.task import Task
from pipeline.testing import TestOutcome, TestVerdict, normalize_output
from pipeline.translate import read_task, translate_task
from pipeline.verifier import LocalVerifier, TestRunner

log = logging.getLogger("bench.baselines")

RETRYABLE = frozenset({408, 409, 429})


class RequestGaveUp(Exception):
    """A request failed for good (refused, or its retries ran out)."""


@dataclass
class Context:
    """What every thread shares: settings, one sync client, the toolchain, where results go."""

    config: Config
    client: openai.OpenAI
    toolchain: Toolchain
    output: Path
    max_model_len: int | None
    scratch: Path
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count_request(self) -> None:
        with self.lock:
            self.requests += 1


# ------------------------------------------------------------------------------------------------------------
# The model


def _budget(ctx: Context, messages: list[Message]) -> int:
    configured = ctx.config.model.max_tokens
    if ctx.max_model_len is None:
        return configured
    return max(1, min(configured, ctx.max_model_len - estimate_tokens(messages) - ctx.config.client.context_margin))


def _backoff(attempt: int, retry_after: float | None, max_wait: float) -> float:
    """Like the pipeline's: 0.5 * 2**n plus up to 1 s of jitter, capped, at least the server's Retry-After."""
    delay = min(0.5 * 2.0 ** (attempt - 1) + random.uniform(0, min(1.0, max_wait)), max_wait)
    return max(delay, retry_after or 0.0)


def complete(ctx: Context, messages: list[Message]) -> tuple[str, str, int]:
    """One chat completion with retries of transient errors: (text, finish_reason, requests sent)."""
    settings = ctx.config.client
    max_tokens = _budget(ctx, messages)
    for attempt in range(1, settings.retry_attempts + 1):
        retry_after: float | None = None
        ctx.count_request()
        try:
            response = ctx.client.chat.completions.create(
                model=ctx.config.model.model, messages=messages,  # type: ignore[arg-type]
                max_tokens=max_tokens, temperature=ctx.config.model.temperature,
            )
            choice = response.choices[0]
            return choice.message.content or "", str(choice.finish_reason or "stop"), attempt
        except openai.APIStatusError as exc:
            if exc.status_code not in RETRYABLE and exc.status_code < 500:
                raise RequestGaveUp(f"HTTP {exc.status_code}: {exc}") from exc
            header = exc.response.headers.get("retry-after")
            retry_after = float(header) if header and header.replace(".", "", 1).isdigit() else None
            error: Exception = exc
        except (openai.APIConnectionError, openai.APIResponseValidationError) as exc:
            error = exc
        if attempt == settings.retry_attempts:
            raise RequestGaveUp(f"gave up after {attempt} requests: {error}")
        time.sleep(_backoff(attempt, retry_after, settings.retry_max_wait))
    raise AssertionError("unreachable")


# ------------------------------------------------------------------------------------------------------------
# The adapters


class BlockingModel:
    """The Model interface over the synchronous client: the calling thread blocks until the answer is in."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def complete(self, messages: Sequence[Mapping[str, str]], *, purpose: str = "", n: int = 1) -> Completion:
        started = time.perf_counter()
        try:
            text, finish, sent = complete(self.ctx, [dict(m) for m in messages])  # type: ignore[misc]
        except RequestGaveUp as exc:
            raise RequestFailed(str(exc)) from exc
        return Completion(text, finish, Usage(), time.perf_counter() - started, 0.0, sent)


def _run_case_plain(binary: Path, case: TestCase, base_dir: Path, cwd: Path, timeout: float,
                    limit: int) -> TestOutcome:
    started = time.perf_counter()

    def outcome(ok: bool, feedback: str = "") -> TestOutcome:
        summary = f"test {case.index} {'passed' if ok else 'failed'}"
        return TestOutcome(case, ok, summary, feedback, time.perf_counter() - started)

    sample = case.sample
    if sample is None:  # a plain command: passes when it exits 0
        argv = [str(binary) if token == "%t" else token for token in case.argv]
        try:
            proc = subprocess.run(argv, cwd=base_dir, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return outcome(False, f"Test {case.index} failed: timed out after {timeout:g} s.")
        ok = proc.returncode == 0 and len(proc.stdout) + len(proc.stderr) <= limit
        return outcome(ok, "" if ok else f"Test {case.index} failed: exit status {proc.returncode}.")
    if sample.feed == "args":
        argv, stdin = [str(binary), *sample.input.split()], None
    else:
        argv, stdin = [str(binary)], (sample.input + "\n").encode()
    try:
        proc = subprocess.run(argv, cwd=cwd, input=stdin, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return outcome(False, f"Test {case.index} failed: timed out after {timeout:g} s.")
    if len(proc.stdout) + len(proc.stderr) > limit:
        return outcome(False, f"Test {case.index} failed: more than {limit} bytes of output.")
    actual = normalize_output(proc.stdout.decode("utf-8", "replace") + proc.stderr.decode("utf-8", "replace"))
    if actual == sample.output:
        return outcome(True)
    return outcome(False, f"Test {case.index} failed: wrong output.\nThe program ended with exit status "
                          f"{proc.returncode}.\nExpected output:\n{sample.output[:600]}\n"
                          f"Actual output (stdout then stderr, lines stripped):\n{actual[:600]}")


def bare_runner(config: Config, scratch: Path) -> TestRunner:
    """Tests as bare subprocesses (no sandbox), one after another, blocking the thread like the original."""
    translation = config.translation

    async def run(binary: Path, suite: TestSuite) -> TestVerdict:
        with tempfile.TemporaryDirectory(dir=scratch) as cwd:
            return TestVerdict(tuple(
                _run_case_plain(binary, case, suite.base_dir, Path(cwd), translation.test_timeout,
                                translation.output_byte_limit)
                for case in suite.cases
            ))

    return run


# ------------------------------------------------------------------------------------------------------------
# The schedule


def _record(result: TaskResult) -> dict[str, Any]:
    record = result.summary()
    record["finished_at"] = time.time()
    return record


async def _worker(ctx: Context, queue: Queue[Task], records: list[dict[str, Any]], sandboxed: bool) -> None:
    """One thread's event loop: its own sandbox and verifier; takes whole tasks until none is left."""
    async with Sandbox.open(ctx.config.sandbox) as sandbox:
        runner = None if sandboxed else bare_runner(ctx.config, ctx.scratch)
        verifier = LocalVerifier(ctx.config, ctx.toolchain, sandbox, anyio.CapacityLimiter(1), run_tests=runner)
        env = StageEnv(ctx.config, BlockingModel(ctx), verifier)
        while True:
            try:
                task = queue.get_nowait()
            except Empty:
                return
            files = await read_task(task)
            result, transcript = await translate_task(env, task, files.digest, files)
            await write_task_results(ctx.output / task.id, result, transcript)
            with ctx.lock:
                records.append(_record(result))


def run_schedule(ctx: Context, tasks: list[Task], threads: int, sandboxed: bool) -> list[dict[str, Any]]:
    """Every task through ``threads`` worker threads (1: sequential), each blocking on whole tasks."""
    queue: Queue[Task] = Queue()
    for task in tasks:
        queue.put(task)
    records: list[dict[str, Any]] = []
    workers = [threading.Thread(target=anyio.run, args=(_worker, ctx, queue, records, sandboxed))
               for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return records


# ------------------------------------------------------------------------------------------------------------
# The command


def flat_tasks(c_dir: Path, json_dir: Path) -> list[Task]:
    """NAME.c with NAME.json, sorted by name (the flat layout only)."""
    tasks = []
    for c_path in sorted(c_dir.glob("*.c")):
        test_path = json_dir / f"{c_path.stem}.json"
        if test_path.is_file():
            tasks.append(Task(c_path.stem, c_path.resolve(), test_path.resolve()))
    return tasks


def _served_context(client: openai.OpenAI, model: str) -> int | None:
    for entry in client.models.list().data:
        if entry.id == model:
            length = (entry.model_extra or {}).get("max_model_len")
            return length if isinstance(length, int) else None
    raise SystemExit(f"model {model} is not served")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.baselines", description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=("sequential", "pool"), required=True)
    p.add_argument("--c-files", type=Path, required=True)
    p.add_argument("--json-files", type=Path)
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--config", type=Path, help="the same sactor.toml the pipeline run used")
    p.add_argument("--base-url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--workers", type=int, help="threads of the pool (the pipeline's --workers)")
    p.add_argument("--max-attempts", type=int)
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--num-tests", type=int)
    p.add_argument("--cache-dir")
    p.add_argument("--limit", type=int, help="only the first N tasks (sorted by name)")
    p.add_argument("--sandbox", action="store_true", help="run the tests in the pipeline's sandbox")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    flags = {"base_url": args.base_url, "model": args.model, "workers": args.workers,
             "max_attempts": args.max_attempts, "max_tokens": args.max_tokens, "num_tests": args.num_tests,
             "cache_dir": args.cache_dir}
    config = load_config(args.config, flags={k: v for k, v in flags.items() if v is not None})
    workers = config.client.workers if args.mode == "pool" else 1
    started = time.time()
    toolchain = anyio.run(Toolchain.prepare, config.toolchain)
    http = openai.DefaultHttpxClient(
        limits=httpx2.Limits(max_connections=workers, max_keepalive_connections=workers),
        timeout=httpx2.Timeout(config.client.request_timeout, connect=config.client.connect_timeout),
    )
    client = openai.OpenAI(base_url=config.model.base_url, api_key=config.model.api_key or "EMPTY", max_retries=0,
                           http_client=http)
    tasks = flat_tasks(args.c_files, args.json_files or args.c_files)
    if args.limit is not None:
        tasks = tasks[: args.limit]
    args.output.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="baseline-"))
        stack.enter_context(client)
        ctx = Context(config, client, toolchain, args.output, _served_context(client, config.model.model),
                      Path(scratch))
        records = run_schedule(ctx, tasks, workers, args.sandbox)
    summary = {"mode": args.mode, "workers": workers, "sandbox": args.sandbox, "started": started,
               "wall_seconds": time.time() - started, "requests": ctx.requests, "tasks": records,
               "verified": sum(r["status"] == "verified" for r in records)}
    (args.output / "baseline_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"{args.mode}: {len(records)} tasks ({summary['verified']} verified) in {summary['wall_seconds']:.1f} s, "
          f"{ctx.requests} chat requests")
    return 0


if __name__ == "__main__":
    sys.exit(main())
