#!/usr/bin/env python3
"""The README's first command: translate the bundled examples end to end against the bundled simulator.

Starts `python -m pipeline.simulator` with the canned answers of examples/answers on a free local port, runs
the batch CLI over examples/corpus into out/examples, stops the simulator, writes the run's report
(out/examples/report.html) and exits with the batch's status.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, default=ROOT / "out" / "examples")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("extra", nargs="*", help="more flags for batch_translate_generic.py (after --)")
    args = parser.parse_args()
    sim = subprocess.Popen(
        [sys.executable, "-m", "pipeline.simulator", "--answers", str(ROOT / "examples" / "answers"),
         "--port", "0", "--model", "sim-model", "--latency", "0.05", "--decode-per-token", "0.0005"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert sim.stdout is not None
        line = sim.stdout.readline().strip()
        if not line.startswith("listening on "):
            print(f"demo: the simulator did not start (said {line!r})", file=sys.stderr)
            return 1
        url = line.removeprefix("listening on ")
        print(f"demo: simulator serving canned answers at {url}", flush=True)
        corpus = ROOT / "examples" / "corpus"
        cmd = [
            sys.executable, str(ROOT / "batch_translate_generic.py"), "--c-files", str(corpus),
            "--json-files", str(corpus), "--output", str(args.output), "--workers", str(args.workers),
            "--base-url", url, "--model", "sim-model", *args.extra,
        ]
        # The key goes through the environment, never the command line (other users see command lines).
        env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_")} | {"VLLM_API_KEY": "demo"}
        code = subprocess.run(cmd, cwd=ROOT, env=env).returncode
        print(f"demo: results in {args.output} (each task's combined.rs under "
              "translated_code_unidiomatic/ and translated_code_idiomatic/)")
        page = args.output / "report.html"
        report = subprocess.run([sys.executable, str(ROOT / "batch_translate_generic.py"), "report",
                                 str(args.output), "-o", str(page)], cwd=ROOT, env=env, capture_output=True,
                                text=True)
        if report.returncode != 0:
            print(f"demo: the report could not be written: {report.stderr.strip()}", file=sys.stderr)
            return code or report.returncode
        print(f"demo: report in {page} (open it in a browser)")
        return code
    finally:
        sim.terminate()
        try:
            sim.wait(timeout=10)
        except subprocess.TimeoutExpired:
            sim.kill()


if __name__ == "__main__":
    sys.exit(main())
