"""Which pid-1 helper starts a sandboxed run: the compiled one (``sandbox_helper.c``) or the Python one.

Both do the same work (see :mod:`pipeline.sandbox_init`): private tmpfs, fork, rlimits, uid drop,
``no_new_privs``, exec, reap, report as JSON on a pipe, kill leftovers without a PID namespace. The compiled
helper saves the interpreter's start-up (about 14 ms of CPU per run). It is built once per source hash with
``gcc`` into the cache directory (``[toolchain] cache_dir``), atomically (temp file, then rename), at the first
:meth:`pipeline.sandbox.Sandbox.open` of a machine (each Ray node builds its own) or by ``scripts/setup.py``.
When gcc is missing or the build fails, the Python helper is used and the log says why.

As root, the compiled helper also makes the run's PID, IPC, mount and network namespaces itself
(``Helper.command(namespaces=...)``), saving the ``setpriv`` and ``unshare`` execs the Python helper is started
under (#16).

``[sandbox] helper`` (env ``C2RUST_SANDBOX_HELPER``): ``auto`` (compiled when it builds, else Python),
``compiled`` (refuse to start without it), ``python`` (always the fallback).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

log = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().with_name("sandbox_helper.c")
SCRIPT = str(Path(__file__).resolve().with_name("sandbox_init.py"))
HELPER_CHOICES = ("auto", "compiled", "python")
_BUILD_SECONDS = 120.0
_BUILD_OUTPUT_CAP = 20_000
_CFLAGS = ("-O2", "-Wall", "-Wextra", "-Werror", "-std=c11")
#: unshare(2) flags (<sched.h>) of the namespaces the compiled helper can make itself.
CLONE_FLAGS = {"mount": 0x00020000, "ipc": 0x08000000, "pid": 0x20000000, "net": 0x40000000}


@dataclass(frozen=True)
class Helper:
    """The helper in use: ``binary`` is the compiled one, or None for ``python -I -S sandbox_init.py``."""

    binary: Path | None
    why: str = ""

    @property
    def name(self) -> str:
        return "compiled" if self.binary is not None else "python"

    def describe(self) -> str:
        if self.binary is not None:
            return f"compiled helper {self.binary}"
        return f"Python helper{f' ({self.why})' if self.why else ''}"

    def command(
        self,
        argv: Sequence[str],
        *,
        fd: int,
        uid: int | None,
        rlimits: Sequence[tuple[str, int, int]],
        tmp: Sequence[str] = (),
        hide: Sequence[str] = (),
        tmp_size: int = 0,
        keep: str = "",
        cwd: str,
        pid1: bool,
        namespaces: Sequence[str] = (),
    ) -> list[str]:
        """The command line that runs ``argv`` under this helper.

        ``namespaces`` (names of :data:`CLONE_FLAGS`, "pid" and "mount" among them): the compiled helper makes
        them itself and is pid 1 in them (``pid1`` is then implied); it must be started by this process.
        ``hide``: directories covered by an empty tmpfs in the run's mount namespace (real paths); when one cannot
        be covered the program does not run.
        """
        if namespaces and self.binary is None:
            raise ValueError("only the compiled helper makes namespaces itself; start the Python one under unshare")
        if self.binary is None:
            config = {"fd": fd, "uid": uid, "rl": [list(r) for r in rlimits], "tmp": list(tmp),
                      "hide": list(hide), "tmp_size": tmp_size, "keep": keep, "cwd": cwd, "pid1": pid1}
            return [sys.executable, "-I", "-S", SCRIPT, json.dumps(config), *argv]
        cmd = [str(self.binary)]
        if namespaces:
            flags = 0
            for name in namespaces:
                flags |= CLONE_FLAGS[name]
            cmd += ["--unshare", str(flags), str(os.getpid())]
        cmd += [str(fd), "-" if uid is None else str(uid), "1" if pid1 else "0", str(tmp_size),
                keep, cwd, str(len(tmp)), *tmp, str(len(hide)), *hide, str(len(rlimits))]
        for name, soft, hard in rlimits:
            cmd += [str(getattr(resource, name)), str(_rlim(soft)), str(_rlim(hard))]
        return [*cmd, "--", *argv]


PYTHON = Helper(None)


def _rlim(value: int) -> int:
    return resource.RLIM_INFINITY if value < 0 else value


def source_hash() -> str:
    return hashlib.sha256(SOURCE.read_bytes() + " ".join((*_CFLAGS, "-static?")).encode()).hexdigest()[:16]


def binary_path(cache_dir: Path) -> Path:
    """Where the helper built from today's source lives in ``cache_dir``."""
    return Path(cache_dir) / f"sandbox-helper-{source_hash()}"


def build(cache_dir: Path) -> Helper:
    """The compiled helper, built into ``cache_dir`` unless already there; the Python one when it cannot be.

    Blocking (runs gcc): call it in a worker thread.
    """
    try:
        final = binary_path(cache_dir)
    except OSError as exc:
        return Helper(None, f"cannot read {SOURCE}: {exc.strerror}")
    if os.access(final, os.X_OK):
        return Helper(final)
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        return Helper(None, "gcc not found; install gcc for the compiled helper")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=".tmp-sandbox-helper-")
        os.close(fd)
    except OSError as exc:
        return Helper(None, f"cannot write to {final.parent} ({exc.strerror}); set [toolchain] cache_dir")
    try:
        # Static when the C library allows it (no dynamic loader at each start: 0.2 ms less per run).
        returncode, output = _run_compiler([compiler, *_CFLAGS, "-static", "-o", tmp, str(SOURCE)])
        if returncode != 0:
            returncode, output = _run_compiler([compiler, *_CFLAGS, "-o", tmp, str(SOURCE)])
        if returncode != 0:
            text = output.decode(errors="replace").strip()
            last = text.splitlines()[-1] if text else f"exit status {returncode}"
            return Helper(None, f"{compiler} could not build {SOURCE.name}: {last}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, final)
    except (OSError, subprocess.SubprocessError) as exc:
        return Helper(None, f"building {SOURCE.name} with {compiler} failed: {exc}")
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    log.info("sandbox: built the compiled helper %s", final)
    return Helper(final)


def _run_compiler(argv: list[str]) -> tuple[int, bytes]:
    """Run gcc in its own process group with a deadline (the group is killed past it); its exit status and
    the first bytes of its output."""
    env = {"PATH": os.environ.get("PATH", os.defpath), "LC_ALL": "C"}
    with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          env=env, start_new_session=True) as proc:
        try:
            output, _ = proc.communicate(timeout=_BUILD_SECONDS)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return -1, f"gcc did not finish in {_BUILD_SECONDS:.0f} s".encode()
    return proc.returncode, output[:_BUILD_OUTPUT_CAP]


def choose(choice: str, cache_dir: Path) -> Helper:
    """The helper for ``[sandbox] helper = choice``; ConfigError when ``compiled`` cannot be had. Blocking."""
    if choice not in HELPER_CHOICES:
        raise ConfigError(f"[sandbox] helper = {choice!r}: use one of {', '.join(HELPER_CHOICES)}")
    if choice == "python":
        return Helper(None, "[sandbox] helper = python")
    helper = build(cache_dir)
    if helper.binary is None:
        if choice == "compiled":
            raise ConfigError(
                f"[sandbox] helper = compiled, but {helper.why}. Install gcc, or set [sandbox] helper = auto "
                f"(or C2RUST_SANDBOX_HELPER=auto) to fall back to the Python helper"
            )
        log.warning("sandbox: using the Python helper (%s); each test run costs about 14 ms more CPU", helper.why)
    return helper
