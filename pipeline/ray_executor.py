"""Compile and test on a Ray cluster: :class:`RayVerifier`, the :class:`~pipeline.interfaces.Verifier` of
``--executor ray``.

Every build-and-test job (one candidate: refuse, build, test), every vacuity check and every clippy run is one
Ray task of ``JOB_CPUS`` CPU, named so that ``ray list tasks`` and the dashboard show what it is
(:data:`TASK_NAMES`). Values go in and come out: the run's Config (limits included), the candidate's source
text and the test suite with the files its commands name packed into a tar archive; a Verdict (or the
vacuity messages, the clippy figures) comes back. Nothing of the driver (sandbox, toolchain, paths) is shipped.

On a node, each Ray worker process opens its own :class:`~pipeline.verifier.LocalVerifier` on first use (the
toolchain with its libc rlib and compile cache under the node's cache directory, a sandbox under the node's
temporary directory) and keeps it for the process's life, on an event loop of its own (an anyio blocking
portal): the verdict rules are those of the local executor, run by the same code.

The driver ships its own ``pipeline`` package to the workers (Ray's ``runtime_env`` ``py_modules``), so every
node judges with the driver's code; a node needs Python with this project's dependencies and ``ray``, rustc
and the libc crate source (docs/scale-out.md). The asyncio driver awaits the results (``ObjectRef.future()``
wrapped for asyncio), so no thread waits on the cluster; a cancelled wait cancels its Ray task.
"""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import io
import logging
import os
import re
import shutil
import socket
import tarfile
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal

from .build import Toolchain
from .config import Config
from .errors import ConfigError, FatalError, TaskFailure
from .records import Candidate, Oracle, TestSuite, Verdict
from .sandbox import Sandbox, _copy_files
from .verifier import LocalVerifier

log = logging.getLogger(__name__)

#: CPUs each Ray task asks for: one compile or test process at a time, as one slot of --jobs locally.
JOB_CPUS = 1
#: Ray's own retries of a job whose worker or node died (not of a failing program: that is a verdict).
JOB_RETRIES = 2
#: What ``ray list tasks`` shows for each kind of job (the build-and-test name ends with the stage).
TASK_NAMES = {"verify": "c2rust build+test", "vacuity": "c2rust vacuity check", "clippy": "c2rust clippy",
              "oracle": "c2rust differential oracle"}
#: Ray's switch that keeps a local instance on 127.0.0.1 (its name says Windows and macOS; it works on Linux too).
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
#: Seconds to wait for the cluster's address to accept a connection before saying nothing is there.
PROBE_SECONDS = 10.0
#: How to get Ray, said wherever it is missing.
INSTALL_HINT = "pip install -e '.[ray]'"


def ray_missing_message(exc: BaseException) -> str:
    """What to tell a user whose ``--executor ray`` run finds no ``ray`` package."""
    return (f"--executor ray ([pipeline] executor = \"ray\") needs the ray package, which cannot be imported here "
            f"({exc}): run {INSTALL_HINT} on this machine and on every node of the Ray cluster, or use "
            f"--executor local")


