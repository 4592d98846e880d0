"""The batch: producer, model-slot and CPU limiters, pipelined task workers, resume, cancellation.

Shape of a run::

    discover() --> producer --(bounded stream)--> N task workers --> results on disk + ledger
                   (hash, ledger check)            each: unidiomatic -> idiomatic
                                                   model requests bounded by the client's limiter (--workers)
                                                   compile and test bounded by the CPU limiter (--jobs)

There are more task workers than model slots plus CPU slots, so while some tasks compile or run tests,
others keep every model slot busy. Memory is proportional to the tasks in flight (plus one small index
entry per task in the ledger).

The services (toolchain, sandbox, model client and its preflight) are opened when the producer hands over
the first task that needs work, so a rerun over a finished, unchanged corpus needs no model server.

Failures of a task are data (its result records them; so is a task whose results cannot be written). A
FatalError (model server gone past the outage budget, a full disk) stops the run; SIGINT/SIGTERM stop it
too. Either way every finished task stays recorded and a rerun continues where this one stopped, and
``batch_summary.json`` covers every task the ledger knows (never only the part a stopped run saw).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Container, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, aclosing, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream
from anyio.lowlevel import checkpoint
from anyio.streams.memory import MemoryObjectReceiveStream

from .build import Toolchain
from .config import Config
from .discovery import discover
from .errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    ConfigError,
    DiskFull,
    FatalError,
    Interrupted,
)
from .extract import BEGIN_MARK
from .ledger import OUTPUT_FILES, SUMMARY, Ledger, fingerprint, run_lock
from .progress import Counters, Reporter
from .prompts import FUNCTION_REQUEST, PROMPTS_REVISION
from .records import EARLIER_VERIFY_RULES, VERIFY_RULES_REVISION, TaskFiles, TaskInputs, TaskKey, TaskResult
from .results import atomic_writer, render_table, totals, write_task_files
from .sandbox import Sandbox
from .scheduling import PriorityLimiter
from .stages import StageEnv
from .startup import import_services
from .task import Feed, Orphan, Task, printable
from .translate import read_task_then, recheck_task, translate_task, try_load_inputs

# The model client, the stage code and the verifier are imported by start-up, in a worker thread beside the
# toolchain and sandbox probes (pipeline.startup); below they are imported where they are used.
if TYPE_CHECKING:
    from .endpoints import EndpointPool
    from .function_task import FunctionLevel
    from .interfaces import Verifier
    from .llm import ModelClient, ServerInfo

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

log = logging.getLogger(__name__)
_T = TypeVar("_T")


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


@dataclass
class RunState:
    """How a run (or its start-up) is ending: the signal that stopped it, the fatal error. One per run, noted by
    the signal watcher and the fatal-error handler."""

    interrupted: str | None = None  # the signal's name, e.g. "SIGINT"
    fatal: FatalError | None = None


@dataclass(frozen=True)
class RunRecord:
    """The "run" section of batch_summary.json (fields in the file's order)."""

    started: str
    wall_seconds: float
    c_files: str
    json_files: str
    output: str
    interrupted: str | None
    stopped_by: str | None
    settings_fingerprint: str
    sandbox: str | None


@dataclass(frozen=True)
class ServerRecord:
    """The "server" section of batch_summary.json."""

    base_url: str
    model: str
    max_model_len: int | None


def settings_fingerprint(
    config: Config, *, limits: bool = True, feed: str | None = None, rules: str | None = VERIFY_RULES_REVISION,
) -> str:
    """Everything that shapes a task's result; a change makes finished tasks stale. Differential testing switched
    off leaves the fingerprint of runs from before it existed. ``limits=False`` leaves out the two limits whose
    raising only turns failures into successes, the attempts per stage and the seconds per test: the fingerprint
    under which a task that verified within N attempts and T seconds stays finished for any limits of N and T or
    more (the ledger's ``reuse_key``). ``feed`` stands for ``[pipeline] feed``: the engine accepts both feeds'
    fingerprints for a task whose tests are a SACToR test task (each command names its own feed). ``rules``: the
    revision of the verification rules (:data:`~pipeline.records.VERIFY_RULES_REVISION`; None, the fingerprint
    of runs from before it was part of it)."""
    inputs = config.translation.differential
    if inputs:
        from .differential import RULES_VERSION as differential_rules
    return fingerprint({
        "model": config.model.model,
        "max_tokens": config.model.max_tokens,
        "temperature": config.model.temperature,
        "system": config.translation.system_message,
        "prompts": [PROMPTS_REVISION, BEGIN_MARK],  # the wording's revision: a new layout keeps finished tasks
        **({"max_attempts": config.translation.max_attempts} if limits else {}),
        "num_tests": config.translation.num_tests,
        "idiomatic": config.translation.idiomatic,
        **({"test_timeout": config.translation.test_timeout} if limits else {}),
        "feed": feed or config.run.feed,
        "edition": config.toolchain.edition,
        # Stricter rules: what they would refuse must not stay verified (the engine checks such tasks again).
        **({"verify_rules": rules} if rules is not None else {}),
        **({"differential": [inputs, differential_rules]} if inputs else {}),
        **({"model_inputs": asked} if inputs and (asked := config.translation.differential_model_inputs) else {}),
        **({"candidates": n} if (n := config.translation.candidates) != 1 else {}),
        # Function-level settings count only away from their defaults: runs from before they existed keep
        # their records (auto keeps every program that fits the context whole-file, as before).
        **({"granularity": [cut, FUNCTION_REQUEST]} if (cut := config.translation.granularity) != "auto" else {}),
        **({"function_fallback": FUNCTION_REQUEST} if config.translation.function_fallback else {}),
    })


@dataclass(frozen=True)
class Services:
    """What a run opened: the stage environment (settings, model, verifier) and what the engine reads beside
    it (the server's facts, the client's live counters, the sandbox's isolation)."""

    env: StageEnv
    info: ServerInfo
    client: ModelClient | EndpointPool
    sandbox: Sandbox


@asynccontextmanager
async def open_services(
    config: Config, *, scratch_root: Path | None = None, hidden: Sequence[Path] = (),
) -> AsyncIterator[Services]:
    """Toolchain, sandbox and model client for a run, opened in one place and closed in reverse order.
    ``hidden``: the run's corpus and results folders, which translated programs must not see
    (:meth:`~pipeline.sandbox.Sandbox.open`).

    Start-up (the libc build, the sandbox probe, preflight) stops at SIGINT/SIGTERM: what was opened is
    closed again (no scratch, no half-built cache) and Interrupted (exit 130) is raised.
    Raises ConfigError (toolchain, strict sandbox) or ModelUnavailable (preflight).
    """
    async with AsyncExitStack() as stack:
        state = RunState()
        toolchain, sandbox = await _during_start_up(state, lambda: _probe(config, stack, scratch_root, hidden))
        # Opened by this task, outside start-up's task groups, as it is closed: the client may keep tasks of
        # its own for as long as it is open.
        client = await stack.enter_async_context(_open_client(config))
        cpu = anyio.CapacityLimiter(config.run.jobs)

        async def check() -> tuple[ServerInfo, Verifier]:
            info = await client.preflight()
            if config.run.executor == "ray":
                from .ray_executor import RayVerifier

                return info, await stack.enter_async_context(RayVerifier.open(config, cpu))
            from .verifier import LocalVerifier

            return info, LocalVerifier(config, toolchain, sandbox, cpu)

        info, verifier = await _during_start_up(state, check)
        functions = _function_level(config, client, info, toolchain, sandbox, cpu)
        yield Services(StageEnv(config, client, verifier, functions=functions), info, client, sandbox)


async def _during_start_up(state: RunState, step: Callable[[], Awaitable[_T]]) -> _T:
    """``step``, stopped by SIGINT/SIGTERM (noted in ``state``; Interrupted is raised); its own errors are
    raised as they are (no exception group)."""
    done: list[_T] = []
    failure: Exception | None = None
    async with anyio.create_task_group() as startup:
        startup.start_soon(_watch_signals, startup.cancel_scope, state, "start-up")
        try:
            done.append(await step())
        except Exception as exc:
            failure = exc  # raised below as it is, not inside the task group's exception group
        startup.cancel_scope.cancel()
    if failure is not None:
        raise failure
    if state.interrupted or not done:
        raise Interrupted(f"interrupted by {state.interrupted or 'a signal'} during start-up; nothing was "
                          "translated")
    return done[0]


def _open_client(config: Config) -> AbstractAsyncContextManager[ModelClient | EndpointPool]:
    """The run's model client: one server's, or the pool of several (imported by :func:`_probe`)."""
    from .endpoints import EndpointPool
    from .llm import ModelClient

    if config.model.endpoints:
        return EndpointPool.open(config)
    return ModelClient.open(config.model, config.client, limiter=PriorityLimiter(config.client.workers))


def _function_level(config: Config, client: ModelClient | EndpointPool, info: ServerInfo, toolchain: Toolchain,
                    sandbox: Sandbox, cpu: anyio.CapacityLimiter) -> FunctionLevel:
    """The services of function-level tasks, sized by the smallest context of the run's servers."""
    from .endpoints import EndpointPool
    from .function_task import FunctionLevel

    smallest = client.smallest_context if isinstance(client, EndpointPool) else info.max_model_len
    if config.run.executor == "ray" and (config.translation.granularity != "file"
                                         or config.translation.function_fallback):
        log.info("--executor ray: function-level tasks build and test their functions (FFI checks, the combined "
                 "program) on this machine; whole-file builds and tests go to the Ray cluster")
    return FunctionLevel(toolchain, sandbox, cpu, smallest, settings_fingerprint(config))


async def _probe(
    config: Config, stack: AsyncExitStack, scratch_root: Path | None, hidden: Sequence[Path] = (),
) -> tuple[Toolchain, Sandbox]:
    """The toolchain probe and libc check, the sandbox probe and the imports of the model client and the stage
    code (:func:`pipeline.startup.import_services`, in a worker thread), side by side: the probes' child
    processes run while this process imports (start-up s in bench/README.md, #16). The preflight follows,
    once the client can be opened.

    A failing toolchain or sandbox stops the others at once; the error raised is the first in the order
    toolchain, sandbox, imports, as it is (no exception group).
    """
    done: dict[str, Any] = {}
    failures: dict[str, Exception] = {}

    async def one(name: str, start: Callable[[], Awaitable[Any]], scope: anyio.CancelScope) -> None:
        try:
            done[name] = await start()
        except Exception as exc:
            failures[name] = exc
            scope.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(one, "toolchain", lambda: Toolchain.prepare(config.toolchain), tg.cancel_scope)
        tg.start_soon(one, "sandbox", lambda: stack.enter_async_context(
            Sandbox.open(config.sandbox, scratch_root=scratch_root,
                         cache_dir=config.toolchain.resolved_cache_dir(), hidden=hidden)), tg.cancel_scope)
        tg.start_soon(one, "imports", lambda: anyio.to_thread.run_sync(
            lambda: import_services(ray=config.run.executor == "ray")), tg.cancel_scope)
    for name in ("toolchain", "sandbox", "imports"):
        if name in failures:
            raise failures[name]
    if len(done) < 3:  # pragma: no cover - cancelled from outside: the enclosing scope raises at this checkpoint
        await checkpoint()
        raise Interrupted("start-up was cancelled")
    return done["toolchain"], done["sandbox"]


@dataclass(frozen=True)
class _Recheck:
    """A task verified under earlier verification rules, its inputs loaded: checked again from its stored
    programs before it is redone (see :func:`~pipeline.translate.recheck_task`)."""

    inputs: TaskInputs


#: What the producer hands a task worker: the task, its resume key, its files as read for the key, and its
#: inputs loaded from them (or what loading raised).
_Work = tuple[Task, TaskKey, TaskFiles, TaskInputs | Exception | _Recheck]


class _Run:
    def __init__(self, config: Config, options: RunOptions, ledger: Ledger, counters: Counters,
                 scratch_root: Path | None) -> None:
        self.config = config
        self.options = options
        self.ledger = ledger
        self.counters = counters
        self.scratch_root = scratch_root
        self.fingerprint = settings_fingerprint(config)
        self.reuse_fingerprint = settings_fingerprint(config, limits=False)
        # Records this run accepts as its own, by the kind of a task's tests: the feed of samples lists shapes
        # their tests; a test task's commands name their feed, so a record made under either feed stands.
        other: Feed = "args" if config.run.feed == "stdin" else "stdin"
        feeds = {"samples": (config.run.feed,), "task": (config.run.feed, other)}

        def by_kind(*, limits: bool = True, rules: tuple[str | None, ...] = (VERIFY_RULES_REVISION,),
                    ) -> dict[str, frozenset[str]]:
            return {kind: frozenset(settings_fingerprint(config, limits=limits, feed=feed, rules=revision)
                                    for feed in kind_feeds for revision in rules)
                    for kind, kind_feeds in feeds.items()}

        self.accepted = by_kind()
        self.accepted_reuse = by_kind(limits=False)
        # Records of verified tasks made under earlier verification rules, with this run's settings otherwise.
        self.recheckable = by_kind(rules=EARLIER_VERIFY_RULES)
        # Differential testing judges generated inputs by the C program within min(test_timeout, this): below it,
        # another timeout keeps other inputs, which the translation was never checked on.
        self.oracle_seconds = 0.0
        if config.translation.differential:
            from .differential import RUN_SECONDS

            self.oracle_seconds = RUN_SECONDS
        self.orphans: list[Orphan] = []
        self.seen: set[str] = set()
        self.unread: set[str] = set()  # tasks whose files are there but could not be read: their records stay
        self.listing_complete = True
        self.env: StageEnv | None = None
        self.info: ServerInfo | None = None
        self.isolation = ""
        self.pool: EndpointPool | None = None

    @classmethod
    @asynccontextmanager
    async def open(cls, config: Config, options: RunOptions, counters: Counters,
                   scratch_root: Path | None) -> AsyncIterator[_Run]:
        """The run with its ledger; closing folds the journal in, keeping only the corpus's tasks when
        discovery saw all of it."""
        ledger = await anyio.to_thread.run_sync(Ledger.load, options.output)
        run = cls(config, options, ledger, counters, scratch_root)
        try:
            yield run
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(ledger.close, run.corpus_ids())

    def corpus_ids(self) -> Container[str] | None:
        """Every task id of the corpus, or None when discovery did not see all of it (stopped, unlistable)."""
        if not (self.counters.discovery_finished and self.listing_complete):
            return None
        return self.seen | self.unread if self.unread else self.seen

    def _inspect(
        self, task: Task, files: TaskFiles,
    ) -> tuple[TaskKey, TaskInputs | Exception | _Recheck | Orphan | None]:
        """The task's ledger key, and its inputs (what :func:`~pipeline.translate.try_load_inputs` returns), or
        None when a finished result with that key is on disk, or an Orphan when one of its files could not be
        read; the inputs come as a :class:`_Recheck` for a task verified under earlier verification rules.
        Blocking."""
        key = TaskKey(files.digest, self.fingerprint)
        unread = _unread_file(task, files)
        if unread is not None:
            return key, unread
        if not self.options.force and self._finished(task, key):
            return key, None
        loaded = try_load_inputs(task, num_tests=self.config.translation.num_tests, files=files)
        if isinstance(loaded, TaskInputs) and not self.options.force and self._verified_before(task, key):
            return key, _Recheck(loaded)
        return key, loaded

    def _verified_before(self, task: Task, key: TaskKey) -> bool:
        """Whether the task verified with the same inputs and settings under earlier verification rules. Blocking."""
        entry = self.ledger.get(task.id)
        if entry is None or entry.status != "verified":
            return False
        return (_same_task(entry.key, key, self.recheckable[task.test_kind])
                and (self.options.output / task.id / "result.json").exists())

    def _finished(self, task: Task, key: TaskKey) -> bool:
        entry = self.ledger.get(task.id)
        if entry is None:
            return False
        same = _same_task(entry.key, key, self.accepted[task.test_kind])
        if not same and not self._reusable(entry.reuse, key, self.accepted_reuse[task.test_kind]):
            return False
        if not (self.options.output / task.id / "result.json").exists():
            return False
        return entry.status == "verified" or not self.options.retry_failed

    def _reuse_key(self, key: TaskKey, summary: Mapping[str, Any]) -> str | None:
        """The ledger's second key for a task that verified whole-file: its inputs, the settings but the limits
        (see :func:`settings_fingerprint`), the most attempts a stage took and the seconds per test it ran with.
        None for any other result (a failed task may verify with higher limits; a function-level one counts
        attempts per item, and a fallback follows a failed stage)."""
        if summary.get("status") != "verified" or summary.get("granularity") != "file":
            return None
        used = max((stage.get("attempts") or 0 for stage in (summary.get("stages") or {}).values()), default=0)
        return f"{key.input_hash}:{self.reuse_fingerprint}:{used}:{self.config.translation.test_timeout!r}"

    def _reusable(self, reuse: str | None, key: TaskKey, accepted: Container[str]) -> bool:
        """Whether a verified result recorded under other settings stands under this run's: the same inputs and
        settings but the limits, no stage needed more attempts than this run allows, and the tests passed within
        no more seconds than this run gives them (the code would pass them again)."""
        if reuse is None:
            return False
        parts = reuse.rsplit(":", 2)
        if len(parts) != 3:
            return False
        prefix, used, seconds = parts
        limits = self.config.translation
        try:
            attempts, timeout = int(used), float(seconds)
        except ValueError:
            return False
        same_oracle = min(timeout, self.oracle_seconds) == min(limits.test_timeout, self.oracle_seconds)
        return (attempts <= limits.max_attempts and timeout <= limits.test_timeout and same_oracle
                and _same_task(prefix, key, accepted))

    async def produce(self, send: ObjectSendStream[_Work]) -> None:
        found = discover(self.options.c_dir, self.options.json_dir, feed=self.config.run.feed,
                         output=self.options.output, reserved=OUTPUT_FILES)
        async with send, aclosing(found):
            async for item in found:
                if isinstance(item, Orphan):
                    self.orphans.append(item)
                    self.counters.orphans += 1
                    self.listing_complete &= not item.incomplete
                    if item.task_id is not None:
                        self.unread.add(item.task_id)
                    log.warning("skipped %s: %s", item.path, item.reason)
                    continue
                if item.id in self.seen:
                    self.orphans.append(Orphan(item.c_path, f"duplicate task id {item.id!r}"))
                    continue
                self.seen.add(item.id)
                self.counters.discovered += 1
                # One trip to a worker thread: the task's files read, digested, looked up in the ledger and,
                # unless finished, loaded (#16).
                files, (key, loaded) = await read_task_then(item, partial(self._inspect, item))
                if loaded is None:
                    self.counters.skipped += 1
                    continue
                if isinstance(loaded, Orphan):
                    # Not the task's fault, maybe not for long (permissions, an I/O error): its earlier results
                    # and record are left as they are, not replaced by a failure.
                    self.orphans.append(loaded)
                    self.counters.orphans += 1
                    self.unread.add(item.id)
                    log.warning("skipped %s: %s", loaded.path, loaded.reason)
                    continue
                await send.send((item, key, files, loaded))
        self.counters.discovery_finished = True

    async def work_all(self, receive: MemoryObjectReceiveStream[_Work], stop: anyio.CancelScope,
                       state: RunState) -> None:
        """Translate every task the producer sends; the services are opened only once the first one comes.

        ``stop`` and ``state`` are the run's: SIGINT/SIGTERM cancel ``stop`` and are noted in ``state``.
        """
        try:
            first = await receive.receive()
        except anyio.EndOfStream:
            return  # every task is finished and unchanged: no server, toolchain or sandbox needed
        options = self.options
        # The expected outputs live in the corpus (samples, C programs) and the results (transcripts).
        hidden = (options.c_dir, options.json_dir, options.output)
        async with open_services(self.config, scratch_root=self.scratch_root, hidden=hidden) as services:
            self.env, self.info = services.env, services.info
            self.isolation = services.sandbox.isolation.describe()
            from .endpoints import EndpointPool

            self.pool = services.client if isinstance(services.client, EndpointPool) else None
            async with anyio.create_task_group() as side:
                # Start-up listened for signals itself, which took the handlers from the run's watcher and
                # removed them when it ended: the run listens again.
                side.start_soon(_watch_signals, stop, state)
                side.start_soon(_track_in_flight, services.client, self.counters)
                async with anyio.create_task_group() as work:
                    work.start_soon(self.work, receive.clone(), first)
                    for _ in range(task_worker_count(self.config) - 1):
                        work.start_soon(self.work, receive.clone(), None)
                side.cancel_scope.cancel()

    async def work(
        self, receive: ObjectReceiveStream[_Work], first: _Work | None
    ) -> None:
        async with receive:
            if first is not None:
                await self.run_one(*first)
            async for task, key, files, loaded in receive:
                await self.run_one(task, key, files, loaded)

    async def run_one(
        self, task: Task, key: TaskKey, files: TaskFiles, loaded: TaskInputs | Exception | _Recheck,
    ) -> None:
        assert self.env is not None
        digest = key.input_hash
        if isinstance(loaded, _Recheck):
            if await self._rechecked(task, key, loaded.inputs):
                return
            loaded = loaded.inputs
        try:
            result, transcript = await translate_task(self.env, task, digest, files,
                                                      result_dir=self.options.output / task.id, loaded=loaded)
        except FatalError:
            raise
        except Exception as exc:
            # A bug must not cost the night's run: the task is recorded as failed with the error, and the
            # traceback goes to the log for a bug report. Fatal conditions and cancellation still propagate.
            log.exception("%s: internal error", task.id)
            result = TaskResult(task.id, printable(task.c_path), printable(task.test_path), digest,
                                reason=f"internal error: {type(exc).__name__}: {exc}")
            transcript = [{"event": "internal_error", "message": f"{type(exc).__name__}: {exc}"}]
        # Finished work must reach the disk even when the run is being cancelled around it.
        with anyio.CancelScope(shield=True):
            result = await anyio.to_thread.run_sync(self._finish, task, key, result, transcript)
        self._count(result)

    async def _rechecked(self, task: Task, key: TaskKey, inputs: TaskInputs) -> bool:
        """Check a task verified under earlier verification rules again from its stored programs; when every stage
        verifies, record it under this run's key (its result files stay as they are) and count it as unchanged.
        False when it is to be redone."""
        assert self.env is not None
        try:
            summary = await recheck_task(self.env, task, key.input_hash, inputs, self.options.output / task.id)
        except FatalError:
            raise
        except Exception:
            log.exception("%s: internal error while checking it again; it is redone", task.id)
            return False
        if summary is None:
            return False
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self.ledger.record, str(key), summary, self._reuse_key(key, summary))
        self.counters.skipped += 1
        return True

    def _finish(self, task: Task, key: TaskKey, result: TaskResult, transcript: list[dict[str, Any]]) -> TaskResult:
        """Write the task's result files, then its ledger record: one trip to a worker thread per task (#16).
        Returns the result as recorded. Raises DiskFull."""
        result_dir = self.options.output / task.id
        summary = result.summary()
        try:
            write_task_files(result_dir, result, transcript, summary)
        except OSError as exc:
            # This task's folder cannot hold results (a file in the way, permissions, an I/O error): the
            # task fails with the reason, the others go on. A full disk is DiskFull, fatal, not here.
            reason = _unwritable(result_dir, exc)
            log.error("%s: %s", task.id, reason)
            result = dataclasses.replace(result, reason=reason)
            summary = result.summary()
        self.ledger.record(str(key), summary, self._reuse_key(key, summary))
        return result

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
        for status, count in ((result.granularity or {}).get("items") or {}).items():
            if status in c.items:
                c.items[status] += count


