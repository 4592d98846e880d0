"""The two schedules we compare the engine with, doing the same work per task, for ``bench.throughput``.

* ``sequential``: one task at a time, as SACToR runs.
* ``pool``: a ThreadPoolExecutor with ``--workers`` threads, each running one whole task at a time (request,
  compile, test, repair; then the idiomatic stage), as the original batch_translate_generic.py did.

Per task they do what the pipeline does: the same settings (``pipeline.config.load_config`` with the same
``--config`` file and flags), the same prompts and conversation (``pipeline.prompts``), the same extraction
(``pipeline.extract``), the same refusal of ``unsafe`` in the idiomatic stage, the same rustc invocation and
prebuilt libc rlib (``pipeline.build.Toolchain.build`` via ``anyio.run`` inside the thread; the compile cache as
configured), the same tests (``pipeline.testing.load_test_suite``; each sample run with ``subprocess`` and
compared as ``pipeline.testing`` does, without the sandbox; with ``--sandbox`` through the pipeline's
sandbox and ``pipeline.testing.run_test_suite`` instead, for a like-for-like comparison), the same attempt
limit and retry policy for transient server errors. The model is called with the synchronous
``openai.OpenAI`` client; ``max_tokens`` is budgeted from the served context length and
``pipeline.llm.estimate_tokens`` (no /tokenize round trip).

Run: ``python -m bench.baselines --mode pool --c-files D --output O --base-url URL --workers N ...``; writes
``O/baseline_summary.json`` with every task's status, attempts, requests and wall time.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import random
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
import openai
from anyio.from_thread import BlockingPortal, start_blocking_portal

from pipeline.build import Toolchain
from pipeline.config import Config, load_config
from pipeline.errors import TaskFailure
from pipeline.extract import extract_rust
from pipeline.llm import estimate_tokens
from pipeline.prompts import Message, Turn, conversation, idiomatic_prompt, unidiomatic_prompt
from pipeline.sandbox import Sandbox
from pipeline.task import Task
from pipeline.testing import TestSuite, normalize_output, run_test_suite
from pipeline.translate import load_inputs
from pipeline.verifier import FEEDBACK_CHARS, build_failure, refusal

log = logging.getLogger("bench.baselines")

RETRYABLE = frozenset({408, 409, 429})


class RequestGaveUp(Exception):
    """A request failed for good (refused, or its retries ran out)."""


@dataclass
class Context:
    """What every task shares: settings, one sync client, the toolchain, where results go, and (with
    ``--sandbox``) the pipeline's sandbox with the event-loop thread that serves it."""

    config: Config
    client: openai.OpenAI
    toolchain: Toolchain
    output: Path
    max_model_len: int | None
    scratch: Path
    sandbox: Sandbox | None = None
    portal: BlockingPortal | None = None
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count_request(self) -> None:
        with self.lock:
            self.requests += 1


@dataclass
class StageOutcome:
    status: str
    attempts: int
    requests: int
    code: str | None = None
    reason: str | None = None


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
# Compile and test


