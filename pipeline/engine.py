"""The batch: producer, model-slot and CPU limiters, pipelined task workers, resume, cancellation.

Shape of a run::

    discover() --> producer --(bounded stream)--> N task workers --> results on disk + ledger
                   (hash, ledger check)            each: unidiomatic -> idiomatic
                                                   model requests bounded by the client's limiter (--workers)
                                                   compile and test bounded by the CPU limiter (--jobs)

There are more task workers than model slots plus CPU slots, so while some tasks compile or run tests,
others keep every model slot busy. Memory is proportional to the tasks in flight (plus one small index
entry per task in the ledger).

Failures of a task are data (its result records them). A FatalError (model server gone past the outage
budget, a full disk) stops the run; SIGINT/SIGTERM stop it too. Either way every finished task stays
recorded and a rerun continues where this one stopped.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from .build import Toolchain
from .config import Config
from .discovery import discover
from .errors import FatalError, Interrupted
from .extract import BEGIN_MARK
from .ledger import Ledger, fingerprint, run_lock
from .llm import ModelClient, ServerInfo
from .progress import Counters, Reporter
from .prompts import IDIOMATIC, REPAIR, UNIDIOMATIC
from .results import TaskResult, atomic_writer, render_table, totals, write_task_results
from .sandbox import Sandbox
from .stages import StageEnv
from .task import Orphan, Task
from .translate import input_hash, translate_task
from .verifier import LocalVerifier

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_SERVER, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


@dataclass(frozen=True)
class RunOptions:
    """What to run on and how, beyond the Config."""

    c_dir: Path
    json_dir: Path
    output: Path
    retry_failed: bool = False
    force: bool = False


@dataclass
class RunOutcome:
    """What the CLI needs to report a finished (or stopped) run."""

    exit_code: int
    summary: dict[str, Any] = field(default_factory=dict)
    message: str | None = None
    table: list[str] = field(default_factory=list)


def settings_fingerprint(config: Config) -> str:
    """Everything that shapes a task's result; a change makes finished tasks stale."""
    return fingerprint({
        "model": config.model.model,
        "max_tokens": config.model.max_tokens,
        "temperature": config.model.temperature,
        "system": config.translation.system_message,
        "prompts": [UNIDIOMATIC, IDIOMATIC, REPAIR, BEGIN_MARK],
        "max_attempts": config.translation.max_attempts,
        "num_tests": config.translation.num_tests,
        "idiomatic": config.translation.idiomatic,
        "test_timeout": config.translation.test_timeout,
        "feed": config.run.feed,
        "edition": config.toolchain.edition,
    })


@dataclass(frozen=True)
class Services:
    """What a run opened: the stage environment (settings, model, verifier) and what the engine reads beside
    it (the server's facts, the client's live counters, the sandbox's isolation)."""

    env: StageEnv
    info: ServerInfo
    client: ModelClient
    sandbox: Sandbox


@asynccontextmanager
async def open_services(config: Config, *, scratch_root: Path | None = None) -> AsyncIterator[Services]:
    """Toolchain, sandbox and model client for a run, opened in one place and closed in reverse order.

    Start-up (the libc build, the sandbox probe, preflight) stops at SIGINT/SIGTERM: what was opened is
    closed again (no scratch, no half-built cache) and Interrupted (exit 130) is raised.
    Raises ConfigError (toolchain, strict sandbox) or ModelUnavailable (preflight).
    """
    async with AsyncExitStack() as stack:
        state: dict[str, Any] = {"interrupted": None}
        failure: Exception | None = None
        # The services outlive this task group: none of them holds a cancel scope across its yield.
        async with anyio.create_task_group() as startup:
            startup.start_soon(_watch_signals, startup.cancel_scope, state, "start-up")
            try:
                toolchain = await Toolchain.prepare(config.toolchain)
                sandbox = await stack.enter_async_context(Sandbox.open(config.sandbox, scratch_root=scratch_root))
                client = await stack.enter_async_context(ModelClient.open(
                    config.model, config.client, limiter=anyio.CapacityLimiter(config.client.workers)
                ))
                info = await client.preflight()
            except Exception as exc:
                failure = exc  # raised below as it is, not inside the task group's exception group
            startup.cancel_scope.cancel()
        if failure is not None:
            raise failure
        if state["interrupted"]:
            raise Interrupted(f"interrupted by {state['interrupted']} during start-up; nothing was translated")
        verifier = LocalVerifier(config, toolchain, sandbox, anyio.CapacityLimiter(config.run.jobs))
        yield Services(StageEnv(config, client, verifier), info, client, sandbox)


