"""What is finished, keyed by inputs and settings; atomic writes; the run lock.

Layout in the output directory::

    ledger.jsonl           the snapshot: one JSON record per finished task (replaced atomically)
    ledger.journal.jsonl   records appended during a run, one line each, fsync'd; folded into the snapshot
                           when the run ends
    .run.lock              held with flock() by the running process; the kernel drops it when the process dies
    batch_summary.json     written by the engine from the ledger (every task it knows) when a run ends

A record is trusted only when its line is complete JSON; a run killed mid-append (or a full disk) leaves a
torn last line, which is cut off before the next append so that it never swallows the record after it: the
torn task is simply redone. A task counts as done when its record's key (input hash and
settings fingerprint) equals the key of the task as it is now, or, for a task that verified whole-file, when its
``reuse_key`` (input hash, the fingerprint of every setting but the attempts per stage, and the most attempts a
stage needed) says that the task as it is now would verify the same way: more attempts change nothing for it.

Memory: the index keeps one small tuple per task (id, key, status), not the records themselves; summaries
stream the records from disk.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Container, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .errors import DiskFull, RunLocked
from .results import atomic_writer, remove_stale_temporaries

log = logging.getLogger(__name__)

SNAPSHOT = "ledger.jsonl"
JOURNAL = "ledger.journal.jsonl"
LOCK = ".run.lock"
SUMMARY = "batch_summary.json"
#: The tool's own files at the top of an output directory: no task's folder may take one of these names.
OUTPUT_FILES = frozenset({SNAPSHOT, JOURNAL, LOCK, SUMMARY})


def fingerprint(settings: Mapping[str, Any]) -> str:
    """A digest of everything that shapes a result (model, prompts, sampling, limits)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Entry:
    key: str
    status: str
    reuse: str | None = None  # the record's reuse_key (see Ledger.record)


