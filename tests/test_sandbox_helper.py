"""The compiled sandbox helper: built once per source into the cache directory, the Python helper as fallback.

Every behaviour of the sandbox itself is specified in tests/test_sandbox.py and tests/test_hostile_e2e.py, which
run once with each helper.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import sandbox_helper
from pipeline.config import SandboxSettings, ToolchainSettings
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



def _children(pid: int) -> list[int]:
    try:
        return [int(w) for w in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _sleeping(token: str) -> bool:
    """Whether a live ``sleep TOKEN`` runs (not a wrapper whose command line names it)."""
    for entry in os.listdir("/proc"):
        try:
            if (
                entry.isdigit() and Path(f"/proc/{entry}/comm").read_text().strip() == "sleep"
                and token.encode() in Path(f"/proc/{entry}/cmdline").read_bytes()
                and Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
            ):
                return True
        except OSError:
            continue
    return False


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_the_helper_making_namespaces_ends_the_way_sandbox_py_expects(tmp_path: Path) -> None:
    """What sandbox.py reads from the helper started with ``--unshare`` is what ``unshare --fork`` gave it (#16):
    the program's status in the report and exit status 0 once pid 1 reaped everything; SIGTERM and SIGINT to the
    waiting process are ignored (unshare blocks them too); when pid 1 is killed, it dies of the same signal, with
    no report and nothing left. (util-linux 2.38's unshare exits 1 there, "sigprocmask unblock failed".)"""
    helper = sandbox_helper.build(ToolchainSettings().resolved_cache_dir())
    assert helper.binary is not None, helper.why
    token = f"9876.{secrets.randbelow(10**8):08d}"
    outcomes = []
    for script in ("echo hi; exit 3", f"sleep {token}"):
        read_fd, write_fd = os.pipe()
        cmd = helper.command(["sh", "-c", script], fd=write_fd, uid=None, rlimits=(), cwd=str(tmp_path), pid1=True,
                             namespaces=("pid", "ipc", "mount", "net"))
        proc = subprocess.Popen(cmd, pass_fds=(write_fd,), stdout=subprocess.PIPE, start_new_session=True)
        os.close(write_fd)
        try:
            if "sleep" in script:
                deadline = time.monotonic() + 5
                while not _sleeping(token) and time.monotonic() < deadline:
                    time.sleep(0.01)
                for sig in (signal.SIGTERM, signal.SIGINT):
                    proc.send_signal(sig)
                time.sleep(0.2)
                assert proc.poll() is None, proc.returncode
                (pid1,) = _children(proc.pid)
                os.kill(pid1, signal.SIGKILL)
            out, _ = proc.communicate(timeout=5)
            outcomes.append((proc.returncode, out, os.read(read_fd, 4096)))
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            os.close(read_fd)
    (code, out, report), (killed_code, _, killed_report) = outcomes
    assert (code, out) == (0, b"hi\n") and b'"rc": 3' in report, (code, out, report)
    assert (killed_code, killed_report) == (-signal.SIGKILL, b"")
    assert not _sleeping(token)
