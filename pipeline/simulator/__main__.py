"""``python -m pipeline.simulator``: run the simulator as a stand-alone server until SIGINT/SIGTERM.

Prints exactly one line, ``listening on http://HOST:PORT/v1``, to stdout when ready (``--port 0`` picks a
free port); diagnostics go to stderr. Exit status: 0 after a signal, 1 when the server cannot start, 2 for
bad arguments. With ``--on-sigterm hang`` the first SIGTERM does what vLLM does: new connections are refused
while requests in flight hang; a second SIGTERM (or SIGINT) exits.
"""

from __future__ import annotations

import argparse
import functools
import logging
import signal
import sys
from pathlib import Path

import anyio

from .model import (
    COMPAT_MODES,
    COMPAT_VLLM,
    FAULT_KINDS,
    POLICY_FCFS,
    SCHEDULING_POLICIES,
    FaultPlan,
    LoadModel,
    SimConfig,
)
from .server import Simulator


def _kinds(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (``--help`` documents every option)."""
    p = argparse.ArgumentParser(
        prog="python -m pipeline.simulator",
        description="An OpenAI/vLLM-compatible model server simulator for tests and benchmarks.",
    )
    p.add_argument("--answers", type=Path, default=None, help="canned answers directory (answers_dir)")
    p.add_argument("--model", default="sim-model", help="served model name (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port to bind, 0 for any free port (default: 8000)")
    p.add_argument("--max-model-len", type=int, default=8192, help="context window in tokens")
    p.add_argument("--capacity", type=int, default=8, help="concurrent generations; more requests queue")
    p.add_argument("--latency", type=float, default=0.0, help="fixed seconds per generation")
    p.add_argument("--decode-per-token", type=float, default=0.0, help="seconds per completion token")
    p.add_argument("--prefill-per-token", type=float, default=0.0, help="seconds per prompt token")
    p.add_argument("--fault-rate", type=float, default=0.0, help="probability that a chat request faults")
    p.add_argument("--fault-kinds", type=_kinds, default=("503",),
                   help=f"comma-separated kinds for --fault-rate: {','.join(FAULT_KINDS)}")
    p.add_argument("--fault-script", type=_kinds, default=(),
                   help="comma-separated kinds for the first chat requests, 'ok' for none (e.g. 503,ok,429)")
    p.add_argument("--retry-after", type=float, default=1.0, help="Retry-After seconds of a 429")
    p.add_argument("--stall-seconds", type=float, default=30.0, help="seconds a 'stall' holds the connection")
    p.add_argument("--trickle-interval", type=float, default=2.0,
                   help="seconds between the bytes of a 'trickle' answer (default: %(default)s)")
    p.add_argument("--compat", choices=COMPAT_MODES, default=COMPAT_VLLM,
                   help="answer as vLLM 0.32 (default) or as older servers (legacy: flat error bodies, a 400 "
                        "when prompt + max_tokens exceed the context)")
    p.add_argument("--scheduling-policy", choices=SCHEDULING_POLICIES, default=POLICY_FCFS,
                   help="as vLLM's: serve waiting requests in arrival order (default) or by their 'priority' "
                        "field, smallest first (without it a non-zero priority is ignored, or refused with "
                        "--compat legacy)")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on /v1 routes, as vLLM's --api-key")
    p.add_argument("--on-sigterm", choices=("exit", "hang"), default="exit",
                   help="exit at once (default), or stop accepting and leave requests hanging as vLLM does "
                        "(a second signal exits)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fault RNG")
    p.add_argument("--log", type=Path, default=None, help="append one JSON line per request to this file")
    p.add_argument("--no-bodies", action="store_true", help="leave request bodies out of the log")
    p.add_argument("--no-tokenize", action="store_true", help="answer 404 on /tokenize")
    p.add_argument("--log-level", default="WARNING", help="stderr logging level (default: %(default)s)")
    return p


async def _serve(sim: Simulator, host: str, port: int, *, hang_on_sigterm: bool = False) -> int:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        try:
            async with sim.serve(host, port) as url:
                print(f"listening on {url}", flush=True)
                async for signum in signals:
                    if signum == signal.SIGTERM and hang_on_sigterm and not sim.stopping:
                        sim.stop_accepting()
                        continue
                    break
        except OSError as exc:
            print(f"simulator: cannot start: {exc}", file=sys.stderr, flush=True)
            return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the simulator from the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = SimConfig(
            answers_dir=args.answers,
            model=args.model,
            max_model_len=args.max_model_len,
            load=LoadModel(capacity=args.capacity, latency=args.latency,
                           decode_per_token=args.decode_per_token, prefill_per_token=args.prefill_per_token),
            faults=FaultPlan(rate=args.fault_rate, kinds=args.fault_kinds, script=args.fault_script,
                             seed=args.seed, retry_after=args.retry_after, stall_seconds=args.stall_seconds,
                             trickle_interval=args.trickle_interval),
            tokenize=not args.no_tokenize,
            log_path=args.log,
            record_bodies=not args.no_bodies,
            compat=args.compat,
            api_key=args.api_key,
            scheduling_policy=args.scheduling_policy,
        )
    except ValueError as exc:
        parser.error(str(exc))
    if args.answers is not None and not args.answers.is_dir():
        parser.error(f"--answers {args.answers}: not a directory")
    serve = functools.partial(_serve, hang_on_sigterm=args.on_sigterm == "hang")
    return anyio.run(serve, Simulator(config), args.host, args.port)


if __name__ == "__main__":
    sys.exit(main())