class Ledger:
    """The record of finished tasks of one output directory. Open it with :meth:`open`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._index: dict[str, Entry] = {}
        self._journal: IO[bytes] | None = None

    @classmethod
    def load(cls, directory: Path) -> Ledger:
        """Read the ledger and open its journal for appends. Blocking: call it from a worker thread."""
        ledger = cls(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if removed := remove_stale_temporaries(directory):  # a killed run's snapshot or summary, half-written
            log.info("%s: removed %d temporary file(s) of an interrupted run", directory, removed)
        _cut_torn_tail(directory / JOURNAL)
        ledger._load()
        # Unbuffered: a record is on disk whole or (after _undo_append) not at all, never left in a buffer.
        ledger._journal = (directory / JOURNAL).open("ab", buffering=0)
        return ledger

    def close(self, keep: Container[str] | None = None) -> None:
        """Close the journal and fold it into the snapshot, keeping only the ids in ``keep`` when given
        (see :meth:`compact`). Blocking."""
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        self.compact(keep)

    @classmethod
    @contextmanager
    def open(cls, directory: Path) -> Iterator[Ledger]:
        """:meth:`load` and :meth:`close` around a block (for synchronous callers)."""
        ledger = cls.load(directory)
        try:
            yield ledger
        finally:
            ledger.close()

    def _records(self) -> Iterator[dict[str, Any]]:
        for name in (SNAPSHOT, JOURNAL):
            path = self.directory / name
            if not path.exists():
                continue
            with path.open(encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    if not line.endswith("\n"):
                        log.warning("%s: ignoring an incomplete last record (an interrupted write)", path)
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:
                        log.warning("%s: ignoring a damaged record", path)
                        continue
                    if isinstance(record, dict) and isinstance(record.get("task_id"), str):
                        yield record

    def _load(self) -> None:
        for record in self._records():
            reuse = record.get("reuse_key")
            self._index[record["task_id"]] = Entry(str(record.get("key")), str(record.get("status")),
                                                   reuse if isinstance(reuse, str) else None)

    def get(self, task_id: str) -> Entry | None:
        return self._index.get(task_id)

    def __len__(self) -> int:
        return len(self._index)

    def record(self, key: str, summary: Mapping[str, Any], reuse: str | None = None) -> None:
        """Append one finished task (durably) and update the index. ``reuse``: a second key under which the
        result also counts as finished (the engine's, for a verified task: see the module's docstring).
        Raises DiskFull."""
        assert self._journal is not None, "the ledger is not open"
        record = {**summary, "key": key, **({"reuse_key": reuse} if reuse else {}), "recorded_at": time.time()}
        # backslashreplace: a record always serialises (file names need not be UTF-8).
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8", "backslashreplace")
        fd = self._journal.fileno()
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view):]
            os.fdatasync(fd)  # the record and the journal's new size: what a rerun reads back
        except OSError as exc:
            self._undo_append(start)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull(f"no space left while writing {self.directory / JOURNAL}: free some space and "
                               "rerun; finished tasks are kept") from exc
            raise
        self._index[str(summary["task_id"])] = Entry(key, str(summary["status"]), reuse)

    def _undo_append(self, start: int) -> None:
        """Cut a half-written record off the journal (best effort: the next load cuts it otherwise)."""
        assert self._journal is not None
        try:
            os.truncate(self._journal.fileno(), start)
        except OSError:
            pass

    def latest(self) -> Iterator[dict[str, Any]]:
        """Each task's latest record, streamed from disk (the last record of an id wins)."""
        last_line: dict[str, int] = {}
        for number, record in enumerate(self._records()):
            last_line[record["task_id"]] = number
        for number, record in enumerate(self._records()):
            if last_line.get(record["task_id"]) == number:
                yield record

    def compact(self, keep: Container[str] | None = None) -> None:
        """Fold the journal into the snapshot atomically, then drop the journal.

        With ``keep`` (the ids of a complete discovery), records of tasks no longer in the corpus are dropped,
        so the ledger, and the summary streamed from it, know the corpus's tasks and only those.
        """
        journal = self.directory / JOURNAL
        has_journal = journal.exists() and journal.stat().st_size > 0
        if not has_journal and (keep is None or all(r["task_id"] in keep for r in self._records())):
            if journal.exists():
                journal.unlink()
            return
        dropped = 0
        with atomic_writer(self.directory / SNAPSHOT) as fh:
            for record in self.latest():
                if keep is None or record["task_id"] in keep:
                    fh.write(json.dumps(record, ensure_ascii=False) + "\n")
                else:
                    dropped += 1
        if dropped:
            log.info("%s: forgot %d task(s) no longer in the corpus (their result folders stay)",
                     self.directory / SNAPSHOT, dropped)
        if journal.exists():
            journal.unlink()


def _cut_torn_tail(path: Path) -> None:
    """Cut a journal's incomplete last line (a crash or a full disk mid-append) so the next append starts
    on a line of its own. Raises OSError (DiskFull never: truncating frees space)."""
    try:
        fh = path.open("r+b")
    except FileNotFoundError:
        return
    with fh:
        end = fh.seek(0, os.SEEK_END)
        position = end
        while position > 0:
            step = min(position, 1 << 16)
            fh.seek(position - step)
            block = fh.read(step)
            newline = block.rfind(b"\n")
            if newline >= 0:
                position = position - step + newline + 1
                break
            position -= step
        if position < end:
            log.warning("%s: cutting off an incomplete last record (an interrupted write); that task is redone",
                        path)
            fh.truncate(position)


@contextmanager
def run_lock(directory: Path, *, flag: str = "--output") -> Iterator[None]:
    """Hold ``directory`` for this run; raise RunLocked naming the holder's pid if another run has it.

    The lock file records the pid, host and start time, never the command line (it may carry an API key).
    ``flag`` names the option that chose the directory, for the message.
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK
    fh = path.open("a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read(200).strip() or "another process"
            raise RunLocked(
                f"{directory} is in use by another run ({holder}); wait for it to finish or choose another "
                f"{flag} directory"
            ) from None
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            fh.flush()
        except OSError as exc:
            raise DiskFull(f"cannot write {path}: {exc.strerror}") from exc
        yield
    finally:
        fh.close()
