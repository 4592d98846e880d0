"""Which waiting model request gets the next free generation slot: the task with the most work left first.

The model's slots are the run's scarce resource, and what idles them at the end of a run is the drain: the
last tasks' chains of requests (a stage, its repairs, the next stage), one request after another while the
other slots have nothing left to do (bench/README.md). A chain that starts late ends late, so the request
served first is the one whose task may still need the most requests after it: Hu's highest-level-first rule
for chains on parallel machines, with the longest chain a task can still have (its remaining attempts in this
stage, every attempt of the stages after it) standing for the unknown one. So a new task's first request goes
before a repair, and a unidiomatic request before an idiomatic one; among equals, the one that has waited
longest. Requests of a stage that may still repair are never left waiting for ever: each chain ends after
``max_attempts`` requests a stage, and the tasks in flight are bounded (``engine.task_worker_count``).

Measured against the opposite order (tasks under way first) and arrival order in bench/README.md (#16).

The stage loop says where a request stands with :func:`request_rank` (a context variable, so the model
interface keeps its signature); :class:`PriorityLimiter` (one server) and
:class:`~pipeline.endpoints.EndpointPool` (several, through :class:`WaitingLine`) read it with
:func:`current_rank` when a request starts to wait. Requests sent outside a stage (input proposals, the
checker) rank :data:`BEFORE_STAGES`: they come before a task's stages.

The same order reaches the server as vLLM's request ``priority`` (:func:`server_priority`, sent as
:class:`ServerPriority` decides: ``[pipeline] request_priority``), so that a vLLM started with
``--scheduling-policy priority`` serves its own waiting queue that way too: when several runs share it, or when
more of our requests are in flight than it has sequence slots.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

import anyio
from anyio.lowlevel import cancel_shielded_checkpoint, checkpoint_if_cancelled

from .errors import ConfigError, PipelineError, RequestFailed

log = logging.getLogger(__name__)
T = TypeVar("T")

#: The rank of a request sent outside the stage loop: above any stage's.
BEFORE_STAGES = 1 << 30

_RANK: ContextVar[int] = ContextVar("request_rank", default=BEFORE_STAGES)


@contextmanager
def request_rank(rank: int) -> Iterator[None]:
    """Model requests made inside this block rank ``rank`` (see :func:`stage_rank`): waiting requests of
    higher rank get a free slot first."""
    token = _RANK.set(rank)
    try:
        yield
    finally:
        _RANK.reset(token)


def current_rank() -> int:
    """The rank :func:`request_rank` set around the current request (:data:`BEFORE_STAGES` outside any)."""
    return _RANK.get()


def stage_rank(stage_index: int, stage_count: int, attempt: int, max_attempts: int) -> int:
    """The most requests a task may still send from this one on: the attempts left in this stage (``attempt``
    counts from 1) and every attempt of the ``stage_count - stage_index - 1`` stages after it."""
    return (stage_count - stage_index) * max_attempts - attempt + 1


@dataclass(order=True)
class _Waiter:
    key: tuple[int, int]  # (-rank, arrival): the smallest is served first
    event: anyio.Event = field(compare=False, default_factory=anyio.Event)
    granted: bool = field(compare=False, default=False)
    gone: bool = field(compare=False, default=False)  # cancelled while waiting: skipped when popped


class PriorityLimiter:
    """At most ``total`` holders at once, like :class:`anyio.CapacityLimiter`, but waiting acquirers get the
    freed slots by (rank, arrival), higher rank first, instead of arrival alone. Use it as ``async with limiter:``.

    The queue is bounded by the tasks that wait (one entry each, removed when served or cancelled). A waiter
    cancelled at the moment a slot was handed to it passes the slot on, so cancellation never leaks one.
    """

    def __init__(self, total: int) -> None:
        if total < 1:
            raise ValueError(f"a limiter needs at least one slot, not {total}")
        self._total = total
        self._borrowed = 0
        self._waiting: list[_Waiter] = []
        self._live = 0  # waiters in the heap not cancelled
        self._arrivals = itertools.count()

    def __repr__(self) -> str:
        return f"PriorityLimiter(total={self._total}, borrowed={self._borrowed}, waiting={self._live})"

    @property
    def total_tokens(self) -> int:
        return self._total

    @property
    def borrowed_tokens(self) -> int:
        return self._borrowed

    @property
    def available_tokens(self) -> int:
        return self._total - self._borrowed

    @property
    def waiting(self) -> int:
        """Acquirers waiting for a slot now."""
        return self._live

    async def acquire(self, rank: int | None = None) -> None:
        """Take a slot, waiting while all are held. ``rank`` defaults to :func:`current_rank`."""
        await checkpoint_if_cancelled()
        if self._borrowed < self._total and not self._live:
            self._borrowed += 1
            try:
                await cancel_shielded_checkpoint()
            except BaseException:  # pragma: no cover - a shielded checkpoint raises only on a crash
                self.release()
                raise
            return
        waiter = _Waiter((-(current_rank() if rank is None else rank), next(self._arrivals)))
        heapq.heappush(self._waiting, waiter)
        self._live += 1
        try:
            await waiter.event.wait()
        except BaseException:
            if waiter.granted:
                self.release()  # handed over as the cancellation came: pass it on
            else:
                waiter.gone = True
                self._live -= 1
            raise

    def release(self) -> None:
        """Give a slot back: to the best waiter if one waits, else to the pool."""
        while self._waiting:
            waiter = heapq.heappop(self._waiting)
            if waiter.gone:
                continue
            self._live -= 1
            waiter.granted = True  # the slot moves to it: borrowed stays the same
            waiter.event.set()
            return
        if self._borrowed <= 0:
            raise RuntimeError("PriorityLimiter released more often than acquired")
        self._borrowed -= 1

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.release()


class WaitingLine:
    """The order of requests waiting for a slot elsewhere (:class:`~pipeline.endpoints.EndpointPool`, whose
    slots are spread over servers): :meth:`ahead` says how many better-placed requests wait, so a request
    takes a slot only when fewer of those wait than slots are free. No I/O, no waiting of its own."""

    def __init__(self) -> None:
        self._keys: list[tuple[int, int]] = []
        self._arrivals = itertools.count()

    def __len__(self) -> int:
        return len(self._keys)

    def join(self, rank: int | None = None) -> tuple[int, int]:
        """Enter the line; ``rank`` defaults to :func:`current_rank`. Returns the place's key."""
        key = (-(current_rank() if rank is None else rank), next(self._arrivals))
        bisect.insort(self._keys, key)
        return key

    def ahead(self, key: tuple[int, int]) -> int:
        """How many requests in the line go before ``key``."""
        return bisect.bisect_left(self._keys, key)

    def leave(self, key: tuple[int, int]) -> None:
        del self._keys[bisect.bisect_left(self._keys, key)]


