"""Running programs we do not trust (translations written by a model) and tools we do (rustc).

Every untrusted run goes through :meth:`Sandbox.run`. What it puts in force, when the machine allows it:

* a wall deadline that kills the whole process tree, daemons included;
* resource limits on every process of the run (CPU time, address space, file size, open files, number of
  processes, no core dumps);
* output read while the program runs, at most ``output_bytes`` per stream (past it the tree is killed);
* an environment built from scratch: nothing of ``os.environ`` (API keys!) reaches the program;
* a private working copy of the test's files, owned by a fresh unprivileged uid per run, so that the corpus,
  the results and the home directory (root's, with normal modes) are not writable to it;
* PID, IPC, network and mount namespaces: killing the namespace's init kills every process in it,
  there is no network but a loopback that is down, and ``/tmp``, ``/var/tmp``, ``/dev/shm`` and ``/run/lock``
  are private, size-capped tmpfs (the sandbox's scratch root stays visible at its own path);
* the run's corpus, results and cache folders (``hidden`` of :meth:`Sandbox.open`) covered by an empty tmpfs in
  that mount namespace: the expected outputs (samples, the C program, cached oracle outputs) are out of reach
  even where their modes let anyone read them.

How a run is started, as root: the compiled ``sandbox_helper.c`` (built once into the cache directory, see
:mod:`pipeline.sandbox_helper`) with ``--unshare``: it sets ``PR_SET_PDEATHSIG``, makes the namespaces, forks pid 1
of them and waits for it, the way ``setpriv --pdeathsig KILL unshare --pid --ipc --fork --kill-child --mount-proc
[--net]`` would, without those two execs (#16). Where it cannot (the probe says why in :class:`Isolation`), without
root (``unshare --user --map-root-user``), or with the fallback helper ``python -I -S sandbox_init.py``, the helper
is started under that ``setpriv ... unshare ...`` chain.
The helper (pid 1 of the namespace, still root) mounts the private tmpfs, forks,
and the child sets the rlimits, drops to the run's uid/gid with no supplementary groups and ``no_new_privs``,
and execs the program. The helper reaps everything, and reports the program's exit status and CPU time on a
private pipe. When it exits, the kernel kills whatever is left in the namespace. When a run did not end by
itself (deadline, output cap, cancellation) and the helper could not answer for its leftovers, the host's
``/proc`` is swept for processes of the run's uid (or, without a separate uid, of the run's environment marker)
until none is left. Fresh uids are checked against one ``/proc`` scan per batch of runs, not one per run.

Without root or ``unshare`` the same helper runs without namespaces (a child subreaper that kills what its
program left behind); :class:`Isolation` says what is in force, and a single warning names what is missing.

Trusted tools use :func:`run_process`: own process group, deadline, memory limit, no core dumps, capped
output, the group killed on timeout; no namespaces and no uid change.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import itertools
import json
import logging
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from .config import SandboxSettings, ToolchainSettings
from .errors import ConfigError
from .sandbox_helper import PYTHON, Helper, choose

log = logging.getLogger(__name__)

#: The only PATH an untrusted program gets unless the caller passes one.
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
#: Environment variable carrying a per-run marker: the sweep of a killed run finds every process of the run by it
#: besides its uid: the program's daemons when runs share our uid (no namespaces), and the helper that is pid 1 of
#: its namespaces (it runs as root), which a cancelled run waits for too.
MARKER_VAR = "C2R_SANDBOX_RUN"
#: World-writable places that get a private tmpfs in the mount namespace.
PRIVATE_TMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
#: What a program needs to start: a folder to hide that holds one of these (or is one) stays visible.
_SYSTEM_DIRS = ("/bin", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/sbin", "/sys", "/usr")
#: At most this many folders are hidden per run (the compiled helper takes 16).
_MAX_HIDDEN = 12
#: After the program exits, how long its output pipes may stay open (held by a straggler) before the
#: stragglers are killed.
_DRAIN_GRACE = 0.3
#: How long the sweep keeps killing a run's leftovers before it gives up and logs an error.
_SWEEP_SECONDS = 5.0
_STATUS_MAX = 1 << 16
#: Fresh uids handed out per /proc scan (each checked against the scan and the user and group databases).
_UID_BATCH = 64
#: How long a count of our own processes (for RLIMIT_NPROC without a uid of its own) is reused.
_NPROC_COUNT_SECONDS = 1.0
#: Allowance for processes of ours started since that count (other runs, rustc's threads).
_NPROC_MARGIN = 32
#: The helper trusted tools (:func:`run_process`) start under: the one the last :meth:`Sandbox.open` chose.
_tool_helper: Helper = PYTHON


#: Scratch roots are named PREFIX<pid>-<random>, so a later run can tell a killed run's leftovers.
SCRATCH_PREFIX = "c2rust-sandbox-"
#: The RAM-backed directory the default scratch space prefers, and the free space it must have for that.
SHM_DIR = Path("/dev/shm")
SHM_MIN_FREE = 2 << 30


@dataclass(frozen=True)
class Limits:
    """What one run may use. Build it with :meth:`Sandbox.limits` so the ``[sandbox]`` settings apply."""

    wall_seconds: float = 60.0
    cpu_seconds: int = 30
    memory_bytes: int = 1 << 30
    file_size_bytes: int = 64 << 20
    open_files: int = 256
    processes: int = 64
    output_bytes: int = 40_000  # per stream


@dataclass(frozen=True)
class ProcessResult:
    """How a run ended. ``stdout``/``stderr`` hold at most ``output_bytes`` each.

    ``returncode`` is the exit status when the program exited; ``signal`` the signal number that ended it.
    Both are None when the run was stopped by us (timeout, output cap) before it ended by itself.
    """

    argv: tuple[str, ...]
    returncode: int | None
    signal: int | None
    timed_out: bool
    output_exceeded: bool
    stdout: bytes
    stderr: bytes
    wall_seconds: float
    cpu_seconds: float | None
    #: The limits the run had, for :meth:`describe` (None when unknown).
    limits: Limits | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """Exited with status 0, in time, within the output cap."""
        return self.returncode == 0 and not self.timed_out and not self.output_exceeded

    @property
    def limit_hit(self) -> str | None:
        """The resource limit that ended the run ("cpu", "file_size", "memory"), or None."""
        if self.timed_out or self.output_exceeded:
            return None
        if self.limits is not None and self.signal == signal.SIGXCPU:
            return "cpu"
        if self.limits is not None and self.signal == signal.SIGXFSZ:
            return "file_size"
        if not self.ok and _looks_out_of_memory(self.stderr):
            return "memory"
        return None

    def describe(self) -> str:
        """How the run ended, in words for a person (and for the model's repair prompt)."""
        if self.timed_out:
            wall = self.limits.wall_seconds if self.limits else self.wall_seconds
            return f"timed out after {wall:.1f} s; process tree killed"
        if self.output_exceeded:
            cap = self.limits.output_bytes if self.limits else max(len(self.stdout), len(self.stderr))
            return f"output exceeded {cap} bytes; killed"
        if self.signal is not None:
            base = f"killed by signal {_signal_name(self.signal)}"
        elif self.returncode is not None:
            base = f"exit status {self.returncode}"
        else:
            base = "ended without an exit status"
        limits = self.limits
        if limits is not None and self.signal == signal.SIGXCPU:
            return f"CPU time limit of {limits.cpu_seconds} s exceeded ({base})"
        if limits is not None and self.signal == signal.SIGXFSZ:
            return f"file size limit of {limits.file_size_bytes >> 20} MB exceeded ({base})"
        if not self.ok and _looks_out_of_memory(self.stderr):
            if limits is not None:
                return f"memory limit of {limits.memory_bytes >> 20} MB reached ({base})"
            return f"out of memory ({base})"
        return base


_OOM_MARKERS = (
    b"memory allocation of",  # Rust's alloc error handler
    b"MemoryError",
    b"std::bad_alloc",
    b"Cannot allocate memory",
    b"out of memory",
)


def _looks_out_of_memory(stderr: bytes) -> bool:
    tail = stderr[-4000:]
    return any(m in tail for m in _OOM_MARKERS)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"{number}"


@dataclass(frozen=True)
class Isolation:
    """What the sandbox has in force on this machine, as the start-up probe found it."""

    pid_namespace: bool
    net_namespace: bool
    mount_namespace: bool
    unprivileged: bool
    rlimits: bool
    notes: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        return all(self._parts().values())

    def missing(self) -> list[str]:
        """Names of the protections that are not in force."""
        return [name for name, ok in self._parts().items() if not ok]

    def _parts(self) -> dict[str, bool]:
        return {
            "PID namespace": self.pid_namespace,
            "network namespace": self.net_namespace,
            "mount namespace with private /tmp": self.mount_namespace,
            "separate unprivileged uid": self.unprivileged,
            "resource limits": self.rlimits,
        }

    def describe(self) -> str:
        """One line for the start-up notice and the run summary."""
        have = [name for name, ok in self._parts().items() if ok]
        if self.complete:
            text = "complete: " + ", ".join(have)
        else:
            text = f"incomplete: missing {', '.join(self.missing())}"
            text += f"; in force: {', '.join(have)}" if have else "; nothing in force"
        if self.notes:
            text += " (" + "; ".join(self.notes) + ")"
        return text


@dataclass(frozen=True)
class _Mode:
    """How runs are wrapped, as chosen by the probe."""

    name: str
    unshare: tuple[str, ...] | None  # the unshare command line, or None (no namespaces, or the helper's own)
    drop_uid: bool
    private_tmp: bool
    #: The namespaces the compiled helper makes itself (``sandbox_helper.CLONE_FLAGS`` names), instead of unshare.
    helper_namespaces: tuple[str, ...] = ()

    @property
    def namespaces(self) -> bool:
        """Whether runs get namespaces (and the helper is their pid 1)."""
        return self.unshare is not None or bool(self.helper_namespaces)

    @property
    def pid_namespace(self) -> bool:
        return "pid" in self.helper_namespaces or (self.unshare is not None and "--pid" in self.unshare)

    @property
    def net_namespace(self) -> bool:
        return "net" in self.helper_namespaces or (self.unshare is not None and "--net" in self.unshare)

    def describe(self) -> str:
        """Who makes the namespaces, for :attr:`Isolation.notes`."""
        if self.helper_namespaces:
            return "namespaces made by the compiled helper"
        return "namespaces made by unshare" if self.unshare is not None else "no namespaces"


class Sandbox:
    """Runs untrusted programs. Open one per batch run with ``async with Sandbox.open(settings) as sb``.

    Concurrent :meth:`run` calls are fine, but each needs its own working directory: a run takes ownership
    of its :meth:`workdir` for its fresh uid.
    """

    isolation: Isolation
    scratch: Path

    def __init__(
        self, settings: SandboxSettings, scratch: Path, mode: _Mode, helper: Helper = PYTHON,
        hidden: tuple[str, ...] = (),
    ) -> None:
        self.settings = settings
        self.scratch = scratch
        #: Real paths of the folders runs must not see (with a mount namespace): see :meth:`open`.
        self.hidden = hidden
        self._mode = mode
        self.helper = helper
        self.isolation = Isolation(False, False, False, False, False, ("not probed yet",))
        # A random block of uids per sandbox, one uid per run: RLIMIT_NPROC counts per uid, so a fork bomb in
        # one run cannot starve another, and the sweep finds exactly this run's processes. High up, above the
        # usual system, user and container (subuid) ranges; each is checked to be unused before it is taken.
        self._uids = itertools.count((1 << 30) + secrets.randbelow(1 << 29))
        self._workdirs: set[Path] = set()
        self._build_dirs: set[Path] = set()
        #: Directories of verifications that ended normally, removed by the next :meth:`verification_dirs`.
        self._finished: list[Path] = []
        #: The uid each workdir was handed to when it was made, until a run takes it (see :meth:`_prepare_now`).
        self._fresh_uids: dict[Path, int] = {}
        self._free_uids: list[int] = []
        self._nproc_count: tuple[float, int] = (float("-inf"), 0)

    @classmethod
    @asynccontextmanager
    async def open(
        cls, settings: SandboxSettings, *, scratch_root: Path | None = None, namespaces: bool = True,
        cache_dir: Path | None = None, hidden: Iterable[Path] = (),
    ) -> AsyncIterator[Sandbox]:
        """Probe what isolation works, create the run's private scratch root, and remove it on exit.

        ``namespaces=False`` skips namespaces and the uid change (the non-root fallback), for tests of that
        path. ``cache_dir`` (default: ``[toolchain] cache_dir``'s default) holds the compiled helper, built
        there on first use. ``hidden``: the run's corpus and results folders; with a mount namespace, programs
        see them and the cache directory empty (they hold the expected outputs: samples, the C programs,
        oracle outputs), unless one holds the system (``/usr``, ...) or a run names a path inside.
        Raises ConfigError when ``settings.strict`` and the isolation is incomplete, or
        when ``[sandbox] helper = compiled`` and it cannot be built.
        """
        global _tool_helper
        helper_dir = Path(cache_dir) if cache_dir is not None else ToolchainSettings().resolved_cache_dir()
        helper = await anyio.to_thread.run_sync(choose, settings.helper, helper_dir)
        _tool_helper = helper
        if scratch_root is not None:
            root = Path(scratch_root)
        else:
            root, why = await anyio.to_thread.run_sync(choose_scratch_root, settings.scratch_dir)
            if settings.scratch_dir and not await anyio.to_thread.run_sync(os.path.isdir, root):
                raise ConfigError(
                    f"[sandbox] scratch_dir = {settings.scratch_dir!r} is not a directory: create it, or leave "
                    f"scratch_dir empty for the default (TMPDIR, else a roomy /dev/shm, else /tmp)"
                )
            log.info("sandbox: scratch space in %s (%s)", root, why)
        if os.geteuid() == 0 and namespaces:
            for candidate in (root, Path(tempfile.gettempdir()), Path("/tmp")):
                blocked = await anyio.to_thread.run_sync(_unreachable_ancestor, candidate)
                if blocked is None:
                    break
                # The runs' uids could not reach their working directories or programs under it.
                log.warning(
                    "sandbox: %s is not reachable by other users (%s has no search permission for others); "
                    "not using it for scratch space", candidate, blocked,
                )
            else:
                raise ConfigError(
                    "sandbox: no scratch directory reachable by unprivileged users: set [sandbox] scratch_dir (or "
                    "TMPDIR) to a directory whose parents are searchable by others (chmod o+x), such as /tmp"
                )
            root = candidate
        await anyio.to_thread.run_sync(_remove_stale_scratch, root)
        if scratch_root is None and root != Path(tempfile.gettempdir()):
            # Killed runs of earlier versions (or with another scratch_dir) left theirs in the temporary directory.
            await anyio.to_thread.run_sync(_remove_stale_scratch, Path(tempfile.gettempdir()))
        scratch = Path(
            await anyio.to_thread.run_sync(
                lambda: os.path.realpath(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=root))
            )
        )
        try:
            # Traverse-only for others: a run's uid reaches its own workdir and the build dirs, lists nothing.
            await anyio.to_thread.run_sync(os.chmod, scratch, 0o711)
            hide = await anyio.to_thread.run_sync(_hidden_dirs, [*hidden, helper_dir])
            sandbox = await cls._probe(settings, scratch, helper, namespaces=namespaces, hidden=hide)
            iso = sandbox.isolation
            missing = iso.missing()
            if settings.network and "network namespace" in missing:
                missing.remove("network namespace")  # the user asked for network access
            if missing:
                log.warning(
                    "sandbox %s: translated programs run with less protection than intended", iso.describe()
                )
                if settings.strict:
                    raise ConfigError(
                        f"[sandbox] strict = true, but the sandbox on this machine is missing "
                        f"{', '.join(missing)} ({'; '.join(iso.notes) or 'see the log'}). Run as root on a kernel "
                        f"that allows unshare (in a container: CAP_SYS_ADMIN, e.g. docker --privileged), or set "
                        f"[sandbox] strict = false (drop --strict-sandbox) to run with the reduced sandbox"
                    )
            else:
                log.info("sandbox %s", iso.describe())
            yield sandbox
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_remove_tree, scratch)

    @classmethod
    async def _probe(
        cls, settings: SandboxSettings, scratch: Path, helper: Helper, *, namespaces: bool,
        hidden: tuple[str, ...] = (),
    ) -> Sandbox:
        unshare = shutil.which("unshare")
        root = os.geteuid() == 0
        net = () if settings.network else ("--net",)
        modes: list[_Mode] = []
        notes: list[str] = []
        if namespaces and root and helper.binary is not None:
            # No setpriv, no unshare: the helper makes the namespaces and guards against orphaning itself.
            own = ("pid", "ipc", "mount", *(() if settings.network else ("net",)))
            modes.append(_Mode("namespaces by the compiled helper", None, True, True, helper_namespaces=own))
        if namespaces and unshare:
            # If this process dies without cleaning up (SIGKILL), the kernel kills unshare, whose
            # --kill-child takes the namespace's pid 1 and with it every process of the run.
            setpriv = shutil.which("setpriv")
            orphan_guard = (setpriv, "--pdeathsig", "KILL") if setpriv else ()
            # --ipc: System V and POSIX IPC objects a program creates die with its namespace.
            common = ("--pid", "--ipc", "--fork", "--kill-child", "--mount-proc", *net)
            if root:
                modes.append(
                    _Mode("namespaces", (*orphan_guard, unshare, *common), drop_uid=True, private_tmp=True)
                )
            else:
                modes.append(_Mode(
                    "user namespace", (*orphan_guard, unshare, "--user", "--map-root-user", *common), False, True
                ))
        elif namespaces and not modes:
            notes.append("unshare (util-linux) not found")
        if not namespaces:
            notes.append("namespaces disabled by the caller")
        if root and namespaces:
            modes.append(_Mode("uid only", None, drop_uid=True, private_tmp=False))
        modes.append(_Mode("rlimits only", None, drop_uid=False, private_tmp=False))
        if not root:
            notes.append("not running as root: programs run as your own user and can write what you can")
        for mode in modes:
            sandbox = cls(settings, scratch, mode, helper, hidden)
            found = await sandbox._probe_mode(notes)
            if found is not None:
                sandbox.isolation = found
                return sandbox
        raise ConfigError(  # pragma: no cover - the last mode has no preconditions
            "the sandbox cannot run even a plain shell here: check that /bin/sh and python work"
        )

    async def _probe_mode(self, notes: list[str]) -> Isolation | None:
        mode = self._mode
        limits = Limits(wall_seconds=10.0, cpu_seconds=5, memory_bytes=256 << 20, output_bytes=20_000)
        argv = ["sh", "-c", "echo $(id -u) $$; cat /proc/net/dev"]
        async with self.workdir() as cwd:
            try:
                result, status = await self._run(argv, cwd=cwd, stdin=None, limits=limits, env=None)
            except OSError as exc:
                notes.append(f"{mode.name} failed: {exc}")
                return None
        words = result.stdout.decode(errors="replace").split()
        if not result.ok or status is None or len(words) < 2:
            why = result.stderr.decode(errors="replace").strip().splitlines()
            notes.append(f"{mode.name} refused: {why[-1] if why else result.describe()}")
            log.debug("sandbox probe %s failed: %r", mode.name, result)
            return None
        uid, pid = words[0], words[1]
        interfaces = [line.split(":")[0].strip() for line in result.stdout.decode().splitlines() if ":" in line]
        pid_ns = mode.pid_namespace and pid == "2"
        net_ns = mode.net_namespace and interfaces == ["lo"]
        mount_ns = mode.namespaces and status.get("tmp") is True
        if mode.namespaces:
            notes.append(mode.describe())
        if mode.private_tmp and status.get("tmp") is not True:
            notes.append(f"private /tmp failed: {status.get('tmp')}")
            self._mode = replace(mode, private_tmp=False)
        unprivileged = mode.drop_uid and uid.isdigit() and int(uid) not in (0, os.geteuid())
        if self.settings.network:
            notes.append("network allowed by [sandbox] network = true")
        notes.append(self.helper.describe())
        return Isolation(pid_ns, net_ns, mount_ns, unprivileged, bool(status.get("rl")), tuple(notes))

    def limits(self, *, wall_seconds: float, output_bytes: int) -> Limits:
        """The limits of one run: the ``[sandbox]`` settings plus the run's deadline and output cap."""
        s = self.settings
        return Limits(
            wall_seconds=wall_seconds,
            cpu_seconds=s.cpu_seconds,
            memory_bytes=s.memory_mb << 20,
            file_size_bytes=s.max_file_mb << 20,
            open_files=s.open_files,
            processes=s.max_processes,
            output_bytes=output_bytes,
        )

    @asynccontextmanager
    async def workdir(self, source_dir: Path | None = None, files: Iterable[str] = ()) -> AsyncIterator[Path]:
        """A fresh private directory for one program's runs, with copies of ``files`` from ``source_dir``.

        Names are relative to ``source_dir``; one that is absolute, climbs out with ``..``, passes through a
        symlink or does not exist is skipped with a warning. Removed on exit.
        """
        names = list(files)
        path = await anyio.to_thread.run_sync(self._make_workdir, source_dir, names, False)
        try:
            yield path
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._remove_dirs, (path,))

    @asynccontextmanager
    async def build_dir(self) -> AsyncIterator[Path]:
        """A private directory for compiler output; the runs' uids may read and execute what is in it."""
        path = await anyio.to_thread.run_sync(self._make_build_dir, {})
        try:
            yield path
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._remove_dirs, (path,))

    @asynccontextmanager
    async def verification_dirs(
        self, source_dir: Path | None = None, files: Iterable[str] = (), *, sources: Mapping[str, str] | None = None,
    ) -> AsyncIterator[tuple[Path, Path]]:
        """``(build_dir, workdir)`` for one verification: a :meth:`build_dir` holding ``sources`` (name: text,
        written with it) and a :meth:`workdir` with copies of ``files``, both made in one worker-thread trip (#16).
        Use it where a program is built and then tested in the same working copy. The copy belongs to its first
        run's uid from the start (that run needs no trip): put nothing into it but through runs.

        After an exception or a cancellation both are removed at once. After a normal exit no process of theirs
        is left (every run has ended and been reaped), and they are removed in the next trip that makes such a
        pair, or with the scratch root when the sandbox closes: one trip per verification, not two.
        """
        names = list(files)
        leftover, self._finished = self._finished, []

        def make() -> tuple[Path, Path]:
            self._remove_dirs(leftover)
            build = self._make_build_dir(sources or {})
            try:
                return build, self._make_workdir(source_dir, names, True)
            except BaseException:
                self._remove_dirs((build,))
                raise

        build, work = await anyio.to_thread.run_sync(make)
        try:
            yield build, work
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._remove_dirs, (work, build))
            raise
        self._finished += (work, build)

    def _make_workdir(self, source_dir: Path | None, names: list[str], owned: bool) -> Path:
        """Blocking part of :meth:`workdir`: the directory and the copies; when ``owned``, handed to the uid of
        its first run already."""
        if names and source_dir is None:
            log.warning("sandbox: %d file(s) asked for without a source directory; none copied", len(names))
        path = Path(tempfile.mkdtemp(prefix="work-", dir=self.scratch))
        try:
            if names and source_dir is not None:
                _copy_files(Path(source_dir), names, path)
            if owned and self._mode.drop_uid:
                # The first run's uid owns the copy from the start: that run needs no trip to hand it over.
                with contextlib.suppress(OSError):  # no free uid now: the run looks for one itself
                    uid = self._free_uid()
                    _chown_tree(path, uid)
                    self._fresh_uids[path] = uid
        except BaseException:
            self._fresh_uids.pop(path, None)
            _remove_tree(path)
            raise
        self._workdirs.add(path)
        return path

    def _make_build_dir(self, sources: Mapping[str, str]) -> Path:
        """Blocking part of :meth:`build_dir`, with ``sources`` written into it."""
        path = Path(tempfile.mkdtemp(prefix="build-", dir=self.scratch))
        try:
            os.chmod(path, 0o755)
            for name, text in sources.items():
                (path / name).write_text(text)
        except BaseException:
            _remove_tree(path)
            raise
        self._build_dirs.add(path)
        return path

    def _remove_dirs(self, paths: Iterable[Path]) -> None:
        for path in paths:
            self._workdirs.discard(path)
            self._build_dirs.discard(path)
            self._fresh_uids.pop(path, None)
            _remove_tree(path)

    async def run(
        self,
        argv: Sequence[str],
        *,
        cwd: Path,
        stdin: bytes | None = None,
        limits: Limits,
        env: Mapping[str, str] | None = None,
        slot: anyio.CapacityLimiter | None = None,
    ) -> ProcessResult:
        """Run an UNTRUSTED program under every protection in force; see the module docstring.

        The environment is ``PATH``, ``LC_ALL=C``, ``HOME`` and ``TMPDIR`` (both ``cwd``) plus ``env``;
        nothing else of ``os.environ``. ``slot`` (the engine's CPU limiter) is held only while the process
        lives, from just before it starts to its exit: preparing the run and cleaning up after it hold nothing.
        A failing program is a result, not an exception; OSError means the sandbox itself could not start it.
        """
        result, _ = await self._run(argv, cwd=cwd, stdin=stdin, limits=limits, env=env, slot=slot)
        return result

    async def _run(
        self,
        argv: Sequence[str],
        *,
        cwd: Path,
        stdin: bytes | None,
        limits: Limits,
        env: Mapping[str, str] | None,
        slot: anyio.CapacityLimiter | None = None,
    ) -> tuple[ProcessResult, dict[str, Any] | None]:
        if not argv:
            raise ValueError("empty argv")
        mode = self._mode
        ready = self._prepare_now(argv, Path(cwd), limits)
        if ready is None:
            ready = await anyio.to_thread.run_sync(self._prepare, list(argv), Path(cwd), limits)
        uid, private_tmp, rlimits = ready
        marker = secrets.token_hex(12)
        full_env = {"PATH": SANDBOX_PATH, "LC_ALL": "C", "HOME": str(cwd), "TMPDIR": str(cwd)}
        full_env.update(env or {})
        full_env[MARKER_VAR] = marker
        pipe = _StatusPipe()
        helper = self.helper.command(
            argv, fd=pipe.write_fd, uid=uid, rlimits=rlimits, tmp=PRIVATE_TMP_DIRS if private_tmp else (),
            hide=self._hidden_from(argv, cwd) if private_tmp else (), tmp_size=limits.file_size_bytes,
            keep=str(self.scratch), cwd=str(cwd), pid1=mode.namespaces,
            namespaces=mode.helper_namespaces,
        )
        with pipe:
            raw = await _execute(
                [*(mode.unshare or ()), *helper], cwd=Path(cwd), env=full_env, stdin=stdin, limits=limits,
                pass_fds=(pipe.write_fd,), after_spawn=pipe.close_write,
                sweep=lambda: _sweep(uid=uid, marker=marker),
                pid_namespace=mode.pid_namespace,
                # With a uid of its own the program cannot touch its root helper, whose exit status 0 says
                # that it reaped everything (it is their subreaper).
                helper_reaps=uid is not None, slot=slot,
            )
            status = pipe.read_status()
        return raw.result(tuple(argv), status, limits), status

    def _hidden_from(self, argv: Sequence[str], cwd: Path) -> list[str]:
        """The hidden folders of one run: all but those holding a path it names outside the scratch root (a test
        command's own script, say), which it needs to see."""
        if not self.hidden:
            return []
        scratch = f"{self.scratch}{os.sep}"
        named = [os.path.normpath(t) for t in (*argv, str(cwd)) if t.startswith("/") and not t.startswith(scratch)]
        return [d for d in self.hidden if not any(n == d or n.startswith(f"{d}{os.sep}") for n in named)]

    def _prepare(
        self, argv: list[str], cwd: Path, limits: Limits
    ) -> tuple[int | None, bool, list[tuple[str, int, int]]]:
        """The run's uid (owning its working copy), whether /tmp can be private, and the rlimits."""
        real_cwd = Path(os.path.realpath(cwd))
        uid = None
        if self._mode.drop_uid:
            # tuple(): the set may grow in another worker thread meanwhile.
            owner = next((w for w in tuple(self._workdirs) if real_cwd == w or w in real_cwd.parents), None)
            # A workdir still owned by the uid it was made for, which no run has used yet: this run's uid.
            uid = None if owner is None else self._fresh_uids.pop(owner, None)
            if uid is None:
                uid = self._free_uid()
                if owner is not None:
                    _chown_tree(owner, uid)
                else:
                    log.debug("sandbox: %s is not a workdir of this sandbox; its ownership is left alone", cwd)
        private_tmp = self._mode.private_tmp
        if private_tmp:
            # A private /tmp hides everything under it but the scratch root: only use it when the program and
            # its directory are visible inside.
            paths = [real_cwd]
            if "/" in argv[0]:
                paths.append(Path(os.path.realpath(cwd / argv[0])))
            for p in paths:
                hidden = any(p == Path(d) or Path(d) in p.parents for d in PRIVATE_TMP_DIRS)
                if hidden and not (p == self.scratch or self.scratch in p.parents):
                    log.debug("sandbox: %s is outside the scratch root; /tmp stays shared for this run", p)
                    private_tmp = False
        nproc = limits.processes
        if uid is None and os.geteuid() != 0:
            # Without a uid of its own, RLIMIT_NPROC counts all of our processes: allow for those (counted at
            # most once a second, plus one per run the count may have missed).
            nproc += self._own_processes()
        return uid, private_tmp, _rlimits(limits, nproc)

    def _prepare_now(
        self, argv: Sequence[str], cwd: Path, limits: Limits
    ) -> tuple[int | None, bool, list[tuple[str, int, int]]] | None:
        """What :meth:`_prepare` would answer, when it needs no file system access, else None (#16).

        That is the first run in a workdir that was handed to a fresh uid when it was made (or a run without a
        uid of its own, with a fresh count of our processes), of a program named by its bare name or sitting in
        one of our build directories: both paths are then real already (the scratch root is, and nothing but
        this process writes into a build directory), and inside the scratch root, so a private /tmp hides
        neither.
        """
        mode = self._mode
        if mode.private_tmp:
            if cwd not in self._workdirs:
                return None
            if "/" in argv[0] and Path(os.path.dirname(argv[0])) not in self._build_dirs:
                return None
        nproc = limits.processes
        if mode.drop_uid:
            uid = self._fresh_uids.pop(cwd, None)
            if uid is None:
                return None
        else:
            uid = None
            if os.geteuid() != 0:
                taken, count = self._nproc_count
                if time.monotonic() - taken > _NPROC_COUNT_SECONDS:
                    return None
                nproc += count + _NPROC_MARGIN
        return uid, mode.private_tmp, _rlimits(limits, nproc)

    def _free_uid(self) -> int:
        """The next uid of our block that no user, group or process has: the sweep kills by uid.

        One /proc scan serves a batch of uids: the block is random and never reused, so a uid free at the scan
        stays free (short of another sandbox drawing the same block) until its run takes it.
        """
        if not self._free_uids:
            in_use = _process_uids()
            for _ in range(1000):
                uid = next(self._uids)
                if uid in in_use or _known_id(uid):
                    continue
                self._free_uids.append(uid)
                if len(self._free_uids) == _UID_BATCH:
                    break
            if not self._free_uids:
                raise OSError(errno.EAGAIN, "no free uid for a sandboxed run")
            self._free_uids.reverse()
        return self._free_uids.pop()

    def _own_processes(self) -> int:
        """Processes of our uid (RLIMIT_NPROC counts them), from a /proc scan at most a second old."""
        now = time.monotonic()
        taken, count = self._nproc_count
        if now - taken > _NPROC_COUNT_SECONDS:
            count = len(_find_processes(uid=os.getuid(), marker=None))
            self._nproc_count = (now, count)
        return count + _NPROC_MARGIN


