"""Measurement aid for bench/README.md ("Issue 16: compile-bound against the thread pool"); not part of the pipeline.

With this directory on PYTHONPATH and CHILDREN_LOG naming a directory, every Python process of a benchmark run
records when each child it starts with ``anyio.open_process`` is alive (from the start to the moment its
``wait()`` returns) and writes the spans to ``CHILDREN_LOG/<script>-<pid>.json`` at exit. ``python -m
bench.children.analyse DIR`` turns them into how many compile and test processes were alive.
"""

from __future__ import annotations

import os

_out = os.environ.get("CHILDREN_LOG")
if _out:
    import atexit
    import json
    import sys
    import threading
    import time
    from typing import Any

    import anyio

    _spans: list[tuple[float, float]] = []
    _lock = threading.Lock()
    _open_process = anyio.open_process

    async def _recorded(*args: Any, **kwargs: Any) -> Any:
        proc = await _open_process(*args, **kwargs)
        started = time.monotonic()
        wait = proc.wait
        seen: list[bool] = []

        async def recorded_wait() -> int:
            code = await wait()
            if not seen:
                seen.append(True)
                with _lock:
                    _spans.append((started, time.monotonic()))
            return code

        object.__setattr__(proc, "wait", recorded_wait)
        return proc

    anyio.open_process = _recorded  # type: ignore[assignment]

    def _dump() -> None:
        name = f"{os.path.basename(sys.argv[0])}-{os.getpid()}.json"
        with open(os.path.join(_out, name), "w") as fh:
            json.dump({"argv": sys.argv, "spans": _spans}, fh)

    atexit.register(_dump)
