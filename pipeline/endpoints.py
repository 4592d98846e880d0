"""Several model servers as one :class:`~pipeline.interfaces.Model`: a pool of :class:`ModelClient`, one each.

Use :meth:`EndpointPool.open` when ``[VLLM]`` names several servers (``config.model.endpoints``); a run with
one server uses :class:`~pipeline.llm.ModelClient` alone, unchanged.

Routing (:class:`Router`, no I/O, a clock passed in): each request goes to the server in service with the
fewest requests in flight relative to its weight, within its capacity (``workers`` of its table, else its
share of ``--workers`` by weight). A server that fails is taken out of service: at once when it refuses the
connection or its model has gone, after :data:`STREAK_LIMIT` transient failures in a row otherwise (5xx,
dropped connections, timeouts). A request that failed there goes to another server without spending the
task's translation attempts. A server out of service is probed again (its preflight: model list, model
served) with an exponential backoff, by whichever request comes by when the probe is due (no background
task), and is put back when the probe succeeds.

The run stops (:class:`~pipeline.errors.ModelUnavailable`, exit 3, finished work kept) only when no server
has answered a chat request for the outage budget since it began failing: every server down past the budget.
One request that fails on servers that answer others meanwhile is this request's problem
(:class:`~pipeline.errors.RequestFailed` after ``retry_attempts``), as with one server.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio

from .config import Config, Endpoint, ModelSettings
from .errors import (
    ConfigError,
    ModelUnavailable,
    PipelineError,
    RequestFailed,
    ServerUnreachable,
    TaskFailure,
    TransientError,
)
from .llm import ClientStats, ModelClient, ServerInfo
from .llm_errors import failure_kind
from .records import Completion
from .scheduling import PriorityLimiter, WaitingLine

log = logging.getLogger(__name__)

Clock = Callable[[], float]

#: Transient failures in a row that take a server out of service (a refused connection takes it out at once).
STREAK_LIMIT = 3
#: The first probe of a server taken out comes this soon; each failed probe doubles the wait, up to the cap.
PROBE_FIRST = 1.0
PROBE_CAP = 30.0
#: A request waiting for a slot looks again this often (probes due, servers back, the outage budget).
WAIT_STEP = 0.25


def capacities(config: Config) -> list[int]:
    """Each endpoint's requests in flight: its ``workers``, else its share of ``--workers`` by weight (>= 1)."""
    endpoints = config.model.endpoints
    shared = sum(e.weight for e in endpoints if e.workers is None)
    out = []
    for e in endpoints:
        if e.workers is not None:
            out.append(e.workers)
        else:
            out.append(max(1, round(config.client.workers * e.weight / shared)))
    return out


def model_slots(config: Config) -> int:
    """Requests in flight across every server: ``--workers``, or the endpoints' capacities added up."""
    return sum(capacities(config)) if config.model.endpoints else config.client.workers


def endpoint_settings(model: ModelSettings, endpoint: Endpoint) -> ModelSettings:
    """The one-server settings of ``endpoint``: its URL, and its model and key where it names its own."""
    return dataclasses.replace(
        model, base_url=endpoint.base_url, model=endpoint.model or model.model,
        api_key=endpoint.api_key or model.api_key, endpoints=(),
    )


@dataclass
class EndpointState:
    """One server's routing state and counters. Mutated by the :class:`Router` only."""

    name: str  # the URL without credentials
    weight: float
    capacity: int
    in_flight: int = 0
    up: bool = True
    probing: bool = False
    down_since: float | None = None  # when it was taken out (None: in service)
    failing_since: float | None = None  # its first failure since its last answer (None: answering)
    streak: int = 0
    probe_wait: float = PROBE_FIRST
    probe_at: float = 0.0
    last_error: str = ""
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0
    taken_out: int = 0
    out_seconds: float = 0.0  # closed periods out of service