def _hidden_dirs(paths: Iterable[Path]) -> tuple[str, ...]:
    """The real paths of ``paths`` that a run may be kept from seeing, without duplicates. Left out, with a note
    in the log: one that is or holds a system folder or this Python (programs need those), and one under a
    private /tmp (hidden already). A folder that does not exist yet is kept: it is hidden once it does."""
    needed = [*_SYSTEM_DIRS, sys.prefix, sys.base_prefix]
    found: list[str] = []
    for path in paths:
        real = os.path.realpath(path)
        inside = real + os.sep
        if any(n == real or n.startswith(inside) or real == "/" for n in needed):
            log.warning("sandbox: %s stays visible to translated programs: it holds what they need to run", real)
        elif not any(real == t or real.startswith(t + os.sep) for t in PRIVATE_TMP_DIRS) and real not in found:
            found.append(real)
    if len(found) > _MAX_HIDDEN:
        log.warning("sandbox: only the first %d of %d folders are hidden from programs", _MAX_HIDDEN, len(found))
    return tuple(found[:_MAX_HIDDEN])


def _rlimits(limits: Limits, nproc: int) -> list[tuple[str, int, int]]:
    return [
        ("RLIMIT_CORE", 0, 0),
        ("RLIMIT_CPU", limits.cpu_seconds, limits.cpu_seconds + 1),
        ("RLIMIT_AS", limits.memory_bytes, limits.memory_bytes),
        ("RLIMIT_FSIZE", limits.file_size_bytes, limits.file_size_bytes),
        ("RLIMIT_NOFILE", limits.open_files, limits.open_files),
        ("RLIMIT_NPROC", nproc, nproc),
    ]


