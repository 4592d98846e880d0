"""Per-item bookkeeping of function-level translation: digests for resume, blocking, and SACToR's result layout.

- :func:`item_digests` gives every item a digest of its own text and of everything it uses, transitively, so
  a record made for an item is trusted again only while neither it nor anything it depends on has changed:
  editing one function redoes that function and its callers, nothing else.
- :class:`ItemBook` holds one task's item records (status, digest, attempts, the verified Rust) in
  ``items.json`` in the task's result folder, written atomically after each change, so an interrupted run
  resumes without asking for verified items again.
- :func:`blocked_items` says which functions cannot be done because something they need failed, naming the
  failed item (SACToR's ``blocked_by_failed_dependency``); unrelated functions go on.
- :func:`write_item_files` writes SACToR's per-item layout: ``translated_code_unidiomatic/functions/NAME.rs``,
  ``structs/`` (structs, unions, typedefs), ``enums/``, ``global_vars/``, one verified item per file.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from .c_program import CProgram
from .c_types import TypeTranslation
from .errors import TaskInputError
from .results import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

ItemStatus = Literal["verified", "failed", "blocked_by_failed_dependency", "unsupported"]
BOOK = "items.json"
BOOK_VERSION = 1
#: Which folder of the result layout each kind of item goes to (SACToR's names).
FOLDERS = {"function": "functions", "struct": "structs", "union": "structs", "typedef": "structs",
           "enum": "enums", "global": "global_vars"}


def item_digests(program: CProgram, salt: str = "") -> dict[str, str]:
    """A digest per item key: its group's texts and the digests of what the group uses (``salt``, e.g. the
    settings fingerprint, mixed into each). Members of one recursion group share their digest."""
    digests: dict[str, str] = {}
    for group in program.groups():
        inside = set(group)
        used = sorted({key for member in group for key in program[member].uses} - inside)
        material = json.dumps([salt, [program[key].text for key in group], [digests[key] for key in used]])
        digest = hashlib.sha256(material.encode("utf-8", "surrogateescape")).hexdigest()[:24]
        digests.update(dict.fromkeys(group, digest))
    return digests


def blocked_items(program: CProgram, failed: Iterable[str]) -> dict[str, str]:
    """Function key -> the failed item that blocks it, for every function that needs a failed one, directly
    or through other functions or globals (a table of function pointers). Failed items themselves are not
    listed; a function blocked by several failures names the first in source order."""
    failed_set = set(failed)
    blocker: dict[str, str] = {}
    for group in program.groups():
        inside = set(group)
        found: list[str] = []
        for member in group:
            for key in program[member].uses:
                if key in inside:
                    continue
                if key in failed_set:
                    found.append(key)
                elif key in blocker:
                    found.append(blocker[key])
        if not found:
            continue
        order = {item.key: i for i, item in enumerate(program.items)}
        first = min(found, key=lambda key: order.get(key, len(order)))
        for member in group:
            if member not in failed_set:
                blocker[member] = first
    return {key: value for key, value in blocker.items() if key.startswith("function:")}


def read_book(path: Path, version: int, what: str, redo: str) -> dict[str, Any] | None:
    """The JSON object of a book file of ``version`` (None when there is none yet). Synchronous: a small file.

    Raises TaskInputError naming the file when it cannot be read or is not a book of that version with a
    ``what`` entry; the message says to delete it to redo ``redo``.
    """
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise TaskInputError(f"{path}: cannot read the item records ({exc}); delete the file to redo "
                             f"{redo}") from exc
    if not isinstance(data, dict) or data.get("version") != version or not isinstance(data.get(what, []),
                                                                                         (list, dict)):
        raise TaskInputError(f"{path}: not an item book of version {version}; delete it to redo {redo}")
    return data


@dataclass(frozen=True)
class ItemRecord:
    """What happened to one item (a function group is recorded under each of its keys)."""

    key: str
    status: ItemStatus
    digest: str
    attempts: int = 0
    rust: str | None = None  # the verified Rust, when status is verified
    reason: str = ""
    blocked_by: str | None = None
    group: tuple[str, ...] = ()


@dataclass
class ItemBook:
    """One task's item records, kept in ``folder/items.json``. Build it with :meth:`load`."""

    folder: Path
    records: dict[str, ItemRecord] = field(default_factory=dict)

    @classmethod
    def load(cls, folder: Path) -> ItemBook:
        """The book in ``folder`` (empty when there is none yet). Synchronous: a small file.

        Raises TaskInputError naming the file when it exists but is not a book this version wrote.
        """
        data = read_book(folder / BOOK, BOOK_VERSION, "items", "the task's items")
        if data is None:
            return cls(folder)
        records = {}
        for raw in data.get("items", []):
            raw["group"] = tuple(raw.get("group", ()))
            record = ItemRecord(**raw)
            records[record.key] = record
        return cls(folder, records)

    def save(self) -> None:
        """Write the book atomically (readers see the old or the new file, never a part)."""
        items = [asdict(record) for record in sorted(self.records.values(), key=lambda r: r.key)]
        atomic_write_json(self.folder / BOOK, {"version": BOOK_VERSION, "items": items})

    def verified_rust(self, group: Iterable[str], digests: Mapping[str, str]) -> str | None:
        """The recorded Rust of ``group`` when every member was verified at its current digest, else None."""
        records = [self.records.get(key) for key in group]
        if not records or any(r is None or r.status != "verified" or r.digest != digests.get(r.key)
                              for r in records):
            return None
        return records[0].rust if records[0] is not None else None

    def record(self, group: Iterable[str], status: ItemStatus, digests: Mapping[str, str], *,
               attempts: int = 0, rust: str | None = None, reason: str = "", blocked_by: str | None = None) -> None:
        """Record ``group``'s outcome under each member and save the book."""
        keys = tuple(group)
        for key in keys:
            self.records[key] = ItemRecord(key, status, digests[key], attempts, rust, reason, blocked_by, keys)
        self.save()

    def counts(self) -> dict[str, int]:
        """Items per status, for batch_summary.json and the progress line."""
        out: dict[str, int] = {}
        for record in self.records.values():
            out[record.status] = out.get(record.status, 0) + 1
        return out

    def failure_info(self) -> dict[str, Any]:
        """SACToR-style failure information keyed by item: status, attempts, reason, blocker."""
        return {
            record.key: {"status": record.status, "attempts": record.attempts, "reason": record.reason,
                         **({"blocked_by": record.blocked_by} if record.blocked_by else {})}
            for record in sorted(self.records.values(), key=lambda r: r.key) if record.status != "verified"
        }

    def forget_stale(self, digests: Mapping[str, str]) -> list[str]:
        """Drop records whose item changed (or is gone); the keys dropped, for the log."""
        stale = [key for key, record in self.records.items() if digests.get(key) != record.digest]
        for key in stale:
            del self.records[key]
        if stale:
            log.info("items: %d record(s) out of date: %s", len(stale), ", ".join(sorted(stale)[:10]))
            self.save()
        return stale

    def with_status(self, status: ItemStatus) -> list[ItemRecord]:
        return [r for r in self.records.values() if r.status == status]