class _Run:
    def __init__(self, config: Config, options: RunOptions, env: StageEnv, ledger: Ledger,
                 counters: Counters) -> None:
        self.config = config
        self.options = options
        self.env = env
        self.ledger = ledger
        self.counters = counters
        self.fingerprint = settings_fingerprint(config)
        self.orphans: list[Orphan] = []
        self.seen: set[str] = set()

    def _inspect(self, task: Task) -> tuple[str, bool]:
        """The task's ledger key, and whether a finished result with that key is on disk (runs in a thread)."""
        key = f"{input_hash(task)}:{self.fingerprint}"
        if self.options.force:
            return key, False
        entry = self.ledger.get(task.id)
        if entry is None or entry.key != key:
            return key, False
        if not (self.options.output / task.id / "result.json").exists():
            return key, False
        return key, entry.status == "verified" or not self.options.retry_failed

    async def produce(self, send: ObjectSendStream[tuple[Task, str]]) -> None:
        async with send:
            async for item in discover(self.options.c_dir, self.options.json_dir, feed=self.config.run.feed):
                if isinstance(item, Orphan):
                    self.orphans.append(item)
                    self.counters.orphans += 1
                    log.warning("skipped %s: %s", item.path, item.reason)
                    continue
                if item.id in self.seen:
                    self.orphans.append(Orphan(item.c_path, f"duplicate task id {item.id!r}"))
                    continue
                self.seen.add(item.id)
                self.counters.discovered += 1
                key, done = await anyio.to_thread.run_sync(self._inspect, item)
                if done:
                    self.counters.skipped += 1
                    continue
                await send.send((item, key))
        self.counters.discovery_finished = True

    async def work(self, receive: ObjectReceiveStream[tuple[Task, str]]) -> None:
        async with receive:
            async for task, key in receive:
                await self.run_one(task, key)

    async def run_one(self, task: Task, key: str) -> None:
        digest = key.split(":")[0]
        try:
            result, transcript = await translate_task(self.env, task, digest)
        except FatalError:
            raise
        except Exception as exc:
            # A bug must not cost the night's run: the task is recorded as failed with the error, and the
            # traceback goes to the log for a bug report. Fatal conditions and cancellation still propagate.
            log.exception("%s: internal error", task.id)
            result = TaskResult(task.id, str(task.c_path), str(task.test_path), digest,
                                reason=f"internal error: {type(exc).__name__}: {exc}")
            transcript = [{"event": "internal_error", "message": f"{type(exc).__name__}: {exc}"}]
        # Finished work must reach the disk even when the run is being cancelled around it.
        with anyio.CancelScope(shield=True):
            await write_task_results(self.options.output / task.id, result, transcript)
            summary = result.summary()
            await anyio.to_thread.run_sync(self.ledger.record, key, summary)
        self._count(result)

    def _count(self, result: TaskResult) -> None:
        c = self.counters
        c.done += 1
        if result.status == "verified":
            c.verified += 1
        else:
            c.failed += 1
        for stage in result.stages:
            if stage.verified:
                c.stage_verified[stage.stage] += 1
            elif stage.status == "failed":
                c.stage_failed[stage.stage] += 1
            c.completion_tokens += stage.usage.completion_tokens


async def _watch_signals(scope: anyio.CancelScope, state: dict[str, Any], phase: str = "run") -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            state["interrupted"] = signal.Signals(signum).name
            if phase == "run":
                log.warning("received %s: stopping; finished tasks are kept", state["interrupted"])
            else:
                log.warning("received %s during %s: stopping", state["interrupted"], phase)
            scope.cancel()
            return


async def _track_in_flight(client: ModelClient, counters: Counters) -> None:
    while True:
        counters.in_flight_requests = client.stats.in_flight
        await anyio.sleep(0.25)


@asynccontextmanager
async def _open_ledger(directory: Path) -> AsyncIterator[Ledger]:
    ledger = await anyio.to_thread.run_sync(Ledger.load, directory)
    try:
        yield ledger
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(ledger.close)


def task_worker_count(config: Config) -> int:
    """Enough tasks in flight that neither the model slots nor the CPU slots wait on the other.

    Up to ``workers`` tasks can come back from the model at once (the first wave of a run, or a wave that
    stayed in step) and wait for compile and test; another ``workers`` keep every model slot busy meanwhile.
    With only ``workers + 2 * jobs`` the slots sat mostly idle for seconds after every such wave (bench/README.md).
    """
    return 2 * config.client.workers + 2 * config.run.jobs


