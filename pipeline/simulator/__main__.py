"""``python -m pipeline.simulator``: run the simulator as a stand-alone server until SIGINT/SIGTERM.

Prints exactly one line, ``listening on http://HOST:PORT/v1``, to stdout when ready (``--port 0`` picks a
free port); diagnostics go to stderr. Exit status: 0 after a signal, 1 when the server cannot start, 2 for
bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from .model import FaultPlan, LoadModel, SimConfig
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
                   help="comma-separated kinds for --fault-rate: 500,502,503,429,drop,stall,length,malformed")
    p.add_argument("--fault-script", type=_kinds, default=(),
                   help="comma-separated kinds for the first chat requests, 'ok' for none (e.g. 503,ok,429)")
    p.add_argument("--retry-after", type=float, default=1.0, help="Retry-After seconds of a 429")
    p.add_argument("--stall-seconds", type=float, default=30.0, help="seconds a 'stall' holds the connection")
    p.add_argument("--seed", type=int, default=0, help="seed of the fault RNG")
    p.add_argument("--log", type=Path, default=None, help="append one JSON line per request to this file")
    p.add_argument("--no-bodies", action="store_true", help="leave request bodies out of the log")
    p.add_argument("--no-tokenize", action="store_true", help="answer 404 on /tokenize")
    p.add_argument("--log-level", default="WARNING", help="stderr logging level (default: %(default)s)")
    return p


async def _serve(sim: Simulator, host: str, port: int) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with sim.serve(host, port) as url:
            print(f"listening on {url}", flush=True)
            await stop.wait()
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
                             seed=args.seed, retry_after=args.retry_after, stall_seconds=args.stall_seconds),
            tokenize=not args.no_tokenize,
            log_path=args.log,
            record_bodies=not args.no_bodies,
        )
    except ValueError as exc:
        parser.error(str(exc))
    if args.answers is not None and not args.answers.is_dir():
        parser.error(f"--answers {args.answers}: not a directory")
    return asyncio.run(_serve(Simulator(config), args.host, args.port))


if __name__ == "__main__":
    sys.exit(main())
