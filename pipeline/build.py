"""The Rust build layer: one rustc invocation per candidate program, with the ``libc`` crate prebuilt once.

:meth:`Toolchain.prepare` finds rustc, builds the libc crate (Debian's ``librust-libc-dev`` source, or
``[toolchain] libc_source``) into an rlib under the cache directory, once per libc version and compiler.
:meth:`Toolchain.build` refuses sources that read the build machine (:func:`forbidden_constructs`), then
compiles with ``rustc --extern libc=...`` and keeps only the errors of the diagnostics. Results are cached by
the source, the compiler, the flags and the libc rlib, successes and failures alike;
``[toolchain] compile_cache = false`` turns that cache off (benchmarks), not the libc rlib's.

Compile flags (measured on a 2-core machine, 80-line program using libc, median of 7): ``-C opt-level=1
-C codegen-units=2 -C lto=off`` takes about 0.23 s, against 0.29 s for opt-level=1 defaults (local ThinLTO
costs 0.1 s), 0.31 s for opt-level=2 and 0.13 s for opt-level=0, whose programs are several times slower
in tests. Linkers (gold, rust-lld) were no faster; stripping debug info keeps the cached binaries small
(0.5 MB instead of 4.4 MB) at no measurable cost.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from .config import ToolchainSettings
from .errors import ConfigError
from .rust_source import forbidden_constructs, unsafe_stats
from .sandbox import Limits, ProcessResult, _pid_alive, run_process, tool_env

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger(__name__)

#: Where Debian's librust-libc-dev puts the crate.
DEBIAN_REGISTRY = Path("/usr/share/cargo/registry")
LIBC_HINT = (
    "apt-get install -y librust-libc-dev, or set [toolchain] libc_source to a libc crate checkout"
)
#: Code generation flags of every build (see the module docstring for the measurements).
CODEGEN_FLAGS = (
    "-C", "opt-level=1",
    "-C", "codegen-units=2",
    "-C", "lto=off",
    "-C", "debuginfo=0",
    "-C", "strip=debuginfo",
)
#: Warnings are dropped anyway; not computing them is cheaper. Deny-by-default lints stay errors.
BUILD_FLAGS = (*CODEGEN_FLAGS, "-A", "warnings")
BINARY_NAME = "main"
#: The source file of a build, beside the binary.
SOURCE_NAME = f"{BINARY_NAME}.rs"
#: What a C program needs besides a Rust static library to link it (``rustc --print native-static-libs``).
STATICLIB_LINK_FLAGS = ("-lgcc_s", "-lutil", "-lrt", "-lpthread", "-lm", "-ldl", "-lc")
#: A libc build in progress, in the cache directory: ``.libc-build-<pid>-<random>``.
LIBC_BUILD_PREFIX = ".libc-build-"
_RUSTC_OUTPUT_CAP = 4 << 20
_CACHED_DIAGNOSTICS_CAP = 200_000


@dataclass(frozen=True)
class BuildResult:
    """What a build produced. ``binary`` is set when ``ok``; ``refused`` when the source was not compiled."""

    ok: bool
    binary: Path | None
    diagnostics: str
    error_count: int
    cached: bool
    seconds: float
    refused: str | None = None


# --------------------------------------------------------------------------------------------------------
# Diagnostics


@dataclass(frozen=True)
class _Diagnostics:
    errors: tuple[str, ...]
    warnings: tuple[tuple[str | None, str], ...]  # (lint code, rendered)


def _parse_diagnostics(stderr: bytes) -> _Diagnostics:
    errors: list[str] = []
    warnings: list[tuple[str | None, str]] = []
    stray: list[str] = []
    for line in stderr.decode("utf-8", errors="replace").splitlines():
        if not line.startswith("{"):
            if line.strip():
                stray.append(line)
            continue
        try:
            diag = json.loads(line)
        except ValueError:
            stray.append(line)
            continue
        if not isinstance(diag, dict) or diag.get("$message_type", "diagnostic") != "diagnostic":
            continue
        level = str(diag.get("level", ""))
        message = str(diag.get("message", ""))
        rendered = str(diag.get("rendered") or message).rstrip()
        code = diag.get("code")
        code_name = code.get("code") if isinstance(code, dict) else None
        if level.startswith("error"):
            if message.startswith("aborting due to"):
                continue
            errors.append(rendered)
        elif level == "warning":
            if re.fullmatch(r"\d+ warnings? emitted", message):
                continue
            warnings.append((str(code_name) if code_name else None, rendered))
    if not errors and stray:
        errors.append("\n".join(stray[-40:]))
    return _Diagnostics(tuple(errors), tuple(warnings))


def _trim_errors(errors: list[str] | tuple[str, ...], limit: int) -> str:
    """Whole errors, first first, up to ``limit`` characters, saying how many were left out."""

    def more(count: int) -> str:
        return f"\n... and {count} more error{'s' if count != 1 else ''}" if count else ""

    kept: list[str] = []
    for index, text in enumerate(errors):
        after = more(len(errors) - index - 1)
        if len("\n\n".join([*kept, text])) + len(after) <= limit:
            kept.append(text)
            continue
        if kept:
            return "\n\n".join(kept) + more(len(errors) - index)
        cut = "\n... (cut)"
        return text[: max(limit - len(cut) - len(after), 0)] + cut + after
    return "\n\n".join(kept)


def _describe_failure(result: ProcessResult, tool: str) -> str:
    return f"{tool} {result.describe()}" + (
        ": " + result.stderr.decode("utf-8", errors="replace").strip()[-2000:] if result.stderr.strip() else ""
    )


# --------------------------------------------------------------------------------------------------------
# The toolchain


def _version_key(path: Path) -> tuple[int, ...]:
    numbers = re.findall(r"\d+", path.name.rsplit("-", 1)[-1])
    return tuple(int(x) for x in numbers)


def _write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``path`` so that readers see the old file, no file, or the whole new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class Toolchain:
    """rustc, clippy-driver and a prebuilt libc, ready to compile candidate programs.

    Build it once per run with :meth:`prepare`; :meth:`build` and :meth:`clippy_stats` may run concurrently.
    """

    libc_rlib: Path
    rustc_version: str

    def __init__(
        self,
        settings: ToolchainSettings,
        *,
        rustc: str,
        clippy: str | None,
        version_text: str,
        libc_rlib: Path,
        libc_id: str,
        env: dict[str, str],
        umask: int | None = None,
    ) -> None:
        self.settings = settings
        # rustc's binaries are readable and executable by the runs' uids as the linker makes them: no chmod.
        self._executable_by_all = umask is not None and umask & 0o055 == 0
        self.rustc = rustc
        self.clippy = clippy
        self.rustc_version = version_text.splitlines()[0].strip() if version_text else "rustc (unknown)"
        self._version_text = version_text
        self.libc_rlib = libc_rlib
        self._libc_id = libc_id
        self._env = env
        self.cache_dir = settings.resolved_cache_dir()
        # Those of every build, made once.
        self._build_flags = tuple(self._flags())
        self._build_limits = self._limits()

    @classmethod
    async def prepare(cls, settings: ToolchainSettings) -> Toolchain:
        """Find the compiler, build the libc rlib once (cached), find clippy when asked for.

        Raises ConfigError naming the setting and the fix when rustc, the libc source or the cache directory
        cannot be used.
        """
        found = shutil.which(settings.rustc)
        if found is None:
            raise ConfigError(
                f"[toolchain] rustc = {settings.rustc!r} was not found: install Rust (rustup, or apt-get install "
                f"rustc) or set [toolchain] rustc to the compiler's path"
            )
        env = tool_env()
        quick = Limits(wall_seconds=60.0, memory_bytes=2 << 30, output_bytes=200_000)
        here = Path(tempfile.gettempdir())
        # Start-up is on the run's critical path (#16): the two questions to the compiler go side by side.
        probes: dict[str, ProcessResult] = {}

        async def probe(name: str, argv: list[str]) -> None:
            probes[name] = await run_process(argv, cwd=here, limits=quick, env=env)

        async with anyio.create_task_group() as tg:
            tg.start_soon(probe, "vv", [found, "-vV"])
            tg.start_soon(probe, "sysroot", [found, "--print", "sysroot"])
        vv, sysroot_res = probes["vv"], probes["sysroot"]
        if not vv.ok:
            raise ConfigError(
                f"[toolchain] rustc = {settings.rustc!r} does not run: {_describe_failure(vv, 'rustc -vV')}"
            )
        version_text = vv.stdout.decode("utf-8", errors="replace")
        info = dict(
            line.split(": ", 1) for line in version_text.splitlines() if ": " in line
        )
        host = info.get("host", "")
        # Skip the rustup proxy (tens of ms per call): use the real compiler in the sysroot when it is there.
        rustc = found
        if sysroot_res.ok:
            real = Path(sysroot_res.stdout.decode().strip()) / "bin" / "rustc"
            if real.is_file() and os.access(real, os.X_OK):
                rustc = str(real)
        libc_src = await anyio.to_thread.run_sync(_find_libc_source, settings)
        cache_dir = settings.resolved_cache_dir()
        try:
            await anyio.to_thread.run_sync(lambda: cache_dir.mkdir(parents=True, exist_ok=True))
        except OSError as exc:
            raise ConfigError(
                f"[toolchain] cache_dir: cannot create {cache_dir} ({exc.strerror}): set [toolchain] cache_dir "
                f"(or --cache-dir) to a writable directory"
            ) from exc
        clippy_found: list[str | None] = [None]

        async def find_clippy() -> None:
            clippy_found[0] = await _find_clippy(settings, rustc, env)

        failure: ConfigError | None = None
        async with anyio.create_task_group() as tg:  # the clippy probe beside the libc check (or build)
            if settings.clippy:
                tg.start_soon(find_clippy)
            try:
                rlib = await _ensure_libc(rustc, env, version_text, host, libc_src, cache_dir, settings)
                libc_id = await anyio.to_thread.run_sync(
                    lambda: hashlib.sha256(rlib.read_bytes()).hexdigest()[:32])
            except ConfigError as exc:
                failure = exc  # raised below as it is, not inside the task group's exception group
                tg.cancel_scope.cancel()
        if failure is not None:
            raise failure
        clippy = clippy_found[0]
        umask = await anyio.to_thread.run_sync(_read_umask)
        log.info("toolchain: %s, libc rlib %s, clippy %s", version_text.splitlines()[0], rlib,
                 clippy or "not used")
        return cls(settings, rustc=rustc, clippy=clippy, version_text=version_text, libc_rlib=rlib,
                   libc_id=libc_id, env=env, umask=umask)

    def _flags(self, *, warnings: bool = False, crate_type: str = "bin") -> list[str]:
        return [
            "--edition", self.settings.edition,
            "--crate-type", crate_type,
            "--crate-name", BINARY_NAME,
            *(CODEGEN_FLAGS if warnings else BUILD_FLAGS),
            "--extern", f"libc={self.libc_rlib}",
            "-L", f"dependency={self.libc_rlib.parent}",
            "--error-format=json",
        ]

    def _key(self, source: str) -> str:
        material = json.dumps([source, self._version_text, list(self._build_flags), self._libc_id])
        return hashlib.sha256(material.encode()).hexdigest()

    def _limits(self, output: int = _RUSTC_OUTPUT_CAP) -> Limits:
        return Limits(
            wall_seconds=self.settings.compile_timeout,
            memory_bytes=self.settings.compile_memory_mb << 20,
            output_bytes=output,
        )

    def _env_in(self, directory: Path | str) -> dict[str, str]:
        """The tools' environment with TMPDIR in ``directory``: the linker's temporary files (cc's ``.res``,
        ``.cdtor.c``) land beside the build, on the sandbox's scratch space (tmpfs when there is one, #16),
        and go with it."""
        return {**self._env, "TMPDIR": os.path.abspath(directory)}

    async def build(
        self, source: str, out_dir: Path, *, max_diagnostic_chars: int = 6000, cpu: anyio.CapacityLimiter | None = None,
        source_written: bool = False,
    ) -> BuildResult:
        """Compile ``source`` into ``out_dir/main``; a failure is a result (errors only, first first).

        The compile cache is consulted and filled only when ``[toolchain] compile_cache`` is true. ``cpu`` (the
        engine's CPU limiter) is held only while rustc runs, not while the source is written or the cache read.
        ``source_written``: ``out_dir/main.rs`` (:data:`SOURCE_NAME`) holds ``source`` already, written with the
        directory (:meth:`~pipeline.sandbox.Sandbox.verification_dirs`): one worker-thread trip less.

        Refused sources (see :func:`forbidden_constructs`) are not compiled. Raises OSError only when
        ``out_dir`` or the cache cannot be written.
        """
        started = time.monotonic()
        reason = forbidden_constructs(source)
        if reason is not None:
            return BuildResult(False, None, reason, 1, False, time.monotonic() - started, refused=reason)
        # Without the compile cache (benchmarks), entry is None: no key, no lookup, no store.
        entry = None
        if self.settings.compile_cache:
            key = self._key(source)
            entry = self.cache_dir / "bin" / key[:2] / key
        binary = Path(out_dir) / BINARY_NAME
        hit = None if entry is None else await anyio.to_thread.run_sync(_cache_lookup, entry, binary)
        if hit is not None:
            if hit["ok"]:
                return BuildResult(True, binary, "", 0, True, time.monotonic() - started)
            errors = tuple(hit.get("errors", ()))
            return BuildResult(
                False, None, _trim_errors(errors, max_diagnostic_chars), len(errors), True,
                time.monotonic() - started,
            )
        src = Path(out_dir) / SOURCE_NAME
        if not source_written:
            await anyio.to_thread.run_sync(src.write_text, source)
        # Relative names: the diagnostics read "--> main.rs:3:5", the same in every directory and in the cache.
        argv = [self.rustc, *self._build_flags, "-o", binary.name, src.name]
        result = await run_process(argv, cwd=Path(out_dir), limits=self._build_limits, env=self._env_in(out_dir),
                                   slot=cpu)
        seconds = time.monotonic() - started
        if result.ok and entry is None and self._executable_by_all:
            return BuildResult(True, binary, "", 0, False, seconds)  # as rustc left it: no worker-thread trip
        # One trip to a worker thread: the binary made executable for the runs' uids (and cached).
        if result.ok and await anyio.to_thread.run_sync(_publish_binary, binary, entry):
            return BuildResult(True, binary, "", 0, False, seconds)
        if result.timed_out or result.output_exceeded or result.returncode != 1:
            # Not a verdict on the source (killed, out of memory, crashed): say so and do not cache it.
            diags = _parse_diagnostics(result.stderr)
            text = f"rustc {result.describe()}"
            if diags.errors:
                text += "\n" + _trim_errors(diags.errors, max(max_diagnostic_chars - len(text) - 1, 200))
            return BuildResult(False, None, text[:max_diagnostic_chars], max(len(diags.errors), 1), False, seconds)
        errors = _parse_diagnostics(result.stderr).errors or ("rustc failed without a diagnostic",)
        if entry is not None:
            await anyio.to_thread.run_sync(_cache_store_failure, entry, errors)
        return BuildResult(False, None, _trim_errors(errors, max_diagnostic_chars), len(errors), False, seconds)

    async def build_staticlib(self, source: str, out_dir: Path, *, max_diagnostic_chars: int = 6000) -> BuildResult:
        """Compile ``source`` into ``out_dir/libmain.a``, a static library C programs can link (the FFI harness of
        function-level translation); link it with :data:`STATICLIB_LINK_FLAGS`. Same flags and refusals as
        :meth:`build`, not cached. Raises OSError only when ``out_dir`` cannot be written.
        """
        started = time.monotonic()
        reason = forbidden_constructs(source)
        if reason is not None:
            return BuildResult(False, None, reason, 1, False, time.monotonic() - started, refused=reason)
        src = Path(out_dir) / f"{BINARY_NAME}.rs"
        library = Path(out_dir) / f"lib{BINARY_NAME}.a"
        await anyio.to_thread.run_sync(src.write_text, source)
        argv = [self.rustc, *self._flags(crate_type="staticlib"), "-o", library.name, src.name]
        result = await run_process(argv, cwd=Path(out_dir), limits=self._limits(), env=self._env_in(out_dir))
        seconds = time.monotonic() - started
        if result.ok and await anyio.to_thread.run_sync(library.is_file):
            return BuildResult(True, library, "", 0, False, seconds)
        errors = _parse_diagnostics(result.stderr).errors or (f"rustc {result.describe()}",)
        return BuildResult(False, None, _trim_errors(errors, max_diagnostic_chars), len(errors), False, seconds)

    async def clippy_stats(self, source: str, work_dir: Path) -> dict[str, object]:
        """Lint ``source`` with clippy and measure its unsafe share.

        Returns ``{"total_warnings", "lints": {lint: count}, "unsafe_lines", "total_lines",
        "unsafe_fraction", "unsafe_blocks", "unsafe_fns"}``; with ``"clippy": "unavailable"`` (and no lint
        counts) when clippy-driver is not there, ``"refused"`` for a refused source, ``"clippy_error"`` when
        clippy did not finish. Raises OSError only when ``work_dir`` cannot be written.
        """
        stats: dict[str, object] = dict(unsafe_stats(source))
        if self.clippy is None:
            stats["clippy"] = "unavailable"
            return stats
        reason = forbidden_constructs(source)
        if reason is not None:
            stats["refused"] = reason
            return stats
        src = Path(work_dir) / "clippy_main.rs"
        await anyio.to_thread.run_sync(src.write_text, source)
        argv = [
            self.clippy,
            *self._flags(warnings=True),
            "--emit=metadata", "-o", "clippy_main.rmeta",
            "-W", "clippy::all",
            src.name,
        ]
        result = await run_process(argv, cwd=Path(work_dir), limits=self._limits(), env=self._env_in(work_dir))
        diags = _parse_diagnostics(result.stderr)
        lints: dict[str, int] = {}
        for code, _text in diags.warnings:
            name = code or "other"
            lints[name] = lints.get(name, 0) + 1
        stats["total_warnings"] = len(diags.warnings)
        stats["lints"] = dict(sorted(lints.items(), key=lambda kv: (-kv[1], kv[0])))
        if not result.ok:
            stats["clippy_error"] = (
                f"{len(diags.errors)} error(s)" if diags.errors and result.returncode == 1
                else _describe_failure(result, "clippy-driver")[:500]
            )
        return stats


def _find_libc_source(settings: ToolchainSettings) -> Path:
    if settings.libc_source:
        src = Path(settings.libc_source).expanduser()
        if not (src / "Cargo.toml").is_file() or not (src / "src" / "lib.rs").is_file():
            raise ConfigError(
                f"[toolchain] libc_source = {settings.libc_source!r} is not a libc crate (no Cargo.toml and "
                f"src/lib.rs there): {LIBC_HINT}"
            )
        return src
    candidates = sorted(
        (p for p in DEBIAN_REGISTRY.glob("libc-*") if (p / "src" / "lib.rs").is_file()), key=_version_key
    )
    if not candidates:
        raise ConfigError(f"the libc crate source was not found under {DEBIAN_REGISTRY}: {LIBC_HINT}")
    return candidates[-1]


async def _find_clippy(settings: ToolchainSettings, rustc: str, env: dict[str, str]) -> str | None:
    beside = Path(rustc).parent / "clippy-driver"
    candidates = [str(beside)] if settings.clippy_driver == "clippy-driver" and beside.is_file() else []
    which = shutil.which(settings.clippy_driver)
    if which:
        candidates.append(which)
    for candidate in candidates:
        res = await run_process(
            [candidate, "--version"], cwd=Path(tempfile.gettempdir()), env=env,
            limits=Limits(wall_seconds=30.0, memory_bytes=2 << 30, output_bytes=100_000),
        )
        if res.ok:
            return candidate
        log.debug("clippy-driver %s does not run: %s", candidate, res.describe())
    log.warning(
        "clippy-driver (%s) is not available: clippy statistics are skipped (rustup component add clippy, "
        "or set [toolchain] clippy = false)", settings.clippy_driver,
    )
    return None


async def _ensure_libc(
    rustc: str,
    env: dict[str, str],
    version_text: str,
    host: str,
    libc_src: Path,
    cache_dir: Path,
    settings: ToolchainSettings,
) -> Path:
    """The libc rlib for this compiler, built once into the cache (atomically: temp dir, then rename)."""
    manifest = await anyio.to_thread.run_sync(_read_manifest, libc_src)
    package = manifest.get("package", {})
    version = str(package.get("version", "0"))
    edition = str(package.get("edition", "2015"))
    rustc_hash = hashlib.sha256(version_text.encode()).hexdigest()[:16]
    final = cache_dir / f"libc-{version}-{rustc_hash}"
    rlib = final / "liblibc.rlib"
    if await anyio.to_thread.run_sync(rlib.is_file):
        return rlib
    log.info("toolchain: building the libc crate %s from %s (once)", version, libc_src)
    await anyio.to_thread.run_sync(_remove_stale_builds, cache_dir)
    tmp = Path(await anyio.to_thread.run_sync(
        lambda: tempfile.mkdtemp(prefix=f"{LIBC_BUILD_PREFIX}{os.getpid()}-", dir=cache_dir)
    ))
    try:
        limits = Limits(
            wall_seconds=max(settings.compile_timeout, 300.0),
            memory_bytes=settings.compile_memory_mb << 20,
            output_bytes=_RUSTC_OUTPUT_CAP,
        )
        features = _libc_features(manifest)
        cfgs = await _run_build_script(rustc, env, host, libc_src, tmp, version, edition, features, limits)
        argv = [
            rustc, "--crate-name", "libc", "--edition", edition, "--crate-type", "rlib",
            *(arg for f in sorted(features) for arg in ("--cfg", f'feature="{f}"')),
            *(arg for c in cfgs for arg in ("--cfg", c)),
            "--cap-lints", "allow",
            *CODEGEN_FLAGS,
            "-C", f"metadata={rustc_hash}",
            "--error-format=json",
            "--out-dir", str(tmp),
            str(libc_src / "src" / "lib.rs"),
        ]
        result = await run_process(argv, cwd=tmp, limits=limits, env=env)
        if not result.ok or not await anyio.to_thread.run_sync((tmp / "liblibc.rlib").is_file):
            errors = _parse_diagnostics(result.stderr).errors
            detail = _trim_errors(errors, 1500) if errors else result.describe()
            raise ConfigError(f"could not build the libc crate from {libc_src}: {detail}\n{LIBC_HINT}")
        info = {"source": str(libc_src), "version": version, "edition": edition, "features": sorted(features),
                "cfgs": cfgs, "rustc": version_text}
        await anyio.to_thread.run_sync(_publish_libc, tmp, final, info)
    finally:
        # Also when start-up is cancelled (SIGINT/SIGTERM): no half-built crate stays in the cache.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(_remove, tmp)
    return rlib


def _read_umask() -> int | None:
    """This process's umask (from /proc, since ``os.umask`` can only read it by changing it), or None."""
    try:
        with open("/proc/self/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _remove_stale_builds(cache_dir: Path) -> None:
    """Remove libc build directories of runs that were killed mid-build (SIGKILL leaves no chance to clean)."""
    for entry in cache_dir.glob(f"{LIBC_BUILD_PREFIX}*"):
        pid = entry.name[len(LIBC_BUILD_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or not _pid_alive(int(pid)):
            log.info("toolchain: removing %s, left by a libc build that was killed", entry)
            _remove(entry)


def _read_manifest(libc_src: Path) -> dict[str, Any]:
    try:
        return tomllib.loads((libc_src / "Cargo.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{libc_src}/Cargo.toml cannot be read ({exc}): {LIBC_HINT}") from exc


def _publish_libc(tmp: Path, final: Path, info: dict[str, Any]) -> None:
    """Move a finished build into place in one rename; a concurrent run that got there first wins."""
    for leftover in tmp.iterdir():
        if leftover.name != "liblibc.rlib":
            _remove(leftover)
    (tmp / "build.json").write_text(json.dumps(info, indent=1))
    try:
        os.rename(tmp, final)
    except OSError:
        if not (final / "liblibc.rlib").is_file():
            raise
        log.debug("toolchain: another run built %s first", final)


def _libc_features(manifest: dict[str, Any]) -> set[str]:
    """The crate's default features, expanded (``default = ["std"]`` -> {"default", "std"})."""
    table = manifest.get("features", {})
    wanted, todo = set(), ["default"]
    while todo:
        name = todo.pop()
        if name in wanted or name not in table:
            continue
        wanted.add(name)
        todo.extend(str(x) for x in table[name] if "/" not in str(x) and not str(x).startswith("dep:"))
    return {f for f in wanted if not f.startswith("rustc-dep-of-std")}


async def _run_build_script(
    rustc: str,
    env: dict[str, str],
    host: str,
    libc_src: Path,
    tmp: Path,
    version: str,
    edition: str,
    features: set[str],
    limits: Limits,
) -> list[str]:
    """Compile and run libc's build.rs the way cargo would; the ``--cfg`` values it asks for."""
    script = libc_src / "build.rs"
    if not script.is_file():
        return []
    exe = tmp / "build-script-build"
    compiled = await run_process(
        [rustc, "--crate-name", "build_script_build", "--edition", edition, "--crate-type", "bin",
         "--cap-lints", "allow", "-C", "opt-level=0", "--error-format=json", "-o", str(exe), str(script)],
        cwd=tmp, limits=limits, env=env,
    )
    if not compiled.ok:
        errors = _parse_diagnostics(compiled.stderr).errors
        raise ConfigError(
            f"could not compile {script}: {_trim_errors(errors, 1500) if errors else compiled.describe()}\n"
            f"{LIBC_HINT}"
        )
    cfg_res = await run_process([rustc, "--print", "cfg"], cwd=tmp, limits=limits, env=env)
    script_env = dict(env)
    for line in cfg_res.stdout.decode().splitlines():
        name, _, value = line.partition("=")
        key = "CARGO_CFG_" + name.upper().replace("-", "_")
        value = value.strip('"')
        script_env[key] = f"{script_env[key]},{value}" if key in script_env and value else value
    out = tmp / "out"
    await anyio.to_thread.run_sync(out.mkdir)
    major, minor, patch = ([*version.split("-")[0].split("."), "0", "0", "0"])[:3]
    script_env.update({
        "RUSTC": rustc, "TARGET": host, "HOST": host, "OUT_DIR": str(out), "CARGO_MANIFEST_DIR": str(libc_src),
        "CARGO_PKG_NAME": "libc", "CARGO_PKG_VERSION": version, "CARGO_PKG_VERSION_MAJOR": major,
        "CARGO_PKG_VERSION_MINOR": minor, "CARGO_PKG_VERSION_PATCH": patch, "PROFILE": "release",
        "OPT_LEVEL": "1", "DEBUG": "false", "NUM_JOBS": "1", "RUSTC_LINKER": "cc",
        **{f"CARGO_FEATURE_{f.upper().replace('-', '_')}": "1" for f in features},
    })
    ran = await run_process([str(exe)], cwd=libc_src, limits=limits, env=script_env)
    if not ran.ok:
        raise ConfigError(f"libc's build script failed: {_describe_failure(ran, str(script))}\n{LIBC_HINT}")
    cfgs = []
    for line in ran.stdout.decode("utf-8", errors="replace").splitlines():
        for prefix in ("cargo:rustc-cfg=", "cargo::rustc-cfg="):
            if line.startswith(prefix):
                cfgs.append(line[len(prefix):].strip())
    log.debug("toolchain: libc build script cfgs: %s", cfgs)
    return cfgs


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _cache_lookup(entry: Path, binary: Path) -> dict[str, Any] | None:
    """A cached outcome for ``entry``; a cached binary is copied to ``binary`` (a copy, never a link: the
    sandbox may hand the directory to a program's uid)."""
    try:
        shutil.copyfile(entry, binary)
        os.chmod(binary, 0o755)
        return {"ok": True}
    except FileNotFoundError:
        pass
    try:
        data = json.loads(entry.with_suffix(".json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("ok") is False else None


def _publish_binary(binary: Path, entry: Path | None) -> bool:
    """Whether rustc left ``binary``; if so, it is made executable by all and stored in the cache (``entry``)."""
    try:
        if entry is not None:
            _cache_store_binary(entry, binary)
        else:
            os.chmod(binary, 0o755)
    except FileNotFoundError:
        return False
    return True


def _cache_store_binary(entry: Path, binary: Path) -> None:
    os.chmod(binary, 0o755)
    try:
        _write_atomic(entry, binary.read_bytes(), 0o755)
    except OSError as exc:
        log.warning("toolchain: cannot write the compile cache %s: %s", entry, exc)


def _cache_store_failure(entry: Path, errors: tuple[str, ...]) -> None:
    kept, used = [], 0
    for text in errors:
        if used + len(text) > _CACHED_DIAGNOSTICS_CAP:
            break
        kept.append(text)
        used += len(text)
    try:
        _write_atomic(entry.with_suffix(".json"), json.dumps({"ok": False, "errors": kept}).encode())
    except OSError as exc:
        log.warning("toolchain: cannot write the compile cache %s: %s", entry, exc)