async def run_batch(
    config: Config,
    options: RunOptions,
    *,
    reporter: Reporter | None = None,
    scratch_root: Path | None = None,
) -> RunOutcome:
    """Run a corpus. Never raises for task failures; FatalErrors become the outcome's exit code and message."""
    counters = Counters()
    state: dict[str, Any] = {"interrupted": None, "fatal": None}
    started = time.time()
    info: ServerInfo | None = None
    isolation = ""
    run: _Run | None = None
    try:
        with run_lock(options.output):
            async with _open_ledger(options.output) as ledger, \
                    open_services(config, scratch_root=scratch_root) as services:
                info = services.info
                isolation = services.sandbox.isolation.describe()
                run = _Run(config, options, services.env, ledger, counters)
                try:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(_watch_signals, tg.cancel_scope, state)
                        if reporter is not None:
                            tg.start_soon(reporter.run, counters)
                        tg.start_soon(_track_in_flight, services.client, counters)
                        async with anyio.create_task_group() as work:
                            send, receive = anyio.create_memory_object_stream[tuple[Task, str]](
                                config.client.workers
                            )
                            work.start_soon(run.produce, send)
                            async with receive:
                                for _ in range(task_worker_count(config)):
                                    work.start_soon(run.work, receive.clone())
                        tg.cancel_scope.cancel()
                except BaseExceptionGroup as group:
                    first = _first_fatal(group)
                    if first is None:
                        raise
                    raise first from None
    except FatalError as exc:
        state["fatal"] = exc
    finally:
        if reporter is not None:
            reporter.close(counters)
    fatal: FatalError | None = state["fatal"]
    if run is None:
        # Nothing ran: bad configuration, toolchain, lock or preflight.
        assert fatal is not None
        return RunOutcome(getattr(fatal, "exit_code", EXIT_FAILED), message=str(fatal))
    summary = await anyio.to_thread.run_sync(
        _write_summary, config, options, run, info, isolation, started, state
    )
    table = render_table(summary)
    if fatal is not None:
        code = getattr(fatal, "exit_code", EXIT_FAILED)
        return RunOutcome(code, summary, f"run stopped: {fatal}", table)
    if state["interrupted"]:
        return RunOutcome(EXIT_INTERRUPTED, summary, f"interrupted by {state['interrupted']}: finished tasks "
                          "are kept; rerun the same command to continue", table)
    t = summary["totals"]
    ok = t["failed"] == 0 and not run.orphans and t["tasks"] > 0
    return RunOutcome(EXIT_OK if ok else EXIT_FAILED, summary, None, table)


def _first_fatal(group: BaseExceptionGroup[BaseException]) -> FatalError | None:
    for exc in group.exceptions:
        if isinstance(exc, FatalError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first_fatal(exc)
            if found is not None:
                return found
    return None


def _write_summary(config: Config, options: RunOptions, run: _Run, info: ServerInfo | None, isolation: str,
                   started: float, state: dict[str, Any]) -> dict[str, Any]:
    ledger = run.ledger

    def records() -> Iterator[dict[str, Any]]:
        # Streamed from the ledger on disk, so the summary costs no memory per task.
        for record in ledger.latest():
            if record["task_id"] in run.seen:
                record.pop("recorded_at", None)
                yield record

    with atomic_writer(options.output / "batch_summary.json") as fh:
        # One pass over the ledger: each task is written as it streams by and counted on the way.
        fh.write('{\n  "tasks": [')

        def written() -> Iterator[dict[str, Any]]:
            for number, record in enumerate(records()):
                fh.write(("," if number else "") + "\n    " + json.dumps(record))
                yield record

        task_totals = totals(written())
        summary: dict[str, Any] = {
            "run": {
                "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
                "wall_seconds": round(time.time() - started, 3),
                "c_files": str(options.c_dir),
                "json_files": str(options.json_dir),
                "output": str(options.output),
                "interrupted": state["interrupted"],
                "stopped_by": str(state["fatal"]) if state["fatal"] else None,
                "settings_fingerprint": run.fingerprint,
                "sandbox": isolation,
            },
            "server": {"base_url": config.model.public_url, "model": config.model.model,
                       "max_model_len": info.max_model_len if info else None},
            "config": config.public(),
            "totals": task_totals,
            "this_run": {"translated": run.counters.done, "skipped_unchanged": run.counters.skipped},
            "skipped_unchanged": run.counters.skipped,
            "orphans": [{"path": str(o.path), "reason": o.reason} for o in run.orphans],
        }
        fh.write("\n  ]," + json.dumps(summary, indent=2)[1:] + "\n")
    return summary


__all__ = ["RunOptions", "RunOutcome", "open_services", "run_batch"]