def tool_env() -> dict[str, str]:
    """The environment trusted tools get: PATH, HOME, the rustup variables when set, LC_ALL=C."""
    env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": os.environ.get("HOME", "/"), "LC_ALL": "C"}
    for name in ("RUSTUP_HOME", "CARGO_HOME", "RUSTUP_TOOLCHAIN"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    return env


async def run_process(
    argv: Sequence[str],
    *,
    cwd: Path,
    limits: Limits,
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
    slot: anyio.CapacityLimiter | None = None,
) -> ProcessResult:
    """Run a TRUSTED tool (rustc, clippy-driver) with a deadline, a memory limit, no core and capped output.

    The tool gets its own process group, killed as a whole on timeout or when the output cap is passed.
    ``slot`` (the engine's CPU limiter) is held only while the tool's process lives.
    ``env`` is used as given; by default a minimal one (PATH, HOME, RUSTUP_HOME/CARGO_HOME/RUSTUP_TOOLCHAIN
    when set, LC_ALL=C). Raises OSError when the tool cannot be started at all.
    """
    if not argv:
        raise ValueError("empty argv")
    if env is None:
        env = tool_env()
    pipe = _StatusPipe()
    rlimits = [("RLIMIT_CORE", 0, 0), ("RLIMIT_AS", limits.memory_bytes, limits.memory_bytes)]
    cmd = _tool_helper.command(argv, fd=pipe.write_fd, uid=None, rlimits=rlimits, cwd=str(cwd), pid1=False)
    with pipe:
        raw = await _execute(
            cmd, cwd=Path(cwd), env=dict(env), stdin=stdin, limits=limits,
            pass_fds=(pipe.write_fd,), after_spawn=pipe.close_write, sweep=None, slot=slot,
        )
        status = pipe.read_status()
    return raw.result(tuple(argv), status, limits)


# --------------------------------------------------------------------------------------------------------
# Running and reading


class _Capture:
    """One output stream, kept up to ``cap`` bytes."""

    __slots__ = ("cap", "data", "done", "exceeded")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.data = bytearray()
        self.exceeded = False
        self.done = False  # end of file seen, or reading stopped

    def add(self, chunk: bytes) -> bool:
        """Keep what fits; True when the cap has been passed."""
        room = self.cap - len(self.data)
        if len(chunk) > room:
            self.data += chunk[: max(room, 0)]
            self.exceeded = True
        else:
            self.data += chunk
        return self.exceeded


@dataclass
class _Raw:
    returncode: int | None
    stdout: bytes
    stderr: bytes
    timed_out: bool
    output_exceeded: bool
    killed: bool
    wall: float

    def result(self, argv: tuple[str, ...], status: dict[str, Any] | None, limits: Limits) -> ProcessResult:
        if status is not None and "cpu" in status:
            code, sig, cpu = status.get("rc"), status.get("sig"), float(status["cpu"])
        elif self.killed:
            code, sig, cpu = None, None, None
        else:
            # The wrapper itself ended without a report (unshare refused, helper crashed): say what it said.
            rc = self.returncode
            code, sig, cpu = (rc, None, None) if rc is None or rc >= 0 else (None, -rc, None)
        return ProcessResult(
            argv=argv,
            returncode=code,
            signal=sig,
            timed_out=self.timed_out,
            output_exceeded=self.output_exceeded,
            stdout=self.stdout,
            stderr=self.stderr,
            wall_seconds=self.wall,
            cpu_seconds=cpu,
            limits=limits,
        )


async def _execute(
    cmd: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    stdin: bytes | None,
    limits: Limits,
    pass_fds: tuple[int, ...],
    after_spawn: Callable[[], None],
    sweep: Callable[[], int] | None,
    pid_namespace: bool = False,
    helper_reaps: bool = False,
    slot: anyio.CapacityLimiter | None = None,
) -> _Raw:
    """Start ``cmd`` in a new session, read its output with a cap, and kill its tree when done, whatever
    happened (deadline, output cap, or the caller being cancelled).

    ``slot`` is acquired just before the start and released as soon as the process has exited (or, when it
    had to be killed, once it is reaped): a CPU slot stands for a core, and the reading, the reaping and the
    caller's bookkeeping are this process's own work, not the child's (#16).
    """
    held = _Held(slot)
    await held.acquire()
    started = time.monotonic()
    try:
        child = _Child.start(cmd, cwd=cwd, env=env, stdin=stdin, cap=limits.output_bytes, pass_fds=pass_fds)
    except BaseException:
        held.release()
        raise
    after_spawn()
    timed_out = killed = False
    try:
        with anyio.move_on_after(limits.wall_seconds) as deadline:
            await child.wait(child.stopped)
            if child.returncode is not None and not child.exceeded:
                held.release()
                if not child.drained():
                    # Straggler processes may still hold the pipes: give them a moment, then stop reading.
                    with anyio.move_on_after(_DRAIN_GRACE):
                        await child.wait(child.drained)
        exceeded = child.exceeded
        timed_out = deadline.cancel_called and not exceeded and child.returncode is None
        killed = timed_out or exceeded
    finally:
        try:
            # The usual end (exited by itself, nothing to sweep) needs no await: no shielded scope either.
            if child.returncode is None or _sweep_needed(child, sweep, pid_namespace, helper_reaps):
                with anyio.CancelScope(shield=True):
                    await _kill_tree(child, sweep, pid_namespace=pid_namespace, helper_reaps=helper_reaps)
            else:
                _kill_group(child.pid)
        finally:
            held.release()
            child.close()
    return _Raw(
        child.returncode, bytes(child.out.data), bytes(child.err.data), timed_out, child.exceeded, killed,
        time.monotonic() - started,
    )


class _Held:
    """A CPU slot held by one run: released once, by the task that acquired it (a CapacityLimiter's rule)."""

    def __init__(self, slot: anyio.CapacityLimiter | None) -> None:
        self.slot = slot
        self.held = False

    async def acquire(self) -> None:
        if self.slot is not None:
            await self.slot.acquire()
            self.held = True

    def release(self) -> None:
        if self.held and self.slot is not None:
            self.held = False
            self.slot.release()


class _Child:
    """A started process whose pipes the event loop serves with callbacks: no task, stream object or transport
    per pipe (#16). Its exit is seen on a pidfd (polled with ``waitpid`` where pidfds are missing).

    :meth:`wait` waits for one of :meth:`stopped` (the process exited or an output passed its cap),
    :meth:`drained` (both outputs ended and the input was fed, or given up) or :meth:`exited` (reaped).
    """

    def __init__(
        self, proc: subprocess.Popen[bytes], loop: asyncio.AbstractEventLoop, out_fd: int, err_fd: int,
        in_fd: int | None, stdin: bytes, cap: int,
    ) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.loop = loop
        self.returncode: int | None = None
        self.out = _Capture(cap)
        self.err = _Capture(cap)
        self.exceeded = False
        self._waiter: asyncio.Future[None] | None = None
        self._readers: dict[int, _Capture] = {out_fd: self.out, err_fd: self.err}
        self._in_fd = in_fd
        self._input = memoryview(stdin)
        self._writing = False
        self._pidfd: int | None = None
        for fd, capture in self._readers.items():
            os.set_blocking(fd, False)
            loop.add_reader(fd, self._on_readable, fd, capture)
        if in_fd is not None:
            os.set_blocking(in_fd, False)
            self._feed()
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # not Linux, a kernel before 5.3, or refused by seccomp: poll instead
            self._pidfd = None
        else:
            loop.add_reader(self._pidfd, self._reap, os.WNOHANG)

    @classmethod
    def start(
        cls, cmd: list[str], *, cwd: Path, env: dict[str, str], stdin: bytes | None, cap: int,
        pass_fds: tuple[int, ...],
    ) -> _Child:
        """Start ``cmd`` in a session (and process group) of its own; OSError when it cannot be started."""
        loop = asyncio.get_running_loop()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        in_r, in_w = os.pipe() if stdin is not None else (None, None)
        try:
            proc = subprocess.Popen(
                cmd, stdin=in_r if in_r is not None else subprocess.DEVNULL, stdout=out_w, stderr=err_w,
                cwd=cwd, env=env, start_new_session=True, pass_fds=pass_fds,
            )
        except BaseException:
            for fd in (out_r, err_r, in_w):
                if fd is not None:
                    os.close(fd)
            raise
        finally:
            for fd in (out_w, err_w, in_r):
                if fd is not None:
                    os.close(fd)
        try:
            return cls(proc, loop, out_r, err_r, in_w, stdin or b"", cap)
        except BaseException:  # not in our hands: do not leave it running
            _kill_group(proc.pid)
            proc.wait()
            raise

    def stopped(self) -> bool:
        return self.returncode is not None or self.exceeded

    def drained(self) -> bool:
        return not self._readers and self._in_fd is None

    def exited(self) -> bool:
        return self.returncode is not None

    async def wait(self, condition: Callable[[], bool]) -> None:
        """Until ``condition()``; every change of state wakes the waiter (there is one: the run's task)."""
        while not condition():
            if self._pidfd is None and self.returncode is None:
                self._reap(os.WNOHANG)  # no pidfd: look every 10 ms
                if condition():
                    return
                with anyio.move_on_after(0.01):
                    await self._sleep()
            else:
                await self._sleep()

    async def _sleep(self) -> None:
        self._waiter = self.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _on_readable(self, fd: int, capture: _Capture) -> None:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._stop_reading(fd)
        elif capture.add(chunk):
            self.exceeded = True  # past the cap: stop everything; the tree is killed on the way out
            self._stop_reading(fd)

    def _stop_reading(self, fd: int) -> None:
        capture = self._readers.pop(fd, None)
        if capture is not None:
            capture.done = True
            self.loop.remove_reader(fd)
            os.close(fd)
        self._wake()

    def _feed(self) -> None:
        """Write what the pipe takes; the rest when it is writable again; close it at the end."""
        assert self._in_fd is not None
        try:
            while self._input:
                written = os.write(self._in_fd, self._input)
                self._input = self._input[written:]
        except BlockingIOError:
            if not self._writing:
                self._writing = True
                self.loop.add_writer(self._in_fd, self._feed)
            return
        except OSError:
            pass  # the program did not read all of its input (EPIPE); that is its business
        self._close_input()

    def _close_input(self) -> None:
        if self._in_fd is not None:
            if self._writing:
                self._writing = False
                self.loop.remove_writer(self._in_fd)
            os.close(self._in_fd)
            self._in_fd = None
            self._input = memoryview(b"")
        self._wake()

    def _reap(self, flags: int) -> None:
        if self.returncode is not None:
            return
        try:
            pid, status = os.waitpid(self.pid, flags)
        except ChildProcessError:  # reaped elsewhere: asyncio's watchers report 255 then too
            log.warning("child process %d: its exit status was read elsewhere; reporting 255", self.pid)
            code = 255
        else:
            if not pid:
                return  # still running
            code = os.waitstatus_to_exitcode(status)
        self.returncode = self.proc.returncode = code  # Popen must not wait for it again
        self._close_pidfd()
        self._wake()

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            self.loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    def close(self) -> None:
        """Stop reading and feeding; the process itself is left to :func:`_kill_tree`."""
        for fd in list(self._readers):
            self._stop_reading(fd)
        self._close_input()
        if self.returncode is None:
            self._reap(os.WNOHANG)
        self._close_pidfd()


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _sweep_needed(
    child: _Child, sweep: Callable[[], int] | None, pid_namespace: bool, helper_reaps: bool,
) -> bool:
    """Whether a run's leftovers must be looked for in /proc; see :func:`_kill_tree`."""
    if sweep is None:
        return False
    if pid_namespace and child.returncode is not None:
        return False
    return not (helper_reaps and child.returncode == 0)


async def _kill_tree(
    child: _Child, sweep: Callable[[], int] | None, *, pid_namespace: bool = False, helper_reaps: bool = False,
) -> None:
    """SIGKILL the process group, reap the leader, then sweep stragglers that left the group.

    When unshare (or the helper that made the namespaces) exited by itself, it had waited for the namespace's
    init, whose exit the kernel completes
    only after every process of the namespace is gone: nothing can be left, so the /proc sweep is skipped.
    So it is when ``helper_reaps`` and the helper exited by itself with status 0: as the run's subreaper it
    exits 0 only after reaping every process the program left.
    """
    if not _sweep_needed(child, sweep, pid_namespace, helper_reaps):
        sweep = None
    _kill_group(child.pid)
    if child.returncode is None:
        with anyio.move_on_after(10):
            await child.wait(child.exited)
        if child.returncode is None:
            log.error("sandbox: process %d did not end within 10 s of SIGKILL", child.pid)
    if sweep is not None:
        left = await anyio.to_thread.run_sync(sweep)
        if left:
            log.error("sandbox: %d process(es) of a run could not be killed", left)


class _StatusPipe:
    """The private pipe on which the helper reports the program's exit status and CPU time.

    Each end is closed exactly once: with concurrent runs, a second close could hit a reused descriptor.
    """

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        self._write_open = True

    def close_write(self) -> None:
        if self._write_open:
            self._write_open = False
            os.close(self.write_fd)

    def read_status(self) -> dict[str, Any] | None:
        """The helper's report; call after it exited (the data is in the pipe, so this never blocks)."""
        self.close_write()
        os.set_blocking(self.read_fd, False)
        try:
            data = os.read(self.read_fd, _STATUS_MAX)
        except BlockingIOError:
            return None
        try:
            status = json.loads(data) if data else None
        except ValueError:
            return None
        return status if isinstance(status, dict) else None

    def __enter__(self) -> _StatusPipe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close_write()
        os.close(self.read_fd)


# --------------------------------------------------------------------------------------------------------
# Processes of a run


def _live_processes() -> Iterator[tuple[str, bytes]]:
    """(pid, real uid) of every live process but this one (zombies are already dead)."""
    me = str(os.getpid())
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or entry == me:
            continue
        try:
            with open(f"/proc/{entry}/status", "rb") as fh:
                text = fh.read(4096)
        except OSError:
            continue
        fields = dict(
            line.split(b":", 1) for line in text.splitlines() if b":" in line
        )
        state = fields.get(b"State", b"").strip()[:1]
        if state in (b"Z", b"X"):
            continue  # already dead, waiting to be reaped
        yield entry, b"".join(fields.get(b"Uid", b"").split()[:1])


def _process_uids() -> set[int]:
    """The real uids of all live processes (one /proc scan)."""
    return {int(uid) for _, uid in _live_processes() if uid.isdigit()}


def _known_id(uid: int) -> bool:
    """Whether a user or a group has this id."""
    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(uid)
            return True
        except KeyError:
            pass
    return False


def _find_processes(*, uid: int | None, marker: str | None) -> list[int]:
    """Live processes whose real uid is ``uid`` or whose environment carries ``marker``."""
    found = []
    needle = f"{MARKER_VAR}={marker}".encode() if marker else None
    wanted = str(uid).encode() if uid is not None else None
    for entry, real_uid in _live_processes():
        if wanted is not None and real_uid == wanted:
            found.append(int(entry))
            continue
        if needle is not None:
            try:
                with open(f"/proc/{entry}/environ", "rb") as fh:
                    if needle in fh.read().split(b"\0"):
                        found.append(int(entry))
            except OSError:
                continue
    return found


def _sweep(*, uid: int | None, marker: str | None) -> int:
    """Kill every process of a run until none is left; the number still alive when giving up."""
    end = time.monotonic() + _SWEEP_SECONDS
    while True:
        found = _find_processes(uid=uid, marker=marker)
        if not found:
            return 0
        for pid in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > end:
            return len(found)
        time.sleep(0.005)


# --------------------------------------------------------------------------------------------------------
# Files


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def choose_scratch_root(setting: str) -> tuple[Path, str]:
    """Where a run's scratch root goes (``[sandbox] scratch_dir``), and why, for the log.

    A setting wins, then TMPDIR when the user set it. Otherwise the temporary directory when it is a tmpfs
    already, else ``/dev/shm`` when it is a tmpfs with :data:`SHM_MIN_FREE` free, else the temporary
    directory. Builds and working copies live for seconds and need no disk: on a disk file system each of
    the thousands of files a run makes and removes costs the kernel an inode allocation, and on ext4
    without a journal that allocation skips every inode freed in the last minutes, one block lookup each
    (a fifth of the CLI's CPU in a balanced run on such a disk, bench/README.md, #16).
    """
    if setting:
        return Path(setting).expanduser(), "[sandbox] scratch_dir"
    temp = Path(tempfile.gettempdir())
    if os.environ.get("TMPDIR"):
        return temp, "TMPDIR"
    mounts = _mounts()
    if _fs_type(temp, mounts) == "tmpfs":
        return temp, "tmpfs"
    if _fs_type(SHM_DIR, mounts) == "tmpfs":
        try:
            st = os.statvfs(SHM_DIR)
        except OSError:
            return temp, "the temporary directory"
        free = st.f_bavail * st.f_frsize
        if free >= SHM_MIN_FREE and os.access(SHM_DIR, os.W_OK | os.X_OK):
            return SHM_DIR, f"tmpfs, {free / (1 << 30):.1f} GiB free"
        return temp, f"{SHM_DIR} has {free >> 20} MiB free, less than {SHM_MIN_FREE >> 20} MiB"
    return temp, "the temporary directory"


def _mounts() -> list[tuple[str, str]]:
    """(mount point, file system type) of each line of ``/proc/self/mounts``; empty when it cannot be read."""
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as mounts:
            lines = mounts.read().splitlines()
    except OSError:
        return []
    return [(f[1].replace("\\040", " "), f[2]) for f in map(str.split, lines) if len(f) >= 3]


def _fs_type(path: Path, mounts: list[tuple[str, str]] | None = None) -> str | None:
    """The type of the file system ``path`` is on (the longest mount point above it), or None when it cannot
    be told."""
    real = os.path.realpath(path)
    best, kind = "", None
    for point, fs in _mounts() if mounts is None else mounts:
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fs
    return kind


def _remove_stale_scratch(parent: Path) -> None:
    """Remove scratch roots left by runs that were killed (SIGKILL gives no chance to clean up)."""
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return
    for entry in entries:
        if not entry.name.startswith(SCRATCH_PREFIX) or not entry.is_dir(follow_symlinks=False):
            continue
        pid_text = entry.name[len(SCRATCH_PREFIX):].split("-", 1)[0]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)):
            log.info("sandbox: removing %s, left by a run that was killed", entry.path)
            _remove_tree(Path(entry.path))


