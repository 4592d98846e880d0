"""The CLI's child watcher (Python 3.10/3.11): child processes are awaited with pidfds, not a thread each."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Iterator

import anyio
import pytest


@pytest.fixture
def default_child_watcher() -> Iterator[None]:
    """Puts asyncio's default child watcher back after a test that installs the CLI's."""
    yield
    if sys.version_info < (3, 12):
        asyncio.set_child_watcher(None)


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="3.12 waits for children with pidfds by itself")
@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="pidfds are Linux's")
def test_child_processes_are_awaited_without_a_thread_each_in_any_event_loop(default_child_watcher: None) -> None:
    """The CLI's child watcher (Python 3.11): no waitpid thread per child process, and every child's exit code
    reaches the event loop that started it, in the main thread and in another thread alike."""
    from pipeline.cli import install_child_watcher

    assert install_child_watcher()

    async def children() -> tuple[list[int], set[str]]:
        threads: set[str] = set()
        codes: list[int] = []

        async def child(code: int) -> None:
            proc = await anyio.run_process(["sh", "-c", f"sleep 0.3; exit {code}"], check=False)
            codes.append(proc.returncode)

        async with anyio.create_task_group() as tg:
            for code in (0, 3, 7):
                tg.start_soon(child, code)
            await anyio.sleep(0.15)  # the children are running
            threads = {t.name for t in threading.enumerate()}
        return sorted(codes), threads

    codes, threads = anyio.run(children)
    assert codes == [0, 3, 7]
    assert not [name for name in threads if "waitpid" in name], threads
    elsewhere: list[tuple[list[int], set[str]]] = []
    thread = threading.Thread(target=lambda: elsewhere.append(anyio.run(children)))
    thread.start()
    thread.join(timeout=30)
    assert elsewhere and elsewhere[0][0] == [0, 3, 7]
    assert not [name for name in elsewhere[0][1] if "waitpid" in name], elsewhere[0][1]