# --------------------------------------------------------------------------------------------------------
# The order, told to the server: vLLM's request priority

#: vLLM serves the smallest ``priority`` first (ties by arrival); 0 is its default. A stage's request is sent
#: ``PRIORITY_LEVELS - rank``: above 0, so a batch run never goes ahead of requests at the default (other users of
#: the server), and the same rank gives the same value in every run sharing the server.
PRIORITY_LEVELS = 10_000
#: Whether the request being sent carries its priority (set by :meth:`ServerPriority.send`).
_CARRY: ContextVar[bool] = ContextVar("request_priority_carried", default=False)


def server_priority(rank: int) -> int:
    """vLLM's ``priority`` for a request of ``rank`` (:func:`stage_rank`): the higher the rank, the smaller it is;
    0 (vLLM's default, so not sent) for requests outside the stage loop."""
    return max(0, PRIORITY_LEVELS - rank)


def refusal_message(server: str, detail: str) -> str:
    return (f"the model server at {server} refuses vLLM's request priority ({detail}) and [pipeline] "
            f"request_priority is \"on\" (--request-priority on, C2RUST_REQUEST_PRIORITY): start vLLM with "
            f"--scheduling-policy priority, or set request_priority = \"auto\" (sent only where the server takes "
            f"it) or \"off\"")