class Router:
    """Which server takes the next request, and when servers leave and rejoin service. No I/O."""

    def __init__(self, states: Sequence[EndpointState], *, budget: float, clock: Clock = time.monotonic,
                 probe_first: float = PROBE_FIRST, probe_cap: float = PROBE_CAP) -> None:
        self.states = list(states)
        self.budget = budget
        self.clock = clock
        self.probe_first = probe_first
        self.probe_cap = max(probe_cap, probe_first)
        self.last_success: float | None = None

    def pick(self) -> int | None:
        """The server in service with room and the fewest requests in flight per weight (None: none has room).
        Ties go to the one that has served fewer requests per weight, then to the first listed."""
        best: tuple[float, float, int] | None = None
        for index, s in enumerate(self.states):
            if not s.up or s.in_flight >= s.capacity:
                continue
            rank = (s.in_flight / s.weight, s.requests / s.weight, index)
            if best is None or rank < best:
                best = rank
        if best is None:
            return None
        self.states[best[2]].in_flight += 1
        return best[2]

    def free(self) -> int:
        """Slots free on the servers in service."""
        return sum(max(0, s.capacity - s.in_flight) for s in self.states if s.up)

    def finished(self, index: int) -> None:
        self.states[index].in_flight -= 1

    def succeeded(self, index: int, prompt_tokens: int, completion_tokens: int) -> None:
        s = self.states[index]
        s.requests += 1
        s.prompt_tokens += prompt_tokens
        s.completion_tokens += completion_tokens
        s.streak = 0
        s.failing_since = None
        self.last_success = self.clock()

    def rejected(self, index: int) -> None:
        """The server answered that this request cannot succeed (a 400): the server is fine."""
        s = self.states[index]
        s.requests += 1
        s.errors += 1

    def failed(self, index: int, reason: str, *, at_once: bool = False) -> bool:
        """A transient failure on ``index``; True when that took it out of service."""
        s = self.states[index]
        s.requests += 1
        s.errors += 1
        s.streak += 1
        s.last_error = reason
        if s.failing_since is None:
            s.failing_since = self.clock()
        if s.up and (at_once or s.streak >= STREAK_LIMIT):
            self.take_out(index, reason)
            return True
        return not s.up

    def take_out(self, index: int, reason: str) -> None:
        s = self.states[index]
        s.last_error = reason
        now = self.clock()
        if s.failing_since is None:
            s.failing_since = now
        if not s.up:
            return
        s.up = False
        s.down_since = now
        s.taken_out += 1
        s.probe_wait = self.probe_first
        s.probe_at = now + s.probe_wait
        others = sum(1 for t in self.states if t.up)
        log.warning("model server %s taken out of service (%s); %d other server(s) in service; probing it again "
                    "in %.0f s", s.name, reason, others, s.probe_wait)

    def claim_probe(self) -> int | None:
        """A server out of service whose probe is due, now marked as being probed (None: no probe due)."""
        now = self.clock()
        for index, s in enumerate(self.states):
            if not s.up and not s.probing and s.probe_at <= now:
                s.probing = True
                return index
        return None

    def probe_failed(self, index: int, reason: str) -> None:
        s = self.states[index]
        s.probing = False
        s.last_error = reason
        s.probe_wait = min(self.probe_cap, s.probe_wait * 2)
        s.probe_at = self.clock() + s.probe_wait
        log.info("model server %s still out of service (%s); next probe in %.0f s", s.name, reason, s.probe_wait)

    def back_in(self, index: int) -> None:
        s = self.states[index]
        s.probing = False
        if s.up:
            return
        now = self.clock()
        away = now - (s.down_since if s.down_since is not None else now)
        s.out_seconds += away
        s.up, s.down_since, s.streak = True, None, 0
        log.warning("model server %s is back in service after %.0f s out", s.name, away)

    def exhausted(self) -> bool:
        """Every server has failed for the outage budget without answering a chat request since. (Ask it when a
        request has just failed or no server is in service: a quiet spell is not a failure.)"""
        now = self.clock()
        return all(s.failing_since is not None and now - s.failing_since >= self.budget for s in self.states)

    def out_of_service(self, index: int) -> float:
        s = self.states[index]
        current = self.clock() - s.down_since if s.down_since is not None else 0.0
        return s.out_seconds + current


@dataclass
class _Call:
    began: float
    requests: int = 0
    failures: int = 0
    queued: float = 0.0
    first_failure: float | None = None
    tried: set[int] = field(default_factory=set)


def _refused(exc: PipelineError) -> bool:
    """A failure that says the server is not there (never connected), not that it is slow or erring."""
    cause = exc.__cause__
    return isinstance(exc, ServerUnreachable) and cause is not None and failure_kind(cause) == "connect"


