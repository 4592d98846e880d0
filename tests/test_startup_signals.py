"""Ctrl-C or SIGTERM while a run starts (first libc build, preflight): exit 130, nothing half-made left behind."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.sandbox import SCRATCH_PREFIX, choose_scratch_root
from tests.conftest import Cli, Corpus
from tests.test_batch_e2e import _signal_when, _start_run

SIGNALS = [pytest.param(signal.SIGINT, id="SIGINT"), pytest.param(signal.SIGTERM, id="SIGTERM")]


class SilentServer:
    """Accepts connections and never answers: preflight waits on it until the signal comes."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.accepted: list[socket.socket] = []
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def received(self) -> bytes:
        """What the clients sent on every accepted connection so far."""
        data = b""
        for conn in self.accepted:
            conn.settimeout(0.2)
            try:
                data += conn.recv(1 << 16)
            except (TimeoutError, OSError):
                pass
        return data

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    try:
        yield server
    finally:
        server.close()


def _scratch_of(pid: int) -> list[Path]:
    root, _why = choose_scratch_root("")
    return [p for p in root.iterdir() if p.name.startswith(f"{SCRATCH_PREFIX}{pid}-")]


def _processes_mentioning(text: str) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    return [line for line in ps.splitlines() if text in line and "ps -eo" not in line]


@pytest.mark.parametrize("signum", SIGNALS)
def test_signal_during_the_first_libc_build_leaves_no_half_built_cache(
    cli: Cli, corpus: Corpus, tmp_path: Path, silent_server: SilentServer, signum: int
) -> None:
    """Interrupted while building the libc crate into a fresh cache: exit 130, the cache holds no partial build."""
    corpus.add_task("t")
    cache = tmp_path / "fresh-cache"
    proc = _start_run(cli, corpus.corpus, tmp_path / "out", silent_server.url, "--cache-dir", cache)
    stderr = _signal_when(proc, lambda: any(cache.glob(".libc-build-*")), signum)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    # The compiled sandbox helper is built beside the libc crate, atomically (temp file, rename): a finished
    # helper may stay; nothing else, and nothing half-made, may.
    left = sorted(p.name for p in cache.iterdir() if not re.fullmatch(r"sandbox-helper-[0-9a-f]+", p.name))
    assert left == [], f"a partial build was left in the cache: {left}"
    assert not _processes_mentioning(str(cache))
    assert not _scratch_of(proc.pid)
    # The preflight runs beside the libc build once the model client is imported (start-up, #16): whether it
    # asked for the model list yet or not, no chat request may be sent when start-up was interrupted.
    assert b"chat/completions" not in silent_server.received()


@pytest.mark.parametrize("signum", SIGNALS)
def test_signal_during_preflight_exits_130_and_removes_the_scratch(
    cli: Cli, corpus: Corpus, tmp_path: Path, silent_server: SilentServer, signum: int
) -> None:
    """Interrupted while the server keeps preflight waiting: exit 130, the sandbox scratch is gone."""
    corpus.add_task("t")
    proc = _start_run(cli, corpus.corpus, tmp_path / "out", silent_server.url)
    stderr = _signal_when(proc, lambda: bool(silent_server.accepted), signum)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert not _scratch_of(proc.pid)
    assert not (tmp_path / "out" / "ledger.journal.jsonl").exists()


SIGTERM_BETWEEN_WATCHERS = """
import os, signal, sys
import anyio
from pipeline.engine import RunState, _watch_signals

async def main() -> None:
    async with anyio.create_task_group() as tg:  # start-up's watcher, ended as start-up ends
        tg.start_soon(_watch_signals, tg.cancel_scope, RunState(), "start-up")
        await anyio.sleep(0.1)
        tg.cancel_scope.cancel()
    os.kill(os.getpid(), signal.SIGTERM)  # before the run's watcher listens
    await anyio.sleep(5)

try:
    anyio.run(main)
except KeyboardInterrupt:
    print("interrupted, cleaned up")
    sys.exit(130)
"""


def test_sigterm_between_the_start_up_and_the_run_watchers_interrupts_cleanly() -> None:
    """A signal watcher that ends leaves SIGTERM at the default action (asyncio restores SIG_DFL): a SIGTERM in
    the moment before the next watcher listens used to kill the CLI without clean-up (exit -15)."""
    import sys

    from tests.conftest import ROOT

    proc = subprocess.run([sys.executable, "-c", SIGTERM_BETWEEN_WATCHERS], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 130, (proc.returncode, proc.stderr[-2000:])
    assert "interrupted, cleaned up" in proc.stdout
