"""Live counters of a batch run, and the two ways of showing them: tqdm bars on a terminal, log lines for cron."""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Protocol

import anyio

from .records import STAGE_SPECS, STAGES

log = logging.getLogger(__name__)

ITEM_STATUSES = ("verified", "failed", "blocked")


@dataclass
class Counters:
    """Mutated by the engine only; read by reporters."""

    started: float = field(default_factory=time.monotonic)
    discovered: int = 0
    skipped: int = 0
    orphans: int = 0
    done: int = 0
    verified: int = 0
    failed: int = 0
    stage_verified: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES, 0))
    stage_failed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES, 0))
    in_flight_requests: int = 0
    completion_tokens: int = 0
    discovery_finished: bool = False
    #: Items (functions) of function-level tasks: verified, failed, blocked by a failed dependency.
    items: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ITEM_STATUSES, 0))

    def item_text(self) -> str:
        """"items 12 ok / 1 failed / 3 blocked", or "" while no function-level task finished."""
        if not any(self.items.values()):
            return ""
        return f"items {self.items['verified']} ok / {self.items['failed']} failed / {self.items['blocked']} blocked"

    def tokens_per_second(self) -> float:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        return self.completion_tokens / elapsed

    def line(self) -> str:
        total = f"{self.discovered}" + ("" if self.discovery_finished else "+")
        return (
            f"{self.done + self.skipped}/{total} tasks "
            f"(verified {self.verified}, failed {self.failed}, unchanged {self.skipped}); "
            + ", ".join(f"{s} {self.stage_verified[s]} ok / {self.stage_failed[s]} failed" for s in STAGES)
            + "; "
            + (f"{self.item_text()}; " if self.item_text() else "")
            + f"requests in flight {self.in_flight_requests}; {self.tokens_per_second():.0f} tok/s"
        )


class Reporter(Protocol):
    async def run(self, counters: Counters) -> None:
        """Show progress until cancelled."""

    def close(self, counters: Counters, *, final: bool = True) -> None:
        """Show the final state; with ``final=False`` (nothing ran) just stop, showing nothing."""


class LogReporter:
    """Plain periodic log lines, for cron and other non-terminal output."""

    def __init__(self, interval: float = 30.0) -> None:
        self.interval = interval

    async def run(self, counters: Counters) -> None:
        while True:
            await anyio.sleep(self.interval)
            log.info("progress: %s", counters.line())

    def close(self, counters: Counters, *, final: bool = True) -> None:
        if final:
            log.info("finished: %s", counters.line())


class TqdmReporter:
    """A tqdm bar on the terminal, refreshed a few times a second."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self._bar: object | None = None

    def _render(self, counters: Counters) -> None:
        from tqdm import tqdm

        if self._bar is None:
            self._bar = tqdm(total=None, unit="task", file=sys.stderr, dynamic_ncols=True)
        bar = self._bar
        assert isinstance(bar, tqdm)
        bar.total = counters.discovered if counters.discovery_finished else None
        bar.update(counters.done + counters.skipped - bar.n)  # update(), not n=, so tqdm's rate is right
        bar.set_postfix_str(
            f"ok {counters.verified} fail {counters.failed} | "
            + " ".join(f"{spec.short} {counters.stage_verified[name]}/{counters.stage_failed[name]}"
                       for name, spec in STAGE_SPECS.items())
            + (f" | {counters.item_text()}" if counters.item_text() else "")
            + f" | inflight {counters.in_flight_requests}"
            f" | {counters.tokens_per_second():.0f} tok/s",
            refresh=False,
        )
        bar.refresh()

    async def run(self, counters: Counters) -> None:
        while True:
            self._render(counters)
            await anyio.sleep(self.interval)

    def close(self, counters: Counters, *, final: bool = True) -> None:
        if final:
            self._render(counters)
        elif self._bar is not None:
            self._bar.leave = False  # type: ignore[attr-defined]  # erase it: there is no progress to show
        if self._bar is not None:
            self._bar.close()  # type: ignore[attr-defined]
