"""The simulator's settings and the record it keeps of every request (frozen values)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Fault kinds that answer with an HTTP error status (JSON body) instead of generating.
STATUS_FAULTS = ("500", "502", "503", "429")
#: Fault kinds that never send a whole response: the connection is closed (at once, or after a stall), the
#: answer trickles in a byte at a time, or the server starts shutting down as vLLM does on SIGTERM (the
#: listener closes, this and every other request in flight hangs).
CONNECTION_FAULTS = ("drop", "stall", "trickle", "shutdown")
#: Fault kinds that spoil a generated answer (sent with status 200). "abort" is what vLLM 0.32 sends a request in
#: flight when it is told to stop: status 200, the partial text, ``finish_reason: "abort"``.
ANSWER_FAULTS = ("length", "malformed", "abort")
FAULT_KINDS = STATUS_FAULTS + CONNECTION_FAULTS + ANSWER_FAULTS
#: In :attr:`FaultPlan.script`, the entry that means "no fault for this request".
NO_FAULT = "ok"
#: Status recorded for a connection that got no response at all (``drop``, ``stall``).
STATUS_NO_RESPONSE = 0
#: Status recorded when the client went away before its response was complete (nginx's convention).
STATUS_CLIENT_GONE = 499
#: What :attr:`SimConfig.compat` accepts: the vLLM 0.32 behaviour (default) or older servers'.
COMPAT_VLLM = "0.32"
COMPAT_LEGACY = "legacy"
COMPAT_MODES = (COMPAT_VLLM, COMPAT_LEGACY)
#: What :attr:`SimConfig.scheduling_policy` accepts (vLLM's ``--scheduling-policy``).
POLICY_FCFS = "fcfs"
POLICY_PRIORITY = "priority"
SCHEDULING_POLICIES = (POLICY_FCFS, POLICY_PRIORITY)


def check_fault_kind(kind: str, *, allow_ok: bool = False) -> str:
    """Return ``kind`` if it names a fault (or ``"ok"`` when ``allow_ok``); raise ValueError otherwise."""
    if kind in FAULT_KINDS or (allow_ok and kind == NO_FAULT):
        return kind
    known = ", ".join((*FAULT_KINDS, NO_FAULT) if allow_ok else FAULT_KINDS)
    raise ValueError(f"unknown fault kind {kind!r}; known kinds: {known}")


@dataclass(frozen=True)
class LoadModel:
    """How busy the simulated server is, as vLLM: ``capacity`` concurrent generations, the rest wait (FIFO, or by
    ``priority`` under the priority policy: :class:`SimConfig`).

    A generation takes ``latency + prefill_per_token * prompt_tokens + decode_per_token * completion_tokens``
    seconds. Raises ValueError for a capacity below 1 or a negative time.

    A request for ``n`` choices is priced as vLLM's continuous batching serves it: the prompt is prefilled once
    (the n sequences share its KV-cache blocks), then the n sequences decode side by side in the running batch,
    each holding one of the ``capacity`` sequence slots (vLLM's ``--max-num-seqs``), until the longest is done:
    ``latency + prefill_per_token * prompt_tokens + decode_per_token * max(completion tokens of a choice)``
    seconds on ``min(n, capacity)`` slots. A decode step costs the same whatever the batch holds (decoding is
    memory-bound, the premise of ``capacity``), so n choices take about one choice's time but n slots of the
    server: slot-seconds, not seconds, is what they cost.
    """

    capacity: int = 8
    latency: float = 0.0
    decode_per_token: float = 0.0
    prefill_per_token: float = 0.0

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError(f"LoadModel.capacity must be at least 1, got {self.capacity}")
        for name in ("latency", "decode_per_token", "prefill_per_token"):
            if getattr(self, name) < 0:
                raise ValueError(f"LoadModel.{name} must not be negative")

    def service_time(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Seconds one generation holds its slot."""
        return (
            self.latency
            + self.prefill_per_token * prompt_tokens
            + self.decode_per_token * completion_tokens
        )


@dataclass(frozen=True)
class FaultPlan:
    """Which chat requests go wrong, and how.

    ``script`` applies its kinds to the first chat requests in arrival order (``"ok"`` = no fault); after the
    script, each chat request fails with probability ``rate``, its kind drawn from ``kinds`` by an RNG seeded
    with ``seed`` (so the same arrival order gives the same faults). ``retry_after`` is the Retry-After header
    of a 429 (seconds, may be fractional); ``stall_seconds`` is how long a ``stall`` holds the connection;
    ``trickle_interval`` is the pause between the bytes of a ``trickle`` answer (its head goes out at once).
    Raises ValueError for an unknown kind or a rate outside [0, 1].
    """

    rate: float = 0.0
    kinds: tuple[str, ...] = ("503",)
    script: tuple[str, ...] = ()
    seed: int = 0
    retry_after: float = 1.0
    stall_seconds: float = 30.0
    trickle_interval: float = 2.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"FaultPlan.rate must be within [0, 1], got {self.rate}")
        for kind in self.kinds:
            check_fault_kind(kind)
        for kind in self.script:
            check_fault_kind(kind, allow_ok=True)
        if self.rate > 0 and not self.kinds:
            raise ValueError("FaultPlan.kinds must not be empty when rate > 0")
        if self.retry_after < 0 or self.stall_seconds < 0 or self.trickle_interval < 0:
            raise ValueError("FaultPlan.retry_after, stall_seconds and trickle_interval must not be negative")