def _copy_files(source_dir: Path, names: list[str], dest: Path) -> None:
    base = source_dir.resolve()
    for name in names:
        rel = Path(name)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            log.warning("sandbox: not copying %r: it is not a plain name inside %s", name, source_dir)
            continue
        # No symlink anywhere on the way: it could lead out of source_dir.
        current, linked = base, False
        for part in rel.parts:
            current = current / part
            if current.is_symlink():
                linked = True
                break
        if linked:
            log.warning("sandbox: not copying %r: it passes through a symlink", name)
            continue
        if not current.exists():
            log.warning("sandbox: not copying %r: no such file in %s", name, source_dir)
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if current.is_dir():
            shutil.copytree(current, target, symlinks=True, ignore=_ignore_symlinks, dirs_exist_ok=True)
        else:
            shutil.copy2(current, target, follow_symlinks=False)


def _ignore_symlinks(directory: str, names: list[str]) -> list[str]:
    skipped = [n for n in names if os.path.islink(os.path.join(directory, n))]
    for n in skipped:
        log.warning("sandbox: not copying symlink %s", os.path.join(directory, n))
    return skipped


def _chown_tree(root: Path, uid: int) -> None:
    """Give a working copy to a run's uid, without following symlinks (fd-based walk, race-free)."""
    os.chown(root, uid, uid, follow_symlinks=False)
    for _dirpath, dirnames, filenames, dirfd in os.fwalk(root, follow_symlinks=False):
        for name in (*dirnames, *filenames):
            try:
                st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
                if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                    continue  # a hard link to something outside: never hand that over
                if st.st_uid != uid:
                    os.chown(name, uid, uid, dir_fd=dirfd, follow_symlinks=False)
            except FileNotFoundError:
                continue


