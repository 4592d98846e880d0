"""The ledger: what a rerun may trust after a crash, and the one-run-per-directory lock."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipeline.errors import RunLocked
from pipeline.ledger import JOURNAL, SNAPSHOT, Ledger, run_lock


def record(task_id: str, status: str = "verified") -> dict[str, object]:
    return {"task_id": task_id, "status": status}


def test_records_survive_reopening_and_are_compacted(tmp_path: Path) -> None:
    """Records appended in one run are there in the next; the journal is folded into the snapshot."""
    with Ledger.open(tmp_path) as ledger:
        ledger.record("k1", record("a"))
        ledger.record("k2", record("b", "failed"))
        ledger.record("k3", record("a", "failed"))
    assert not (tmp_path / JOURNAL).exists()
    lines = (tmp_path / SNAPSHOT).read_text().splitlines()
    assert [json.loads(line)["task_id"] for line in lines] == ["b", "a"]
    with Ledger.open(tmp_path) as ledger:
        entry = ledger.get("a")
        assert entry is not None and (entry.key, entry.status) == ("k3", "failed")
        assert len(ledger) == 2


def test_a_torn_last_line_is_not_trusted(tmp_path: Path) -> None:
    """A run killed mid-append leaves a partial line; the rerun ignores it and redoes that task."""
    good = json.dumps({**record("done"), "key": "k"}) + "\n"
    torn = json.dumps({**record("half"), "key": "k"})[:-7]
    (tmp_path / JOURNAL).write_text(good + torn)
    with Ledger.open(tmp_path) as ledger:
        assert ledger.get("done") is not None
        assert ledger.get("half") is None


def test_second_lock_names_the_holder(tmp_path: Path) -> None:
    """While a run holds the directory, another is refused with the holder's pid."""
    with run_lock(tmp_path), pytest.raises(RunLocked, match=f"pid {os.getpid()} on "), run_lock(tmp_path):
        pass
    with run_lock(tmp_path):
        pass


def test_a_torn_last_line_never_swallows_the_next_record(tmp_path: Path) -> None:
    """The next run's first record, appended after a torn line, is read back whole (the torn part is cut)."""
    torn = json.dumps({**record("half"), "key": "k"})[:-7]
    (tmp_path / JOURNAL).write_text(torn)
    with Ledger.open(tmp_path) as ledger:
        ledger.record("k2", record("next"))
    with Ledger.open(tmp_path) as ledger:
        entry = ledger.get("next")
        assert entry is not None and entry.key == "k2"
        assert ledger.get("half") is None


def test_compaction_keeps_only_the_ids_of_a_complete_discovery(tmp_path: Path) -> None:
    """Closing with the corpus's ids drops tasks no longer in it; closing without them keeps everything."""
    with Ledger.open(tmp_path) as ledger:
        ledger.record("k", record("a"))
        ledger.record("k", record("gone"))
    ledger = Ledger.load(tmp_path)
    ledger.close()
    assert [r["task_id"] for r in Ledger(tmp_path).latest()] == ["a", "gone"]
    ledger = Ledger.load(tmp_path)
    ledger.close({"a"})
    assert [r["task_id"] for r in Ledger(tmp_path).latest()] == ["a"]


def test_non_utf8_names_are_hashed_and_recorded(tmp_path: Path) -> None:
    """A file name that is not UTF-8 neither breaks the input hash nor the journal."""
    from pipeline.task import hash_files

    name = tmp_path / os.fsdecode(b"caf\xe9.c")
    name.write_text("int main(void) { return 0; }\n")
    assert len(hash_files([name])) == 32
    with Ledger.open(tmp_path) as ledger:
        ledger.record("k", {**record("t"), "c_file": str(name)})
    assert Ledger(tmp_path).get("t") is None  # the index is filled by load
    with Ledger.open(tmp_path) as ledger:
        assert ledger.get("t") is not None
