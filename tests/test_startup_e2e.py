"""Start-up through the CLI: the toolchain and sandbox probes run beside the model client's imports and the
preflight (#16), and what stops a run there still stops it before any request, with its own message."""

from __future__ import annotations

import importlib
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from pipeline.startup import UNUSED_OPTIONAL, lean_imports
from tests.conftest import Cli
from tests.test_batch_e2e import flat_corpus, run

MISSING_RUSTC = '[toolchain]\nrustc = "no-such-rustc-xyz"\n'


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


def test_a_missing_compiler_stops_the_run_before_any_request(
    cli: Cli, simulator_factory: Any, tmp_path: Path
) -> None:
    """rustc not found: exit 2 with the setting and the fix named; the server is sent no chat request and no
    task is recorded."""
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    flat_corpus(corpus, 3)
    (cli.cwd / "sactor.toml").write_text(MISSING_RUSTC)
    sim, url = simulator_factory()
    result = run(cli, corpus, out, url, timeout=60)
    assert result.returncode == 2, result.output
    assert "[toolchain] rustc = 'no-such-rustc-xyz' was not found" in result.stderr
    assert "Traceback" not in result.output
    assert sim.chat_requests == []
    assert not (out / "ledger.journal.jsonl").exists()
    assert not (out / "prog000").exists()


def test_the_toolchain_message_comes_first_when_the_server_is_down_too(cli: Cli, tmp_path: Path) -> None:
    """Both the compiler and the server are missing: the compiler's message and exit 2, not the preflight's,
    whichever of the two start-up notices first."""
    corpus = tmp_path / "corpus"
    flat_corpus(corpus, 1)
    (cli.cwd / "sactor.toml").write_text(MISSING_RUSTC)
    result = run(cli, corpus, tmp_path / "out", _closed_port_url(), timeout=60)
    assert result.returncode == 2, result.output
    assert "[toolchain] rustc = 'no-such-rustc-xyz' was not found" in result.stderr
    assert "connect" not in result.stderr.lower()


@pytest.mark.parametrize("name", UNUSED_OPTIONAL)
def test_modules_kept_out_of_start_up_can_still_be_imported_after_it(name: str) -> None:
    """The SDKs' optional dependencies a run never uses are kept out of start-up's imports only: whoever needs
    one later (Ray imports aiohttp) imports it as usual."""
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} is not installed")
    saved = sys.modules.pop(name, None)
    try:
        with lean_imports(), pytest.raises(ImportError):
            importlib.import_module(name)
        assert importlib.import_module(name).__name__ == name
    finally:
        if saved is not None:
            sys.modules[name] = saved
