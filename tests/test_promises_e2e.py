"""Three promises users judge a batch run on, through the real CLI and the simulator: finished work is never lost
(what a killed run leaves behind), reruns redo only what changed, a malformed input costs one task at most with a
message naming the file and the fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import Cli
from tests.test_batch_e2e import directive_c, finished_run, requested_ids, run


def _dead_pid() -> int:
    """The pid of a process that has ended: what a killed run's temporary names carry."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                           check=True)
    return int(child.stdout)


def test_temporary_files_of_a_killed_run_are_removed_by_the_next_run(
    cli: Cli, simulator_factory: Any, tmp_path: Path
) -> None:
    """A run killed while it wrote a task's results, the ledger snapshot or the summary leaves hidden temporary
    files (``.NAME.PID-N.tmp``) that no one trusts; the next run removes them from the output directory and from
    each folder it writes, and leaves a user's own files alone."""
    corpus, out, sim, url = finished_run(cli, simulator_factory, tmp_path, 2)
    pid = _dead_pid()
    task = out / "prog001"
    litter = [out / f".batch_summary.json.{pid}-9.tmp", out / f".ledger.jsonl.{pid}-8.tmp",
              task / f".result.json.{pid}-7.tmp", task / f".transcript.jsonl.{pid}-6.tmp",
              task / "translated_code_unidiomatic" / f".combined.rs.{pid}-3.tmp",
              task / "attempts" / f".unidiomatic-1.rs.{pid}-4.tmp"]
    for path in litter:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("half of a file\n")
    users = [out / "notes.txt", task / ".my-draft.tmp", task / "notes.tmp"]
    for path in users:
        path.write_text("mine\n")
    (corpus / "prog001.c").write_text(directive_c("prog001-v2", "out prog001"))
    sim.reset_log()
    again = run(cli, corpus, out, url)
    assert again.returncode == 0, again.output
    assert requested_ids(sim) == {"prog001-v2"}
    assert [str(path.relative_to(out)) for path in litter if path.exists()] == []
    assert all(path.read_text() == "mine\n" for path in users)