def _same_task(recorded: str, key: TaskKey, accepted: Container[str]) -> bool:
    """Whether a ledger key (``input_hash:settings``) names the task's inputs as they are, under settings among
    ``accepted``."""
    digest, _, settings = recorded.partition(":")
    return digest == key.input_hash and settings in accepted


def _unread_file(task: Task, files: TaskFiles) -> Orphan | None:
    """An Orphan naming the first of the task's files that could not be read (see
    :func:`~pipeline.translate.read_task_files`), with why, or None when every file was read. Blocking."""
    for path, data in files.contents.items():
        if data is not None:
            continue
        try:
            with open(path, "rb"):
                why = "it could not be read a moment ago"
        except OSError as exc:
            why = exc.strerror or str(exc)
        return Orphan(path, f"cannot read the file ({why}): task {task.id!r} is left as it was; make the file "
                            "readable and rerun", task_id=task.id)
    return None


def _unwritable(result_dir: Path, exc: OSError) -> str:
    where = f" ({printable(exc.filename)})" if exc.filename and str(exc.filename) != str(result_dir) else ""
    return (f"the results cannot be written to {printable(result_dir)}: {exc.strerror or exc}{where}; fix "
            "that and rerun (the task is redone)")


async def _watch_signals(scope: anyio.CancelScope, state: RunState, phase: str = "run") -> None:
    try:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                state.interrupted = signal.Signals(signum).name
                if phase == "run":
                    log.warning("received %s: stopping; finished tasks are kept", state.interrupted)
                else:
                    log.warning("received %s during %s: stopping", state.interrupted, phase)
                scope.cancel()
                return
    finally:
        _interrupt_between_watchers()


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _interrupt_between_watchers() -> None:
    """A signal receiver that ends leaves SIGTERM at SIG_DFL (asyncio's remove_signal_handler), so a SIGTERM
    between start-up's watcher and the run's would kill the process without clean-up (exit -15). Until the
    next watcher takes over, both signals interrupt like Ctrl-C: KeyboardInterrupt, which the CLI turns into
    exit 130 after the tasks are cancelled and closed."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _raise_interrupt)


async def _track_in_flight(client: ModelClient | EndpointPool, counters: Counters) -> None:
    while True:
        counters.in_flight_requests = client.stats.in_flight
        await anyio.sleep(0.25)


def task_worker_count(config: Config) -> int:
    """Enough tasks in flight that neither the model slots nor the CPU slots wait on the other.

    Up to ``workers`` tasks can come back from the model at once (the first wave of a run, or a wave that
    stayed in step) and wait for compile and test; the others keep every model slot busy meanwhile. With only
    ``workers + 2 * jobs`` the slots sat mostly idle for seconds after every such wave; with ``4 * workers``
    every task of a small corpus starts at once and a run's tasks start early, which shortens the drain: the
    waiting requests are served most-work-left first (:mod:`pipeline.scheduling`; bench/README.md, #16).
    """
    from .endpoints import model_slots

    return 4 * model_slots(config) + 2 * config.run.jobs


async def run_batch(
    config: Config,
    options: RunOptions,
    *,
    reporter: Reporter | None = None,
    scratch_root: Path | None = None,
) -> RunOutcome:
    """Run a corpus. Never raises for task failures; FatalErrors become the outcome's exit code and message."""
    counters = Counters()
    state = RunState()
    started = time.time()
    run: _Run | None = None
    try:
        _check_output(options)
        with run_lock(options.output):
            async with _Run.open(config, options, counters, scratch_root) as run:
                try:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(_watch_signals, tg.cancel_scope, state)
                        if reporter is not None:
                            tg.start_soon(reporter.run, counters)
                        send, receive = anyio.create_memory_object_stream[_Work](
                            config.client.workers
                        )
                        tg.start_soon(run.produce, send)
                        async with receive:
                            await run.work_all(receive, tg.cancel_scope, state)
                        tg.cancel_scope.cancel()
                except BaseExceptionGroup as group:
                    first = _first_fatal(group)
                    if first is None:
                        raise
                    raise first from None
    except FatalError as exc:
        state.fatal = exc
    except BaseException:
        if reporter is not None:
            reporter.close(counters, final=False)
        raise
    fatal = state.fatal
    if fatal is not None and (run is None or run.env is None):
        # Nothing was translated: bad configuration, toolchain, lock, preflight, corpus folders. The previous
        # summary (if any) stays as it was, and there is no progress to show.
        if reporter is not None:
            reporter.close(counters, final=False)
        return RunOutcome(getattr(fatal, "exit_code", EXIT_FAILED), message=str(fatal))
    assert run is not None
    if reporter is not None:
        reporter.close(counters)
    try:
        summary = await anyio.to_thread.run_sync(_write_summary, config, options, run, started, state)
    except DiskFull as exc:
        # The earlier batch_summary.json stays whole (atomic write); say first what stopped the run.
        cause = fatal or exc
        also = "" if cause is exc else f"; {exc}"
        return RunOutcome(cause.exit_code, message=f"run stopped: {cause}{also}")
    except OSError as exc:
        path = options.output / SUMMARY
        message = (f"cannot write {printable(path)}: {exc.strerror or exc}; move whatever is in its place away "
                   "and rerun (finished tasks are kept)")
        return RunOutcome(fatal.exit_code if fatal else EXIT_FAILED,
                          message=f"run stopped: {fatal}; {message}" if fatal else message)
    table = render_table(summary)
    if summary.get("endpoints"):
        from .endpoints import endpoint_table

        table += endpoint_table(summary["endpoints"])
    if fatal is not None:
        code = getattr(fatal, "exit_code", EXIT_FAILED)
        return RunOutcome(code, summary, f"run stopped: {fatal}", table)
    if state.interrupted:
        return RunOutcome(EXIT_INTERRUPTED, summary, f"interrupted by {state.interrupted}: finished tasks "
                          "are kept; rerun the same command to continue", table)
    t = summary["totals"]
    ok = t["failed"] == 0 and not run.orphans and t["tasks"] > 0
    return RunOutcome(EXIT_OK if ok else EXIT_FAILED, summary, None, table)


def _check_output(options: RunOptions) -> None:
    """The output directory may lie inside the corpus (discovery skips it) but may not be a corpus folder."""
    for flag, directory in (("--c-files", options.c_dir), ("--json-files", options.json_dir)):
        try:
            same = options.output.exists() and os.path.samefile(options.output, directory)
        except OSError:
            same = False
        if same:
            raise ConfigError(f"--output {options.output} is the {flag} folder: results would mix with the "
                              f"inputs; choose another folder, e.g. --output {options.output / 'results'}")


def _first_fatal(group: BaseExceptionGroup[BaseException]) -> FatalError | None:
    for exc in group.exceptions:
        if isinstance(exc, FatalError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first_fatal(exc)
            if found is not None:
                return found
    return None


def _write_summary(config: Config, options: RunOptions, run: _Run, started: float,
                   state: RunState) -> dict[str, Any]:
    """Every task the ledger knows (closed, so it holds the corpus's tasks once discovery saw them all)."""
    ledger = run.ledger
    info = run.info

    def records() -> Iterator[dict[str, Any]]:
        # Streamed from the ledger on disk, so the summary costs no memory per task.
        for record in ledger.latest():
            record.pop("recorded_at", None)
            yield record

    with atomic_writer(options.output / SUMMARY) as fh:
        # One pass over the ledger: each task is written as it streams by and counted on the way.
        fh.write('{\n  "tasks": [')

        def written() -> Iterator[dict[str, Any]]:
            for number, record in enumerate(records()):
                fh.write(("," if number else "") + "\n    " + json.dumps(record))
                yield record

        task_totals = totals(written())
        run_record = RunRecord(
            started=time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
            wall_seconds=round(time.time() - started, 3),
            c_files=str(options.c_dir),
            json_files=str(options.json_dir),
            output=str(options.output),
            interrupted=state.interrupted,
            stopped_by=str(state.fatal) if state.fatal else None,
            settings_fingerprint=run.fingerprint,
            sandbox=run.isolation or None,
        )
        server = ServerRecord(config.model.public_url, config.model.model, info.max_model_len if info else None)
        summary: dict[str, Any] = {
            "run": dataclasses.asdict(run_record),
            "server": dataclasses.asdict(server),
            "config": config.public(),
            "totals": task_totals,
            "this_run": {"translated": run.counters.done, "skipped_unchanged": run.counters.skipped},
            "skipped_unchanged": run.counters.skipped,
            "orphans": [{"path": printable(o.path), "reason": printable(o.reason)} for o in run.orphans],
        }
        if run.pool is not None:
            summary["endpoints"] = run.pool.report()
        fh.write("\n  ]," + json.dumps(summary, indent=2)[1:] + "\n")
    return summary


__all__ = ["RunOptions", "RunOutcome", "open_services", "run_batch"]