class ServerPriority:
    """Whether the requests to one server carry vLLM's ``priority`` (``[pipeline] request_priority``).

    ``off``: never. ``on``: always; a refusal is fatal (:class:`~pipeline.errors.ConfigError`). ``auto``: learned
    from the server, once: while nothing is known, one request at a time carries the field (the others go
    without, as before); an answer to it settles "yes", a 400 naming ``priority`` (older vLLM, whose V0 engine did so
    without ``--scheduling-policy priority``; other OpenAI-compatible servers) settles "no" and the same request is sent
    again at once without it, so the refusal costs no task anything. vLLM 0.32 accepts the field whatever
    its policy (a server without priority scheduling ignores it), so there "yes" is all auto can learn.
    """

    def __init__(self, mode: str, server: str) -> None:
        self.mode = mode
        self.server = server
        self.accepted: bool | None = {"on": True, "off": False}.get(mode)  # None: not known yet (auto)
        self._scouting = False

    def __repr__(self) -> str:
        return f"ServerPriority(mode={self.mode!r}, accepted={self.accepted!r})"

    @staticmethod
    def fields() -> dict[str, int]:
        """The JSON body fields that carry the current request's priority (none when it goes without)."""
        return {"priority": server_priority(current_rank())} if _CARRY.get() else {}

    @classmethod
    def body(cls) -> dict[str, Any]:
        """:meth:`fields` as arguments of the openai SDK's ``chat.completions.create``."""
        fields = cls.fields()
        return {"extra_body": fields} if fields else {}

    def _claim(self) -> bool:
        if self.accepted is not None or self._scouting:
            return bool(self.accepted)
        self._scouting = True
        return True

    def _refused(self, exc: RequestFailed) -> bool:
        """Whether ``exc`` is the server refusing the priority field (HTTP 400 naming it)."""
        return exc.status == 400 and "priority" in str(exc).lower()

    async def send(self, send: Callable[[], Awaitable[T]], *, resent: Callable[[], None] = lambda: None) -> T:
        """``send()`` (one request), with the field when this server takes it (see the class); ``resent`` is
        called before the same request goes again without the field. Raises what ``send`` raises, and
        ConfigError when ``on`` meets a server that refuses the field."""
        carried = server_priority(current_rank()) != 0 and self._claim()
        token = _CARRY.set(carried)
        try:
            try:
                result = await send()
            except RequestFailed as exc:
                if not carried or not self._refused(exc):
                    raise
                if self.mode == "on":
                    raise ConfigError(refusal_message(self.server, str(exc))) from exc
                self.accepted, self._scouting = False, False
                log.info("the model server at %s refuses vLLM's request priority (%s): sending none to it "
                         "([pipeline] request_priority = \"auto\")", self.server, exc)
                resent()
                _CARRY.set(False)
                result = await send()
        except BaseException:
            if carried and self.accepted is None:
                self._scouting = False  # nothing learned: a later request asks again
            raise
        finally:
            _CARRY.reset(token)
        if carried and self.accepted is None:
            self.accepted, self._scouting = True, False
            log.info("the model server at %s takes vLLM's request priority: every request carries it", self.server)
        return result

    async def probe(self, send: Callable[[], Awaitable[object]]) -> None:
        """``on`` only: ``send()`` one short request with a priority now, so that a server refusing the field stops
        the run before any task (ConfigError). A probe failing otherwise leaves the question to the run's
        requests (a warning)."""
        if self.mode != "on":
            return
        with request_rank(1):
            try:
                await self.send(send)
            except ConfigError:
                raise
            except PipelineError as exc:
                log.warning("could not check that the model server at %s takes vLLM's request priority (%s): the "
                            "run's first request will tell", self.server, exc)


__all__ = [
    "BEFORE_STAGES", "PRIORITY_LEVELS", "PriorityLimiter", "ServerPriority", "WaitingLine", "current_rank",
    "request_rank", "server_priority", "stage_rank",
]
