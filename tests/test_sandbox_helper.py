"""The compiled sandbox helper: built once per source into the cache directory, the Python helper as fallback.

Every behaviour of the sandbox itself is specified in tests/test_sandbox.py and tests/test_hostile_e2e.py, which
run once with each helper.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

import pytest

from pipeline.config import SandboxSettings
from pipeline.errors import ConfigError
from pipeline.sandbox import Limits, Sandbox

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux-only"),
    pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc"),
]

LIMITS = Limits(wall_seconds=10.0, output_bytes=10_000)


def without_gcc(tmp_path: Path) -> str:
    """A PATH with what the sandbox uses (unshare, setpriv) and no C compiler."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("unshare", "setpriv"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    return str(bin_dir)


async def test_the_compiled_helper_is_built_once_into_the_cache_and_runs_the_programs(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    async with Sandbox.open(SandboxSettings(), cache_dir=cache) as sb:
        async with sb.workdir() as wd:
            result = await sb.run(["sh", "-c", "echo hello; exit 3"], cwd=wd, limits=LIMITS)
        described = sb.isolation.describe()
    built = [p.name for p in cache.iterdir()]
    assert len(built) == 1 and built[0].startswith("sandbox-helper-"), built  # no temporary file left
    helper = cache / built[0]
    assert os.access(helper, os.X_OK)
    assert f"compiled helper {helper}" in described
    assert (result.returncode, result.stdout) == (3, b"hello\n")
    first = helper.stat()
    async with Sandbox.open(SandboxSettings(), cache_dir=cache):
        pass
    again = helper.stat()
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)  # not rebuilt


async def test_without_gcc_the_python_helper_runs_the_programs_and_the_log_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PATH", without_gcc(tmp_path))
    caplog.set_level(logging.WARNING)
    async with Sandbox.open(SandboxSettings(), cache_dir=tmp_path / "cache") as sb:
        async with sb.workdir() as wd:
            result = await sb.run(["sh", "-c", "echo hello; exit 3"], cwd=wd, limits=LIMITS)
        described = sb.isolation.describe()
    assert (result.returncode, result.stdout) == (3, b"hello\n")
    assert "Python helper (gcc not found" in described
    assert "using the Python helper (gcc not found" in caplog.text
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


async def test_helper_compiled_refuses_to_start_without_gcc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", without_gcc(tmp_path))
    with pytest.raises(ConfigError, match=r"\[sandbox\] helper = compiled, but gcc not found.*helper = auto"):
        async with Sandbox.open(SandboxSettings(helper="compiled"), cache_dir=tmp_path / "cache"):
            pass


async def test_a_source_that_does_not_compile_falls_back_to_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from pipeline import sandbox_helper

    broken = tmp_path / "sandbox_helper.c"
    broken.write_text("int main(void) { return undefined_name; }\n")
    monkeypatch.setattr(sandbox_helper, "SOURCE", broken)
    caplog.set_level(logging.WARNING)
    async with Sandbox.open(SandboxSettings(), cache_dir=tmp_path / "cache") as sb, sb.workdir() as wd:
        result = await sb.run(["true"], cwd=wd, limits=LIMITS)
    assert result.ok
    assert "could not build sandbox_helper.c" in caplog.text
    assert not list((tmp_path / "cache").iterdir())  # the failed build left nothing
