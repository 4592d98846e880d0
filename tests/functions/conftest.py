"""Fixtures of the function-level tests: the C compiler's header directory, the example programs parsed once,
and the toolchain and sandbox the FFI and combine tests build and run with."""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pipeline.build import Toolchain
from pipeline.c_program import CProgram, parse_program
from pipeline.config import SandboxSettings, ToolchainSettings
from pipeline.sandbox import Sandbox
from tests.conftest import ROOT

FUNCTIONS = ROOT / "examples" / "functions"
#: The bundled examples translated from their canned answers take a minute or more each: `make test-examples`.
collect_ignore = [] if os.environ.get("C2RUST_EXAMPLES_SUITE") else ["test_example_answers.py"]


@pytest.fixture(scope="session")
def include_dirs() -> tuple[str, ...]:
    """gcc's own header directory (stddef.h, limits.h), which the libclang wheel does not ship."""
    found = subprocess.run(["gcc", "-print-file-name=include"], capture_output=True, text=True, check=True)
    return (found.stdout.strip(),)


@pytest.fixture(scope="session")
def inventory(include_dirs: tuple[str, ...]) -> CProgram:
    return parse_program(FUNCTIONS / "inventory.c", include_dirs=include_dirs)


@pytest.fixture(scope="session")
def exprcalc(include_dirs: tuple[str, ...]) -> CProgram:
    return parse_program(FUNCTIONS / "exprcalc.c", include_dirs=include_dirs)


@pytest.fixture
async def toolchain(cache_dir: Path) -> Toolchain:
    return await Toolchain.prepare(ToolchainSettings(cache_dir=str(cache_dir), clippy=False))


@pytest.fixture
async def services(toolchain: Toolchain) -> AsyncIterator[tuple[Toolchain, Sandbox]]:
    async with Sandbox.open(SandboxSettings()) as sandbox:
        yield toolchain, sandbox
