"""A stand-in for vLLM's OpenAI-compatible server, for tests, the demo and benchmarks.

A real HTTP/1.1 server (asyncio streams, anyio task groups) on 127.0.0.1 that answers chat completions from
canned answer files or from ``@sim`` directives embedded in the prompt, queues generations like vLLM (``capacity``
concurrent slots, FIFO), paces them with a latency model, and injects faults (error statuses, 429 with
Retry-After, dropped and stalled connections, truncated and malformed answers) by script or by a seeded
rate. Every request is recorded as a :class:`RequestRecord` (and optionally logged as JSON lines).

It shares no code with the rest of :mod:`pipeline` on purpose, so it can disagree with the client; it reads
only the stage declarations (:data:`pipeline.records.STAGE_SPECS`, plain data), so a declared stage is told apart.

Endpoints: ``GET /health``, ``GET /v1/models``, ``GET /version``, ``POST /tokenize``,
``POST /v1/chat/completions`` (JSON or SSE streaming). Token counts follow :mod:`.tokens`; answers follow
:mod:`.answers` and :mod:`.directive`.

Usage::

    sim = Simulator(SimConfig(answers_dir=Path("answers"), faults=FaultPlan(script=("503", "ok"))))
    with sim.running() as base_url:          # or: async with sim.serve() as base_url
        ...
    sim.chat_requests                        # what the server saw

Command line: ``python -m pipeline.simulator --help``.
"""

from .model import FAULT_KINDS, FaultPlan, LoadModel, RequestRecord, SimConfig
from .server import Simulator

__all__ = ["FAULT_KINDS", "FaultPlan", "LoadModel", "RequestRecord", "SimConfig", "Simulator"]
