"""The unit of work: one C program and the tests that judge its translation."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

TestKind = Literal["task", "samples"]
Feed = Literal["stdin", "args"]


@dataclass(frozen=True)
class Task:
    """One C program and its JSON tests, as discovery found them. Small, frozen, cheap to pass around.

    ``id`` is unique within a corpus, stable across runs and safe as a directory name (it may contain ``/``
    separators for nested layouts; each part is a plain file-name-safe string).
    ``test_kind`` says what ``test_path`` holds: a SACToR test task (a list of ``{"command": ...}``) or a list
    of samples (``{"input", "output"}``) for which the tests are built with ``feed``.
    """

    id: str
    c_path: Path
    test_path: Path
    test_kind: TestKind = "task"
    feed: Feed = "stdin"
    layout: str = "flat"


@dataclass(frozen=True)
class Orphan:
    """A file discovery could not pair or read, with the reason, for the summary.

    ``incomplete`` marks a folder that could not be listed: tasks under it may exist unseen. ``task_id`` names the
    task a file that is there but could not be read (permissions, an I/O error) belongs to: it is still part of the
    corpus, and the ledger keeps its record for when the file can be read again.
    """

    path: Path
    reason: str
    incomplete: bool = False
    task_id: str | None = None


def printable(text: Path | str) -> str:
    """A path (or a message naming one) as valid UTF-8 text for records, prompts and messages: bytes of a file
    name that are not UTF-8 are shown as ``\\xNN``, any other lone surrogate as ``\\udNNN``."""
    raw = os.fspath(text)
    try:
        return raw.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return raw.encode("utf-8", "backslashreplace").decode("utf-8")


def hash_contents(contents: Mapping[Path, bytes | None]) -> str:
    """A digest of files' names and contents, in path order (None: the file could not be read)."""
    digest = hashlib.sha256()
    for path in sorted(contents):
        digest.update(os.fsencode(path.name) + b"\0")  # names need not be UTF-8
        data = contents[path]
        digest.update(b"<missing>" if data is None else data)
        digest.update(b"\0")
    return digest.hexdigest()[:32]