class EndpointPool:
    """Several model servers behind one :meth:`complete`. Build it with :meth:`open`, never directly."""

    def __init__(self, config: Config, clients: Sequence[ModelClient], *, clock: Clock = time.monotonic) -> None:
        self._config = config
        self._clients = list(clients)
        caps = capacities(config)
        self._models = [endpoint_settings(config.model, e) for e in config.model.endpoints]
        self.router = Router(
            [EndpointState(c.base_url, e.weight, cap)
             for c, e, cap in zip(self._clients, config.model.endpoints, caps, strict=True)],
            budget=config.client.outage_budget, clock=clock,
            probe_cap=min(PROBE_CAP, max(PROBE_FIRST, config.client.retry_max_wait)),
        )
        self._clock = clock
        self._changed = anyio.Event()
        self._line = WaitingLine()
        self._info: ServerInfo | None = None
        #: The smallest context length the servers reported at preflight (None: none said), for the
        #: granularity of function-level translation.
        self.smallest_context: int | None = None

    def __repr__(self) -> str:
        return f"EndpointPool({[c.base_url for c in self._clients]!r})"

    @classmethod
    @asynccontextmanager
    async def open(cls, config: Config) -> AsyncIterator[EndpointPool]:
        """Open one client per endpoint (each with its capacity as its pool and limiter); close them on exit."""
        async with AsyncExitStack() as stack:
            clients = []
            for model, cap in zip((endpoint_settings(config.model, e) for e in config.model.endpoints),
                                  capacities(config), strict=True):
                settings = dataclasses.replace(config.client, workers=cap)
                clients.append(await stack.enter_async_context(
                    ModelClient.open(model, settings, limiter=PriorityLimiter(cap))))
            yield cls(config, clients)

    @property
    def stats(self) -> ClientStats:
        """Live counters over every server (the progress display reads ``in_flight``)."""
        total = ClientStats()
        for c in self._clients:
            for name in ("in_flight", "requests_sent", "retries", "prompt_tokens", "completion_tokens"):
                setattr(total, name, getattr(total, name) + getattr(c.stats, name))
        return total

    # ----------------------------------------------------------------------------------------------
    # preflight

    async def preflight(self) -> ServerInfo:
        """Preflight every server at once. One that cannot be reached is taken out (a warning) and probed
        again later; the run needs one in service.

        Raises ModelUnavailable when none can be reached, or when one answers but does not serve the model
        (or refuses the key): the servers must all serve the same model.
        """
        results: list[ServerInfo | PipelineError | None] = [None] * len(self._clients)

        async def one(index: int) -> None:
            try:
                results[index] = await self._clients[index].preflight()
            except PipelineError as exc:
                results[index] = exc

        async with anyio.create_task_group() as tg:
            for index in range(len(self._clients)):
                tg.start_soon(one, index)
        infos = [r for r in results if isinstance(r, ServerInfo)]
        for index, result in enumerate(results):
            if not isinstance(result, PipelineError):
                continue
            if isinstance(result, ConfigError):  # a setting that does not fit this server: the message says which
                raise result
            if not isinstance(result.__cause__, TransientError):
                raise ModelUnavailable(
                    f"model server {index + 1} of {len(results)} ({self._clients[index].base_url}): {result}; every "
                    f"server of a run must serve the same model ([VLLM] model, or the model of its "
                    f"[[VLLM.endpoints]] table)"
                ) from result
        if not infos:
            lines = "; ".join(f"{c.base_url}: {r}" for c, r in zip(self._clients, results, strict=True))
            raise ModelUnavailable(f"none of the {len(results)} model servers can be reached: {lines}")
        for index, result in enumerate(results):
            if isinstance(result, PipelineError):
                self.router.take_out(index, str(result))
                log.warning("model server %s cannot be reached (%s): the run goes on with the others and tries it "
                            "again", self._clients[index].base_url, result)
        lengths = {i.max_model_len for i in infos}
        if len(lengths) > 1:
            log.warning("the model servers report different context lengths (%s): each request is sized for the "
                        "server it goes to", ", ".join(str(n) for n in sorted(lengths, key=str)))
        known = [length for length in lengths if length is not None]
        self.smallest_context = min(known) if known else None
        self._info = infos[0]
        return infos[0]

    # ----------------------------------------------------------------------------------------------
    # completion

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def _probe(self, index: int) -> None:
        try:
            await self._clients[index].preflight()
        except PipelineError as exc:
            self.router.probe_failed(index, str(exc))
        else:
            self.router.back_in(index)
            self._notify()

    def _stop_error(self) -> ModelUnavailable:
        budget = self._config.client.outage_budget
        parts = [f"{s.name} ({s.last_error or 'no answer'})" for s in self.router.states]
        return ModelUnavailable(
            f"none of the {len(parts)} model servers has answered for the outage budget of {budget:g} s "
            f"([pipeline] outage_budget, --outage-budget): {'; '.join(parts)}; finished work is kept: restart "
            f"the servers and rerun to resume"
        )

    async def _acquire(self) -> int:
        """A slot on the best server in service; probes the servers that are due meanwhile. Waiting requests
        take the free slots in their order (:mod:`pipeline.scheduling`: tasks under way first).

        Raises ModelUnavailable when every server has been failing for the outage budget.
        """
        place = self._line.join()
        served = False
        try:
            while True:
                # Only while no server is in service: one in service has answered since it failed, or will be
                # tried.
                if not any(s.up for s in self.router.states) and self.router.exhausted():
                    raise self._stop_error()
                due = self.router.claim_probe()
                if due is not None:
                    await self._probe(due)
                    continue
                if self._line.ahead(place) < self.router.free():
                    index = self.router.pick()
                    if index is not None:
                        served = True
                        return index
                changed = self._changed
                with anyio.move_on_after(WAIT_STEP):
                    await changed.wait()
        finally:
            self._line.leave(place)
            if not served:
                self._notify()  # the requests behind it moved up without a slot taken: they may go now

    def _release(self, index: int) -> None:
        self.router.finished(index)
        self._notify()

    async def complete(
        self, messages: Sequence[Mapping[str, str]], *, purpose: str = "", n: int = 1
    ) -> Completion:
        """The answer to ``messages`` from one of the servers; safe to call from many tasks at once.

        Raises ContextOverflow and other TaskFailures as one server would, RequestFailed when the request kept
        failing while servers answered others, ModelUnavailable when every server is down past the budget.
        """
        call = _Call(began=self._clock())
        retries = self._config.client.retry_attempts
        while True:
            waited = self._clock()
            index = await self._acquire()
            call.queued += self._clock() - waited
            call.tried.add(index)
            failure: PipelineError | None = None
            try:
                completion = await self._clients[index].attempt(messages, purpose=purpose, n=n)
            except (TransientError, ModelUnavailable) as exc:
                failure = exc
            except TaskFailure as exc:
                self.router.rejected(index)
                exc.requests += call.requests
                raise
            finally:
                self._release(index)
            if failure is None:
                self.router.succeeded(index, completion.usage.prompt_tokens, completion.usage.completion_tokens)
                return dataclasses.replace(
                    completion, seconds=self._clock() - call.began,
                    queued_seconds=call.queued + completion.queued_seconds,
                    requests=call.requests + completion.requests)
            call.requests += 1
            call.failures += 1
            if call.first_failure is None:
                call.first_failure = self._clock()
            at_once = isinstance(failure, ModelUnavailable) or _refused(failure)
            taken_out = self.router.failed(index, str(failure), at_once=at_once)
            log.info("%s: %s failed (%s); sending it to another server", purpose or "chat",
                     self._clients[index].base_url, failure)
            if self.router.exhausted():
                raise self._stop_error() from failure
            last = self.router.last_success
            if call.failures >= retries and last is not None and last >= call.first_failure:
                raise RequestFailed(
                    f"{purpose or 'chat'}: gave up after {call.requests} requests to {len(call.tried)} server(s) "
                    f"while the servers answered others: {failure}") from failure
            if not taken_out:
                await anyio.sleep(self._backoff(call.failures))

    def _backoff(self, failures: int) -> float:
        cap = self._config.client.retry_max_wait
        return float(min(cap, 0.25 * 2.0 ** min(failures - 1, 10)) * random.uniform(0.5, 1.0))

    # ----------------------------------------------------------------------------------------------
    # reporting

    def report(self) -> list[dict[str, Any]]:
        """Per server: requests, tokens, errors, times taken out and time out of service (for the summary)."""
        out = []
        for index, (s, model) in enumerate(zip(self.router.states, self._models, strict=True)):
            out.append({
                "base_url": s.name, "model": model.model, "weight": s.weight, "capacity": s.capacity,
                "requests": s.requests, "prompt_tokens": s.prompt_tokens,
                "completion_tokens": s.completion_tokens, "errors": s.errors, "taken_out": s.taken_out,
                "out_of_service_seconds": round(self.router.out_of_service(index), 3),
                "in_service": s.up,
            })
        return out


def endpoint_table(rows: Sequence[Mapping[str, Any]] | None) -> list[str]:
    """The end-of-run lines for several servers (none for a one-server run)."""
    if not rows:
        return []
    width = max(len("server"), *(len(str(r["base_url"])) for r in rows))
    lines = [f"{'server':<{width}}  {'requests':>8}  {'tokens (prompt+completion)':>26}  {'errors':>6}  "
             f"{'out of service':>14}"]
    for r in rows:
        tokens = f"{r['prompt_tokens']}+{r['completion_tokens']}"
        away = float(r["out_of_service_seconds"])
        shown = f"{away:.0f} s" if math.isfinite(away) else "-"
        lines.append(f"{r['base_url']:<{width}}  {r['requests']:>8}  {tokens:>26}  {r['errors']:>6}  {shown:>14}")
    return lines


__all__ = ["EndpointPool", "EndpointState", "Router", "capacities", "endpoint_settings", "endpoint_table",
           "model_slots"]
