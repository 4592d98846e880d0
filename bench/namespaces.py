"""``python -m bench.namespaces``: the CPU of starting a sandboxed run of ``/bin/true`` (#16), as root.

Compares, with the compiled helper of this tree (built into ``--cache-dir``), the chain ``setpriv --pdeathsig
KILL unshare --pid --ipc --fork --kill-child --mount-proc --net HELPER`` (what every run paid before, and what the
Python helper still pays) with ``HELPER --unshare`` (the helper makes the namespaces itself). Both bare (no uid
change, no tmpfs) and as a test run has it (a fresh uid, the four private tmpfs, the six rlimits). Cases alternate
within each round; CPU is that of the children (``RUSAGE_CHILDREN``), per start.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pipeline.sandbox import PRIVATE_TMP_DIRS, Limits, _rlimits
from pipeline.sandbox_helper import CLONE_FLAGS, Helper, build

from .common import RESULTS, markdown_table


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.namespaces", description=__doc__)
    p.add_argument("--rounds", type=int, default=3, help="rounds, cases alternating (default 3)")
    p.add_argument("--runs", type=int, default=50, help="starts per case and round (default 50)")
    p.add_argument("--cache-dir", type=Path, default=RESULTS / "cache", help="where the helper is built")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        p.error("needs root (the namespaces and the uid change)")
    helper = build(args.cache_dir.resolve())
    if helper.binary is None:
        p.error(f"no compiled helper: {helper.why}")
    chain = [shutil.which("setpriv") or "setpriv", "--pdeathsig", "KILL", shutil.which("unshare") or "unshare",
             "--pid", "--ipc", "--fork", "--kill-child", "--mount-proc", "--net"]
    scratch = tempfile.mkdtemp(prefix="bench-namespaces-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    os.chmod(scratch, 0o711)
    rlimits = _rlimits(Limits(), 64)

    def command(h: Helper, fd: int, full: bool, own: bool) -> list[str]:
        return h.command(
            ["/bin/true"], fd=fd, uid=(1 << 30) + 12345 if full else None, rlimits=rlimits if full else (),
            tmp=PRIVATE_TMP_DIRS if full else (), tmp_size=64 << 20, keep=scratch, cwd=scratch, pid1=True,
            namespaces=tuple(CLONE_FLAGS) if own else (),
        )

    cases: dict[str, Callable[[int, bool], list[str]]] = {
        "setpriv + unshare + helper": lambda fd, full: [*chain, *command(helper, fd, full, False)],
        "helper --unshare": lambda fd, full: command(helper, fd, full, True),
    }
    samples: dict[tuple[str, bool], list[tuple[float, float]]] = {}
    try:
        for _ in range(args.rounds):
            for full in (False, True):
                for name, make in cases.items():
                    read_fd, write_fd = os.pipe()
                    try:
                        cpu, wall = _cpu(), time.perf_counter()
                        for _ in range(args.runs):
                            done = subprocess.run(make(write_fd, full), pass_fds=(write_fd,), check=False)
                            report = os.read(read_fd, 4096)
                            if done.returncode != 0 or b'"rc": 0' not in report:
                                p.error(f"{name}: exit status {done.returncode}, report {report!r}")
                        samples.setdefault((name, full), []).append(
                            ((_cpu() - cpu) / args.runs, (time.perf_counter() - wall) / args.runs))
                    finally:
                        os.close(read_fd)
                        os.close(write_fd)
    finally:
        os.rmdir(scratch)
    rows = [
        [name, "uid, 4 tmpfs, 6 rlimits" if full else "bare", f"{statistics.median(s[0] for s in got) * 1000:.2f}",
         f"{statistics.median(s[1] for s in got) * 1000:.2f}", f"{len(got)} x {args.runs}"]
        for (name, full), got in samples.items()
    ]
    print(markdown_table(["start", "helper does", "CPU ms", "wall ms", "samples"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
