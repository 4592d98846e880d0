"""What a run imports, and when: start-up is on the critical path of every run (#16, bench/README.md).

The CLI's first imports are the light modules (settings, discovery, ledger, the engine's bookkeeping, the
toolchain and sandbox): enough to read the settings, find the first task and start the toolchain and sandbox
probes. The model client and the stage code (:func:`import_services`: openai's SDK alone is about 0.6 s of
CPU) follow in a worker thread while the probes' child processes run, so the probes cost no wall time of
their own. Modules only some runs use (function-level stages, differential testing, Ray, reports) are
imported where they are first used.

Two things make those imports cheaper:

* optional dependencies of the HTTP stack that a run never uses (:data:`UNUSED_OPTIONAL`: openai's aiohttp
  transport, httpcore2's trio support; about 0.15 s of CPU) are kept out while it is imported; they can
  still be imported later by whoever needs them;
* the garbage collector is paused while importing, and what the imports built is frozen afterwards
  (:func:`gc.freeze`): modules and classes live as long as the process, and every full collection would
  walk them again (about 70 ms each, the last one at exit).
"""

from __future__ import annotations

import gc
import importlib
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

#: Imported by the SDKs when present, never used by a run: openai's optional aiohttp transport
#: (``DefaultAioHttpClient``) and httpcore2's support for the trio event loop (runs use asyncio).
UNUSED_OPTIONAL = ("aiohttp", "trio")
#: Imported by the SDK on first use (the HTTP client's transport, the resources of the routes a run calls):
#: imported beside the probes too, so the client opens and the first request goes out without importing.
#: A name a newer SDK no longer has costs nothing but that time.
FIRST_USE = ("httpcore2", "openai.resources.models", "openai.resources.chat.chat")


@contextmanager
def lean_imports() -> Iterator[None]:
    """Import inside this block without :data:`UNUSED_OPTIONAL` (an import of them raises ImportError, which
    the SDKs take as "not installed") and without garbage collection; freeze what was built on the way out.

    Use it around imports of modules that stay for the whole process. Modules already imported are left as
    they are.
    """
    kept_out = [name for name in UNUSED_OPTIONAL if name not in sys.modules]
    collecting = gc.isenabled()
    gc.disable()
    for name in kept_out:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for name in kept_out:
            if sys.modules.get(name, ...) is None:
                del sys.modules[name]
        gc.freeze()
        if collecting:
            gc.enable()


def import_services(*, ray: bool) -> None:
    """Import the modules a run needs from its first model request on: the model client (one server or
    several), the stage code the first request goes through, the verifier (and the Ray executor when
    ``ray``). Blocking: the engine runs it in a worker thread beside the start-up probes.
    """
    with lean_imports():
        from . import endpoints, function_task, llm, translate, verifier  # noqa: F401

        if ray:
            from . import ray_executor  # noqa: F401
        for name in FIRST_USE:
            try:
                importlib.import_module(name)
            except ImportError:
                log.debug("start-up: %s is not there to import early", name)


__all__ = ["FIRST_USE", "UNUSED_OPTIONAL", "import_services", "lean_imports"]