@dataclass(frozen=True)
class SimConfig:
    """Everything a :class:`~pipeline.simulator.Simulator` needs (formats: see the package docstring).

    ``compat`` picks the protocol: ``"0.32"`` (default) answers as vLLM 0.32 does, ``"legacy"`` as older
    servers (flat error bodies, a 400 when prompt + max_tokens exceed the context); docs/vllm-protocol.md
    lists the differences. ``api_key`` set: every /v1 route wants ``Authorization: Bearer KEY`` (vLLM's
    ``--api-key``); /health, /version and /tokenize stay open.

    ``scheduling_policy`` is vLLM's ``--scheduling-policy``: ``"fcfs"`` (default) serves waiting requests in arrival
    order, ``"priority"`` by their ``priority`` field, smallest first, then arrival. Without it a non-zero
    ``priority`` is ignored as vLLM 0.32 does, or refused with a 400 "Got priority N but Priority scheduling is
    not enabled." as older vLLM did (``compat="legacy"``).
    """

    answers_dir: Path | None = None
    model: str = "sim-model"
    max_model_len: int = 8192
    load: LoadModel = field(default_factory=LoadModel)
    faults: FaultPlan = field(default_factory=FaultPlan)
    tokenize: bool = True
    log_path: Path | None = None
    record_bodies: bool = True
    compat: str = COMPAT_VLLM
    api_key: str | None = None
    scheduling_policy: str = POLICY_FCFS

    def __post_init__(self) -> None:
        if self.compat not in COMPAT_MODES:
            raise ValueError(f"SimConfig.compat must be one of {', '.join(COMPAT_MODES)}, got {self.compat!r}")
        if self.scheduling_policy not in SCHEDULING_POLICIES:
            raise ValueError(f"SimConfig.scheduling_policy must be one of {', '.join(SCHEDULING_POLICIES)}, got "
                             f"{self.scheduling_policy!r}")
        if self.max_model_len < 1:
            raise ValueError(f"SimConfig.max_model_len must be at least 1, got {self.max_model_len}")
        # Accept plain strings for the paths: callers write SimConfig(answers_dir="...") in scripts.
        if self.answers_dir is not None and not isinstance(self.answers_dir, Path):
            object.__setattr__(self, "answers_dir", Path(self.answers_dir))
        if self.log_path is not None and not isinstance(self.log_path, Path):
            object.__setattr__(self, "log_path", Path(self.log_path))


@dataclass(frozen=True)
class RequestRecord:
    """One request as the simulator saw it.

    Times are ``time.monotonic()`` values: ``arrival`` when the request was fully read, ``start`` when a
    generation slot was granted (so ``start - arrival`` is the queueing delay; requests that take no slot have
    ``start == arrival``), ``end`` just before the last byte of the response was sent (or the connection
    closed). ``status`` is the HTTP status sent, 0 for a dropped or stalled connection (or one left hanging
    by a shutdown), 499 when the client went away first. ``max_tokens`` is the completion budget the server
    used (vLLM 0.32 lowers the requested one to what the context leaves). ``answer_key`` is the canned
    answer's key, ``"directive"``, or None. ``n`` is the number of choices asked for: ``completion_tokens``
    counts all of them, ``finish_reason`` is the first's, and the request held ``min(n, capacity)`` slots.
    """

    id: int
    method: str
    path: str
    arrival: float
    start: float
    end: float
    status: int
    fault: str | None = None
    stream: bool = False
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    answer_key: str | None = None
    stage: str | None = None
    attempt: int | None = None
    body: Any = None
    max_tokens: int | None = None
    n: int = 1

    @property
    def queued(self) -> float:
        """Seconds the request waited for a generation slot."""
        return self.start - self.arrival

    def to_json(self, *, with_body: bool = True) -> str:
        """One JSON line (no newline) for the request log; ``body`` is left out unless ``with_body``."""
        data = dataclasses.asdict(self)
        if not with_body:
            data.pop("body")
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))