def write_item_files(
    stage_dir: Path, program: CProgram, translation: TypeTranslation, book: ItemBook
) -> list[Path]:
    """SACToR's per-item layout under ``stage_dir`` (e.g. ``translated_code_unidiomatic``): every type the
    deterministic translation wrote, every global with a Rust definition, every verified function (a
    recursion group's file holds the whole group, written under each member's name), and the globals and
    types the model translated (verified in ``book``). Returns the files."""
    written: list[Path] = []

    def put(kind: str, name: str, code: str) -> None:
        path = stage_dir / FOLDERS[kind] / f"{name}.rs"
        atomic_write_text(path, code.rstrip() + "\n")
        written.append(path)

    for item in program.items:
        record = book.records.get(item.key)
        # What the model translated (functions, and the globals and types c_types left) is in the book.
        verified = record.rust if record is not None and record.status == "verified" and record.rust else None
        if item.kind in ("struct", "union", "enum", "typedef") and item.key not in translation.unsupported:
            # A typedef that only repeats its record's name has no code of its own: the record's file serves.
            if any(t.key == item.key and t.code for t in translation.types):
                put(item.kind, item.name, translation.code_for(item.key))
        elif item.kind == "global" and item.key in translation.global_definitions:
            put("global", item.name, translation.global_definitions[item.key])
        elif verified is not None:
            put(item.kind, item.name, verified)
    return written