def _run_case_plain(binary: Path, suite: TestSuite, index: int, cwd: Path, timeout: float,
                    limit: int) -> tuple[bool, str]:
    case = suite.cases[index]
    sample = case.sample
    if sample is None:  # a plain command: passes when it exits 0
        argv = [str(binary) if token == "%t" else token for token in case.argv]
        try:
            proc = subprocess.run(argv, cwd=suite.base_dir, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return False, f"Test {case.index} failed: timed out after {timeout:g} s."
        ok = proc.returncode == 0 and len(proc.stdout) + len(proc.stderr) <= limit
        return ok, "" if ok else f"Test {case.index} failed: exit status {proc.returncode}."
    if sample.feed == "args":
        argv, stdin = [str(binary), *sample.input.split()], None
    else:
        argv, stdin = [str(binary)], (sample.input + "\n").encode()
    try:
        proc = subprocess.run(argv, cwd=cwd, input=stdin, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"Test {case.index} failed: timed out after {timeout:g} s."
    if len(proc.stdout) + len(proc.stderr) > limit:
        return False, f"Test {case.index} failed: more than {limit} bytes of output."
    actual = normalize_output(proc.stdout.decode("utf-8", "replace") + proc.stderr.decode("utf-8", "replace"))
    if actual == sample.output:
        return True, ""
    return False, (f"Test {case.index} failed: wrong output.\nThe program ended with exit status "
                   f"{proc.returncode}.\nExpected output:\n{sample.output[:600]}\n"
                   f"Actual output (stdout then stderr, lines stripped):\n{actual[:600]}")


def verify(ctx: Context, stage: str, code: str, suite: TestSuite) -> tuple[str, str, str]:
    """Refuse, build and test one candidate: (kind, one-line message, feedback for the model)."""
    refused = refusal(stage, code)
    if refused is not None:
        return refused
    if ctx.sandbox is not None and ctx.portal is not None:
        return _verify_sandboxed(ctx, ctx.sandbox, ctx.portal, code, suite)
    with tempfile.TemporaryDirectory(dir=ctx.scratch) as tmp:
        out_dir = Path(tmp)
        build = anyio.run(functools.partial(ctx.toolchain.build, code, out_dir, max_diagnostic_chars=FEEDBACK_CHARS))
        failed = build_failure(build)
        if failed is not None or build.binary is None:
            return failed or ("compile_error", "no binary was produced", "")
        translation = ctx.config.translation
        failures = []
        for index in range(len(suite.cases)):
            ok, feedback = _run_case_plain(build.binary, suite, index, out_dir, translation.test_timeout,
                                           translation.output_byte_limit)
            if not ok:
                failures.append(feedback)
    if not failures:
        return "verified", f"all {len(suite.cases)} tests passed", ""
    return ("test_failure", f"{len(failures)} of {len(suite.cases)} tests failed",
            "\n\n".join(failures)[:FEEDBACK_CHARS])


def _verify_sandboxed(ctx: Context, sandbox: Sandbox, portal: BlockingPortal, code: str,
                      suite: TestSuite) -> tuple[str, str, str]:
    """Build and test as the pipeline does (sandbox build dir, run_test_suite), one whole task per thread."""
    with portal.wrap_async_context_manager(sandbox.build_dir()) as out_dir:
        build = anyio.run(functools.partial(ctx.toolchain.build, code, out_dir, max_diagnostic_chars=FEEDBACK_CHARS))
        failed = build_failure(build)
        if failed is not None or build.binary is None:
            return failed or ("compile_error", "no binary was produced", "")
        translation = ctx.config.translation
        limits = sandbox.limits(wall_seconds=translation.test_timeout, output_bytes=translation.output_byte_limit)
        verdict = portal.call(functools.partial(run_test_suite, build.binary, suite, sandbox=sandbox, limits=limits))
    if verdict.passed:
        return "verified", f"all {len(verdict.outcomes)} tests passed", ""
    failures = verdict.failures
    return ("test_failure", f"{len(failures)} of {len(verdict.outcomes)} tests failed; first: {failures[0].summary}",
            verdict.feedback(FEEDBACK_CHARS))


def run_stage(ctx: Context, stage: str, name: str, c_source: str, suite: TestSuite,
              rust_source: str | None = None) -> StageOutcome:
    """Ask, verify and repair until verified or out of attempts (the pipeline's stage loop, blocking)."""
    first = unidiomatic_prompt(name, c_source) if stage == "unidiomatic" else idiomatic_prompt(
        name, c_source, rust_source or "")
    turns: list[Turn] = []
    requests = 0
    message = "no attempt was made"
    attempts = ctx.config.translation.max_attempts
    for number in range(1, attempts + 1):
        messages = conversation(ctx.config.translation.system_message, first, turns)
        try:
            text, finish, sent = complete(ctx, messages)
        except RequestGaveUp as exc:
            return StageOutcome("failed", number, requests, reason=str(exc))
        requests += sent
        extraction = extract_rust(text, truncated=finish == "length")
        if extraction.code is None:
            message = feedback = extraction.problem or "the answer contains no Rust code"
        else:
            kind, message, feedback = verify(ctx, stage, extraction.code, suite)
            if kind == "verified":
                return StageOutcome("verified", number, requests, code=extraction.code)
        turns.append(Turn(text, message, feedback))
    return StageOutcome("failed", attempts, requests, reason=f"not verified after {attempts} attempts; last: {message}")


def run_task(ctx: Context, task: Task) -> dict[str, Any]:
    """Both stages of one task; writes OUT/<task>/result.json and the verified programs."""
    started = time.perf_counter()
    record: dict[str, Any] = {"task_id": task.id, "status": "failed", "stages": {}}
    try:
        inputs = load_inputs(task, num_tests=ctx.config.translation.num_tests)
    except TaskFailure as exc:
        record["reason"] = str(exc)
    else:
        name = task.c_path.name
        uni = run_stage(ctx, "unidiomatic", name, inputs.c_source, inputs.suite)
        stages = {"unidiomatic": uni}
        if uni.status == "verified" and ctx.config.translation.idiomatic:
            stages["idiomatic"] = run_stage(ctx, "idiomatic", name, inputs.c_source, inputs.suite, uni.code)
        verified = all(s.status == "verified" for s in stages.values()) and (
            len(stages) == 2 or not ctx.config.translation.idiomatic)
        record["status"] = "verified" if verified else "failed"
        result_dir = ctx.output / task.id
        for stage_name, s in stages.items():
            record["stages"][stage_name] = {"status": s.status, "attempts": s.attempts, "requests": s.requests,
                                            "reason": s.reason}
            if s.code is not None:
                target = result_dir / f"translated_code_{stage_name}" / "combined.rs"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(s.code)
    record["wall_seconds"] = round(time.perf_counter() - started, 4)
    record["finished_at"] = time.time()
    result_dir = ctx.output / task.id
    result_dir.mkdir(parents=True, exist_ok=True)
    (result_dir / "result.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


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
        if args.sandbox:
            ctx.portal = stack.enter_context(start_blocking_portal())
            ctx.sandbox = stack.enter_context(ctx.portal.wrap_async_context_manager(Sandbox.open(config.sandbox)))
        if args.mode == "sequential":
            records = [run_task(ctx, task) for task in tasks]
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                records = list(pool.map(functools.partial(run_task, ctx), tasks))
    summary = {"mode": args.mode, "workers": workers, "sandbox": args.sandbox, "started": started,
               "wall_seconds": time.time() - started, "requests": ctx.requests, "tasks": records,
               "verified": sum(r["status"] == "verified" for r in records)}
    (args.output / "baseline_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"{args.mode}: {len(records)} tasks ({summary['verified']} verified) in {summary['wall_seconds']:.1f} s, "
          f"{ctx.requests} chat requests")
    return 0


if __name__ == "__main__":
    sys.exit(main())