def import_ray() -> ModuleType:
    """The ``ray`` module, or ConfigError saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(ray_missing_message(exc)) from exc
    return ray


# --------------------------------------------------------------------------------------------------------
# Plain values in: the suite with the files its commands name


@dataclass(frozen=True)
class ShippedSuite:
    """A test suite as a value another machine can use: the files it names travel as a tar archive."""

    suite: TestSuite
    archive: bytes  # empty when the suite names no files


def ship_suite(suite: TestSuite) -> ShippedSuite:
    """Pack the files ``suite`` names (by the sandbox's copy rules: no symlinks, nothing outside its folder)."""
    if not suite.files:
        return ShippedSuite(suite, b"")
    with tempfile.TemporaryDirectory(prefix="c2rust-ship-") as tmp:
        _copy_files(suite.base_dir, list(suite.files), Path(tmp))
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            tar.add(tmp, arcname=".")
    return ShippedSuite(suite, buffer.getvalue())


@contextmanager
def unpacked(shipped: ShippedSuite, parent: Path) -> Iterator[TestSuite]:
    """The shipped suite with its files unpacked in a fresh folder under ``parent``, removed afterwards."""
    if not shipped.archive:
        yield shipped.suite
        return
    folder = Path(tempfile.mkdtemp(prefix="suite-", dir=parent))
    try:
        with tarfile.open(fileobj=io.BytesIO(shipped.archive), mode="r:gz") as tar:
            tar.extractall(folder, filter="data")
        yield dataclasses.replace(shipped.suite, base_dir=folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --------------------------------------------------------------------------------------------------------
# On a Ray worker: the local verifier, opened on first use


class _NodeVerifier:
    """This worker process's LocalVerifier on an event loop of its own, open until the process exits."""

    def __init__(self, config: Config) -> None:
        self._portal_cm: AbstractContextManager[BlockingPortal] = start_blocking_portal()
        self.portal = self._portal_cm.__enter__()
        self._sandbox_cm: AbstractContextManager[Sandbox] | None = None
        try:
            self._sandbox_cm = self.portal.wrap_async_context_manager(Sandbox.open(
                config.sandbox, cache_dir=config.toolchain.resolved_cache_dir()
            ))
            sandbox = self._sandbox_cm.__enter__()
            toolchain = self.portal.call(Toolchain.prepare, config.toolchain)
            cpu = self.portal.call(_one_slot)  # Ray gives this process one job at a time
            self.verifier = LocalVerifier(config, toolchain, sandbox, cpu)
        except BaseException:
            self.close()
            raise
        atexit.register(self.close)

    def close(self) -> None:
        sandbox_cm, self._sandbox_cm = self._sandbox_cm, None
        try:
            if sandbox_cm is not None:
                sandbox_cm.__exit__(None, None, None)
        finally:
            self._portal_cm.__exit__(None, None, None)

    def run(self, func: Callable[..., Any], *args: Any) -> Any:
        return self.portal.call(func, *args)


async def _one_slot() -> anyio.CapacityLimiter:
    return anyio.CapacityLimiter(1)


_NODE_VERIFIERS: dict[Config, _NodeVerifier] = {}
_NODE_LOCK = threading.Lock()


def _node_verifier(config: Config) -> _NodeVerifier:
    with _NODE_LOCK:
        found = _NODE_VERIFIERS.get(config)
        if found is None:
            found = _NODE_VERIFIERS[config] = _NodeVerifier(config)
        return found


def verify_job(config: Config, candidate: Candidate, shipped: ShippedSuite, oracle: Oracle | None) -> Verdict:
    """A Ray task: the local verifier's verdict on ``candidate`` (the oracle's inputs run after the shipped
    tests pass, as locally)."""
    node = _node_verifier(config)
    with unpacked(shipped, node.verifier.sandbox.scratch) as suite:
        verdict: Verdict = node.run(node.verifier.verify, candidate, suite, oracle)
    return verdict


def oracle_job(config: Config, c_source: str, shipped: ShippedSuite, key: str, proposed: Sequence[str]
               ) -> Oracle | None:
    """A Ray task: the C program's oracle on generated inputs (a plain value; cached on the node by ``key``)."""
    node = _node_verifier(config)
    with unpacked(shipped, node.verifier.sandbox.scratch) as suite:
        oracle: Oracle | None = node.run(node.verifier.oracle, c_source, suite, key, proposed)
    return oracle


def vacuity_job(config: Config, shipped: ShippedSuite, key: str) -> list[str]:
    """A Ray task: the local verifier's vacuity messages for the suite (cached on the node by ``key``)."""
    node = _node_verifier(config)
    with unpacked(shipped, node.verifier.sandbox.scratch) as suite:
        found: list[str] = node.run(node.verifier.vacuous_tests, suite, key)
    return found


def clippy_job(config: Config, code: str) -> dict[str, Any]:
    """A Ray task: the local verifier's quality figures of a verified program."""
    node = _node_verifier(config)
    stats: dict[str, Any] = node.run(node.verifier.code_stats, code)
    return stats


# --------------------------------------------------------------------------------------------------------
# On the driver


def _connect(ray: ModuleType, config: Config) -> bool:
    """Connect to the configured cluster (or start a local instance); True when this call did it."""
    if ray.is_initialized():
        return False
    import pipeline

    options: dict[str, Any] = {
        # The workers import the driver's own code, whatever (if anything) is installed on their node.
        "runtime_env": {"py_modules": [str(Path(pipeline.__file__).parent)]},
        "log_to_driver": False,  # only the CLI prints; the workers' logs stay in Ray's log folder
        "logging_level": logging.ERROR,  # not its "SIGTERM handler is not set" warning: the run handles signals
    }
    address = config.run.ray_address
    if address:
        _probe(address)
    try:
        if address:
            ray.init(address=address, **options)
        else:
            # On the loopback: a local instance is nobody else's business.
            ray.init(address="local", num_cpus=config.run.jobs, include_dashboard=False,
                     _node_ip_address="127.0.0.1", **options)
    except (ConnectionError, TimeoutError, ValueError, RuntimeError) as exc:
        if address:
            raise _address_error(address, f"cannot connect to the Ray cluster there ({exc})") from exc
        raise ConfigError(f"--executor ray: cannot start a local Ray instance ({exc}); see `ray start --head` "
                          f"or use --executor local") from exc
    cpus = ray.cluster_resources().get("CPU", 0)
    log.info("Ray cluster %s: %g CPUs on %d node(s)", address or "local (127.0.0.1)", cpus,
             len([n for n in ray.nodes() if n.get("Alive")]))
    if config.run.jobs < cpus:
        log.warning("the Ray cluster has %g CPUs but --jobs is %d: at most %d build and test jobs run at once; "
                    "set --jobs %g ([pipeline] jobs) to use them all", cpus, config.run.jobs, config.run.jobs, cpus)
    return True


def _address_error(address: str, problem: str) -> ConfigError:
    return ConfigError(
        f"--ray-address {address} ([pipeline] ray_address): {problem}: start the cluster with `ray start --head` "
        f"on that machine, check the address (HOST:PORT of the head, 6379 unless `ray start --port` said "
        f"otherwise), or leave --ray-address out to start a local Ray instance"
    )


def _probe(address: str) -> None:
    """ConfigError at once when nothing listens at a HOST:PORT address (Ray itself retries for minutes)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return  # "auto", a ray:// client address: Ray's own checks
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_SECONDS).close()
    except OSError as exc:
        raise _address_error(address, f"no Ray cluster answers there ({exc.strerror or exc})") from exc


class _Connection:
    """The driver's connection to Ray, made and closed by a thread of its own that lives as long as it.

    A local instance's processes die with the thread that started them (Ray sets their parent-death signal,
    which Linux ties to the parent *thread*), and anyio's worker threads end after idling for a while: started
    from one of those, the instance was killed mid-run.
    """

    def __init__(self, ray: ModuleType, config: Config) -> None:
        self._ray, self._config = ray, config
        self._ready, self._closing = threading.Event(), threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="c2rust-ray", daemon=True)

    def _main(self) -> None:
        try:
            started = _connect(self._ray, self._config)
        except BaseException as exc:
            self._error = exc
            return
        finally:
            self._ready.set()
        self._closing.wait()
        if started:
            self._ray.shutdown()

    async def start(self) -> None:
        """Connect (or start the local instance). Raises ConfigError when that fails."""
        self._thread.start()
        await anyio.to_thread.run_sync(self._ready.wait)
        if self._error is not None:
            await anyio.to_thread.run_sync(self._thread.join)
            raise self._error

    async def stop(self) -> None:
        """Disconnect (and stop the local instance this connection started)."""
        self._closing.set()
        await anyio.to_thread.run_sync(self._thread.join)


@dataclass(frozen=True)
class RayVerifier:
    """Builds and tests on a Ray cluster. Open one per run with ``async with RayVerifier.open(config, cpu)``.

    ``cpu`` bounds the jobs in flight (``--jobs``): set it to the cluster's CPUs so none sits idle.
    """

    config: Config
    cpu: anyio.CapacityLimiter
    ray: ModuleType
    remote: dict[str, Any]  # the Ray remote function of each kind of job

    @classmethod
    @asynccontextmanager
    async def open(cls, config: Config, cpu: anyio.CapacityLimiter) -> AsyncIterator[RayVerifier]:
        """Connect (or start a local instance); disconnect (or stop it) on exit.

        Raises ConfigError when ray is not installed or the cluster cannot be reached.
        """
        if not config.run.ray_address:
            # Ray's own switch for one-machine instances: without it, the local instance's GCS, raylet and
            # workers listen on every interface, whatever node address they are given. Read by Ray at import
            # and by the processes it starts, so it is set before the import, in the environment they inherit.
            os.environ.setdefault(LOOPBACK_ENV, "0")
        ray = import_ray()
        owner = _Connection(ray, config)
        await owner.start()
        try:
            options = {"num_cpus": JOB_CPUS, "max_retries": JOB_RETRIES}
            remote = {kind: ray.remote(**options)(func)
                      for kind, func in (("verify", verify_job), ("vacuity", vacuity_job), ("clippy", clippy_job),
                                            ("oracle", oracle_job))}
            yield cls(config, cpu, ray, remote)
        finally:
            with anyio.CancelScope(shield=True):
                await owner.stop()

    async def _run(self, kind: str, name: str, *args: Any) -> Any:
        async with self.cpu:
            ref = self.remote[kind].options(name=name).remote(self.config, *args)
            try:
                return await asyncio.wrap_future(ref.future())
            except anyio.get_cancelled_exc_class():
                self.ray.cancel(ref)
                raise
            except self.ray.exceptions.RayTaskError as exc:
                raise _task_error(exc, name) from exc
            except self.ray.exceptions.RayError as exc:
                raise TaskFailure(f"the Ray cluster lost the {name!r} job ({type(exc).__name__}: {exc}); "
                                  f"rerun with --retry-failed once the cluster is healthy") from exc

    async def verify(self, candidate: Candidate, suite: TestSuite, oracle: Oracle | None = None) -> Verdict:
        shipped = await anyio.to_thread.run_sync(ship_suite, suite)
        verdict: Verdict = await self._run("verify", f"{TASK_NAMES['verify']} {candidate.stage}", candidate, shipped,
                                           oracle)
        return verdict

    async def oracle(
        self, c_source: str, suite: TestSuite, key: str, proposed: Sequence[str] = ()
    ) -> Oracle | None:
        if self.config.translation.differential <= 0:
            return None
        shipped = await anyio.to_thread.run_sync(ship_suite, suite)
        oracle: Oracle | None = await self._run("oracle", TASK_NAMES["oracle"], c_source, shipped, key,
                                                tuple(proposed))
        return oracle

    async def vacuous_tests(self, suite: TestSuite, key: str) -> list[str]:
        shipped = await anyio.to_thread.run_sync(ship_suite, suite)
        found: list[str] = await self._run("vacuity", TASK_NAMES["vacuity"], shipped, key)
        return found

    async def code_stats(self, code: str) -> dict[str, Any]:
        stats: dict[str, Any] = await self._run("clippy", TASK_NAMES["clippy"], code)
        return stats


def _task_error(exc: Any, name: str) -> Exception:
    """The error a failed Ray task stands for: a node that cannot build or test (its toolchain, its sandbox)
    stops the run as it would locally, naming the node; anything else is the worker's exception."""
    cause = getattr(exc, "cause", None)
    # What Ray raises stands for the cause too and keeps no ip of its own; its text starts with the task's
    # "(pid=..., ip=...)".
    found = re.search(r"\bip=([^,)\s]+)", str(exc))
    node = found.group(1) if found else "?"
    if isinstance(cause, FatalError):
        try:
            return type(cause)(f"Ray node {node}: {cause}")
        except TypeError:
            return cause
    if isinstance(cause, Exception):
        return cause
    return RuntimeError(f"the {name!r} job failed on Ray node {node}: {exc}")


__all__ = ["INSTALL_HINT", "TASK_NAMES", "RayVerifier", "import_ray", "ray_missing_message"]
