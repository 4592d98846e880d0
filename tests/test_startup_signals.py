"""Ctrl-C or SIGTERM while a run starts (first libc build, preflight): exit 130, nothing half-made left behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.sandbox import SCRATCH_PREFIX
from tests.conftest import ROOT, Corpus

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


def _start(corpus: Corpus, out: Path, url: str, cache: Path, cwd: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_")}
    argv = [sys.executable, str(ROOT / "batch_translate_generic.py"), "--c-files", str(corpus.corpus),
            "--json-files", str(corpus.corpus), "--output", str(out), "--base-url", url, "--model", "sim-model",
            "--cache-dir", str(cache)]
    return subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _interrupt_when(proc: subprocess.Popen[str], condition: Any, signum: int) -> tuple[str, float]:
    """Send ``signum`` once ``condition()`` holds; return the run's stderr and how long it took to exit."""
    try:
        deadline = time.monotonic() + 60
        while not condition():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "start-up phase not reached"
            time.sleep(0.02)
        proc.send_signal(signum)
        sent = time.monotonic()
        _out, err = proc.communicate(timeout=60)
        return err, time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _scratch_of(pid: int) -> list[Path]:
    return [p for p in Path(tempfile.gettempdir()).iterdir() if p.name.startswith(f"{SCRATCH_PREFIX}{pid}-")]


def _processes_mentioning(text: str) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    return [line for line in ps.splitlines() if text in line and "ps -eo" not in line]


@pytest.mark.parametrize("signum", SIGNALS)
def test_signal_during_the_first_libc_build_leaves_no_half_built_cache(
    corpus: Corpus, tmp_path: Path, silent_server: SilentServer, signum: int
) -> None:
    """Interrupted while building the libc crate into a fresh cache: exit 130, the cache holds no partial build."""
    corpus.add_task("t")
    cache = tmp_path / "fresh-cache"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = _start(corpus, tmp_path / "out", silent_server.url, cache, cwd)
    stderr, seconds = _interrupt_when(proc, lambda: any(cache.glob(".libc-build-*")), signum)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert seconds < 30
    assert sorted(p.name for p in cache.iterdir()) == [], "a partial libc build was left in the cache"
    assert not _processes_mentioning(str(cache))
    assert not _scratch_of(proc.pid)
    assert not silent_server.accepted, "no request may be sent when start-up was interrupted"


@pytest.mark.parametrize("signum", SIGNALS)
def test_signal_during_preflight_exits_130_and_removes_the_scratch(
    corpus: Corpus, tmp_path: Path, silent_server: SilentServer, cache_dir: Path, signum: int
) -> None:
    """Interrupted while the server keeps preflight waiting: exit 130 at once, the sandbox scratch is gone."""
    corpus.add_task("t")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = _start(corpus, tmp_path / "out", silent_server.url, cache_dir, cwd)
    stderr, seconds = _interrupt_when(proc, lambda: bool(silent_server.accepted), signum)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert seconds < 30
    assert not _scratch_of(proc.pid)
    assert not (tmp_path / "out" / "ledger.journal.jsonl").exists()