def _unreachable_ancestor(path: Path) -> Path | None:
    """The first directory on the way to ``path`` that others may not search, or None."""
    real = Path(os.path.realpath(path))
    for directory in (*reversed(real.parents), real):
        try:
            if not os.stat(directory).st_mode & stat.S_IXOTH:
                return directory
        except OSError:
            return directory
    return None


def _remove_tree(path: Path) -> None:
    """Remove a directory a program may have made hard to remove (modes 000, deep nesting).

    Modes are only ever changed inside the tree: the directory holding ``path`` (``/tmp`` for a scratch root)
    is never touched, even when ``path`` itself cannot be removed.
    """
    root = os.path.abspath(path)

    def inside(name: str) -> bool:
        return name == root or name.startswith(root + os.sep)

    entered: set[str] = set()

    def rmtree(target: str | Path) -> None:
        if sys.version_info >= (3, 12):
            shutil.rmtree(target, onexc=retry)
        else:
            shutil.rmtree(target, onerror=retry)

    def retry(func: Callable[..., Any], target: str, _exc: Any) -> None:
        with contextlib.suppress(OSError):
            parent = os.path.dirname(os.path.abspath(target))
            if inside(parent):
                os.chmod(parent, 0o700)
            if os.path.isdir(target) and not os.path.islink(target):
                os.chmod(target, 0o700)
        if func not in (os.unlink, os.remove, os.rmdir):
            # rmtree could not open, list or stat ``target`` (os.open, os.scandir, os.lstat: a folder of mode 000
            # when this process lacks root's rights to ignore modes): opened up now, it is removed as a tree of
            # its own, once; what still resists goes to the rm -rf below.
            where = os.path.abspath(target)
            if where in entered or not inside(where):
                raise OSError(errno.EACCES, f"cannot remove {target}")
            entered.add(where)
            rmtree(where)
            return
        try:
            func(target)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno not in (errno.ENOENT,):
                raise

    if not os.path.lexists(path):
        return
    try:
        rmtree(path)
    except (OSError, RecursionError) as exc:
        # Deep trees exceed rmtree's recursion; rm copes with any depth.
        log.debug("sandbox: rmtree %s failed (%s); using rm -rf", path, exc)
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False, timeout=120)
    if os.path.lexists(path):
        log.error("sandbox: could not remove %s", path)
