"""Hostile corpora and output directories through the real CLI: what a user finds on disk after each run.

Stale results of earlier runs, samples paths from the dataset authors' machines, result folders that cannot be
written, a full disk, file names that are not UTF-8 or look like the tool's own files, torn ledger lines, an
interrupted rerun, the output directory inside the corpus, FIFOs and devices, the umask, and a server that is
down when nothing needs it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Cli
from tests.test_batch_e2e import (
    _finished,
    _signal_when,
    _start_run,
    directive_c,
    finished_run,
    flat_corpus,
    requested_ids,
    run,
    sactor_corpus,
    samples_json,
    summary,
)

STAGE_FILES = {
    "unidiomatic": ("translated_code_unidiomatic/combined.rs", "translated_code_unidiomatic/clippy_stat.json",
                    "unidiomatic_failure_info.json", "llm_stat_unidiomatic.json"),
    "idiomatic": ("translated_code_idiomatic/combined.rs", "translated_code_idiomatic/clippy_stat.json",
                  "idiomatic_failure_info.json", "llm_stat_idiomatic.json"),
}


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


def _result(out: Path, task: str) -> dict[str, Any]:
    return json.loads((out / task / "result.json").read_text())  # type: ignore[no-any-return]


# -- results describe the latest run -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "gone", "kept"),
    [
        pytest.param(
            "unidiomatic_fails",
            ("translated_code_unidiomatic/combined.rs", "translated_code_unidiomatic/clippy_stat.json",
             *STAGE_FILES["idiomatic"]),
            ("unidiomatic_failure_info.json", "llm_stat_unidiomatic.json"),
            id="stage-failed-and-next-not-run",
        ),
        pytest.param("input_invalid",
                     (*STAGE_FILES["unidiomatic"], *STAGE_FILES["idiomatic"], "attempts/unidiomatic-1.rs"), (),
                     id="input-became-invalid"),
    ],
)
def test_rerun_removes_results_of_stages_it_did_not_verify(
    cli: Cli, simulator_factory: Any, tmp_path: Path, change: str, gone: tuple[str, ...], kept: tuple[str, ...]
) -> None:
    """After a rerun in which a stage no longer verifies, no combined.rs, clippy or failure file of the old run
    is left beside a result.json that says the stage failed or did not run."""
    corpus = tmp_path / "corpus"
    flat_corpus(corpus, 1)
    (corpus / "prog000.c").write_text(directive_c("prog000", "out prog000", unidiomatic=("compile_error", "pass")))
    _sim, url = simulator_factory()
    out = tmp_path / "out"
    assert run(cli, corpus, out, url).returncode == 0
    for name in (*STAGE_FILES["unidiomatic"], *STAGE_FILES["idiomatic"], "attempts/unidiomatic-1.rs"):
        assert (out / "prog000" / name).is_file(), name
    if change == "unidiomatic_fails":
        (corpus / "prog000.c").write_text(directive_c("prog000-v2", "out prog000", unidiomatic=("compile_error",)))
    else:
        (corpus / "prog000.json").write_text('[{"command": "sactor run-tests --type bin"')
    again = run(cli, corpus, out, url, "--max-attempts", "1")
    assert again.returncode == 1, again.output
    result = _result(out, "prog000")
    assert result["status"] == "failed"
    assert result["stages"]["idiomatic"]["status"] == "not_run"
    left = [name for name in gone if (out / "prog000" / name).exists()]
    assert left == [], f"files of the earlier run left beside result.json: {left}"
    for name in kept:
        assert (out / "prog000" / name).is_file(), name
    if change == "unidiomatic_fails":
        info = json.loads((out / "prog000" / "unidiomatic_failure_info.json").read_text())
        assert [a["kind"] for a in info["attempts"]] == ["compile_error"]


# -- samples paths from the dataset authors' machines ------------------------------------------------------------


def test_absolute_samples_paths_fall_back_to_the_file_beside_the_test_task(
    cli: Cli, simulator_factory: Any, tmp_path: Path
) -> None:
    """A SACToR test task naming /home/<author>/.../NAME_samples.json runs with the NAME_samples.json beside it,
    and the run says so once."""
    corpus = tmp_path / "corpus"
    names = ("alpha", "beta")

    def authors_paths(name: str) -> str:
        gone = f"/home/sactor-author/sactor-datasets/codenet/{name}/{name}_samples.json"
        return json.dumps([{"command": f"sactor run-tests --type bin {gone} %t {i} --feed-as-stdin"}
                           for i in range(2)])

    sactor_corpus(corpus, names, tests=authors_paths)
    _sim, url = simulator_factory()
    out = tmp_path / "out"
    result = run(cli, corpus, out, url)
    assert result.returncode == 0, result.output
    assert {t["task_id"]: t["status"] for t in summary(out)["tasks"]} == dict.fromkeys(names, "verified")
    assert result.stderr.count("absolute paths that do not exist") == 1, result.stderr
    assert "beside each test task" in result.stderr


# -- results that cannot be written; a full disk -----------------------------------------------------------------


def test_a_task_whose_results_cannot_be_written_fails_alone(
    cli: Cli, simulator_factory: Any, tmp_path: Path
) -> None:
    """A file where a task's result folder should be: that task fails with the reason, the others, the ledger
    and batch_summary.json are written; once the file is moved away, a rerun redoes that task alone."""
    corpus = tmp_path / "corpus"
    names = flat_corpus(corpus, 3)
    sim, url = simulator_factory()
    out = tmp_path / "out"
    out.mkdir()
    (out / "prog001").write_text("a user's file, not a folder\n")
    result = run(cli, corpus, out, url)
    assert result.returncode == 1, result.output
    assert "Traceback" not in result.stderr
    tasks = {t["task_id"]: t for t in summary(out)["tasks"]}
    assert {k: t["status"] for k, t in tasks.items()} == {"prog000": "verified", "prog001": "failed",
                                                         "prog002": "verified"}
    reason = tasks["prog001"]["reason"]
    assert "cannot be written" in reason and str(out / "prog001") in reason and "a file" in reason
    assert (out / "prog001").read_text() == "a user's file, not a folder\n"
    for name in ("prog000", "prog002"):
        assert (out / name / "translated_code_idiomatic" / "combined.rs").is_file()
    assert _finished(out) == set(names)
    (out / "prog001").unlink()
    sim.reset_log()
    again = run(cli, corpus, out, url)
    assert again.returncode == 0, again.output
    assert requested_ids(sim) == {"prog001"}


def test_a_task_folder_that_refuses_writes_fails_that_task_alone(
    cli: Cli, simulator_factory: Any, tmp_path: Path
) -> None:
    """A result folder the system will not let us change (here immutable, as root; permission denied for a
    user): the redone task fails naming the error, the other redone task and the summary are written."""
    corpus, out, _sim, url = finished_run(cli, simulator_factory, tmp_path, 2)
    locked = out / "prog001"
    if subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        for name in ("prog000", "prog001"):
            (corpus / f"{name}.c").write_text(directive_c(f"{name}-v2", f"out {name}"))
        result = run(cli, corpus, out, url)
    finally:
        subprocess.run(["chattr", "-i", str(locked)], check=True)
    assert result.returncode == 1, result.output
    assert "Traceback" not in result.stderr
    tasks = {t["task_id"]: t for t in summary(out)["tasks"]}
    assert tasks["prog000"]["status"] == "verified"
    assert tasks["prog001"]["status"] == "failed"
    assert "cannot be written" in tasks["prog001"]["reason"]
    assert "not permitted" in tasks["prog001"]["reason"] or "denied" in tasks["prog001"]["reason"]


def test_an_unwritable_summary_is_reported_not_a_crash(cli: Cli, simulator_factory: Any, tmp_path: Path) -> None:
    """A folder where batch_summary.json goes: the tasks and the ledger are written, the run says what to move."""
    corpus = tmp_path / "corpus"
    flat_corpus(corpus, 1)
    _sim, url = simulator_factory()
    out = tmp_path / "out"
    (out / "batch_summary.json").mkdir(parents=True)
    result = run(cli, corpus, out, url)
    assert result.returncode == 1, result.output
    assert "Traceback" not in result.stderr
    assert f"cannot write {out / 'batch_summary.json'}" in result.stderr
    assert _result(out, "prog000")["status"] == "verified" and _finished(out) == {"prog000"}


def _can_mount_tmpfs(tmp_path: Path) -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = tmp_path / "probe"
    probe.mkdir()
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "mount", "-t", "tmpfs", "-o", "size=64k",
                           "tmpfs", str(probe)], capture_output=True)
    return done.returncode == 0


def test_a_full_disk_stops_the_run_and_a_rerun_resumes(cli: Cli, simulator_factory: Any, tmp_path: Path) -> None:
    """ENOSPC is fatal: the run stops with a message naming the file, finished tasks stay recorded, and a rerun
    with space redoes only the rest."""
    if not _can_mount_tmpfs(tmp_path):
        pytest.skip("needs root and unshare to mount a small tmpfs")
    corpus = tmp_path / "corpus"
    names = flat_corpus(corpus, 12)
    sim, url = simulator_factory()
    small, kept = tmp_path / "small", tmp_path / "kept"
    small.mkdir()
    argv = [sys.executable, str(ROOT / "batch_translate_generic.py"), "--c-files", str(corpus), "--json-files",
            str(corpus), "--output", str(small), "--base-url", url, "--model", "sim-model", "--cache-dir",
            str(cli.cache_dir), "--workers", "2", "--jobs", "1"]
    script = ('mount -t tmpfs -o size=160k tmpfs "$1" && shift && "$@"; code=$?; '
              'cp -a "$OUT/." "$KEEP"; exit $code')
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_")} | {"OUT": str(small),
                                                                                   "KEEP": str(kept)}
    kept.mkdir()
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", str(small),
                           *argv], cwd=cli.cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "run stopped: no space left" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    done = _finished(kept)
    assert len(done) < len(names)
    sim.reset_log()
    rerun = run(cli, corpus, kept, url)
    assert rerun.returncode == 0, rerun.output
    assert requested_ids(sim) == set(names) - done
    assert {t["task_id"] for t in summary(kept)["tasks"]} == set(names)


# -- names ---------------------------------------------------------------------------------------------------------


def test_non_utf8_names_and_names_of_the_tools_own_files_work(
    cli: Cli, simulator_factory: Any, tmp_path: Path
) -> None:
    """C files named with bytes that are not UTF-8, or like ledger.jsonl, batch_summary.json and the journal,
    are translated like any other; the output directory's own files stay intact and a rerun trusts them."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    stems = [b"caf\xe9", b"ledger.jsonl", b"ledger.journal.jsonl", b"batch_summary.json", b"plain"]
    for number, stem in enumerate(stems):
        base = os.fsencode(corpus) + b"/" + stem
        expected = f"out {number}"
        with open(base + b".c", "w") as fh:
            fh.write(directive_c(f"name{number}", expected))
        with open(base + b"_samples.json", "w") as fh:
            fh.write(samples_json(expected))
        with open(base + b".json", "w") as fh:
            fh.write(json.dumps([{"command": f"sactor run-tests --type bin ./{os.fsdecode(stem)}_samples.json %t "
                                             f"{i} --feed-as-stdin"} for i in range(2)]))
    sim, url = simulator_factory()
    out = tmp_path / "out"
    result = run(cli, corpus, out, url)
    assert result.returncode == 0, result.output
    tasks = summary(out)["tasks"]
    assert len(tasks) == len(stems) and {t["status"] for t in tasks} == {"verified"}
    ids = {t["task_id"] for t in tasks}
    assert "plain" in ids
    assert not ids & {"ledger.jsonl", "ledger.journal.jsonl", "batch_summary.json", ".run.lock"}
    assert any(t["c_file"].endswith("caf\\xe9.c") for t in tasks)
    assert (out / "ledger.jsonl").is_file() and (out / "batch_summary.json").is_file()
    for ident in ids:
        assert (out / ident / "translated_code_idiomatic" / "combined.rs").is_file()
    sim.reset_log()
    again = run(cli, corpus, out, url)
    assert again.returncode == 0, again.output
    assert sim.chat_requests == []
    assert summary(out)["skipped_unchanged"] == len(stems)


# -- the ledger and the summary ------------------------------------------------------------------------------------


def test_a_torn_last_journal_line_does_not_swallow_the_next_record(
    cli: Cli, simulator_factory: Any, tmp_path: Path
) -> None:
    """After a crash mid-append, the next run's records are kept: a third run finds everything done."""
    corpus, out, sim, url = finished_run(cli, simulator_factory, tmp_path, 2)
    snapshot = (out / "ledger.jsonl").read_text().splitlines()
    (out / "ledger.journal.jsonl").write_text(snapshot[0][: len(snapshot[0]) // 2])  # killed mid-append
    (corpus / "prog001.c").write_text(directive_c("prog001-v2", "out prog001"))
    sim.reset_log()
    assert run(cli, corpus, out, url).returncode == 0
    assert requested_ids(sim) == {"prog001-v2"}
    sim.reset_log()
    third = run(cli, corpus, out, url)
    assert third.returncode == 0, third.output
    assert sim.chat_requests == [], "the second run's record was lost"
    assert summary(out)["skipped_unchanged"] == 2


def test_an_interrupted_rerun_keeps_every_task_in_the_summary(
    cli: Cli, simulator_factory: Any, tmp_path: Path
) -> None:
    """A --force rerun stopped early rewrites batch_summary.json with every task the ledger knows, not only
    those it got to."""
    from pipeline.simulator import LoadModel

    corpus = tmp_path / "corpus"
    names = flat_corpus(corpus, 24)
    _sim, url = simulator_factory()
    out = tmp_path / "out"
    assert run(cli, corpus, out, url, "--no-idiomatic", timeout=300).returncode == 0
    assert len(summary(out)["tasks"]) == len(names)
    _slow, slow_url = simulator_factory(load=LoadModel(capacity=1, latency=0.3, decode_per_token=0.0))
    proc = _start_run(cli, corpus, out, slow_url, "--no-idiomatic", "--force", "--workers", "1", "--jobs", "1")
    stderr = _signal_when(proc, lambda: (out / "ledger.journal.jsonl").exists()
                          and (out / "ledger.journal.jsonl").read_text().count("\n") >= 1, signal.SIGINT)
    assert proc.returncode == 130, stderr
    s = summary(out)
    assert s["run"]["interrupted"] == "SIGINT"
    assert sorted(t["task_id"] for t in s["tasks"]) == names
    assert s["totals"]["tasks"] == len(names)


def test_tasks_removed_from_the_corpus_leave_the_summary(cli: Cli, simulator_factory: Any, tmp_path: Path) -> None:
    """A rerun that saw the whole corpus lists only its tasks (the ledger forgets the removed one)."""
    corpus, out, _sim, _url = finished_run(cli, simulator_factory, tmp_path, 3)
    for suffix in (".c", ".json", "_samples.json"):
        (corpus / f"prog002{suffix}").unlink()
    again = run(cli, corpus, out, _closed_port_url())
    assert again.returncode == 0, again.output
    assert sorted(t["task_id"] for t in summary(out)["tasks"]) == ["prog000", "prog001"]
    assert _finished(out) == {"prog000", "prog001"}


# -- discovery -----------------------------------------------------------------------------------------------------


def test_an_output_directory_inside_the_corpus_is_not_an_orphan(
    cli: Cli, simulator_factory: Any, tmp_path: Path
) -> None:
    """--output inside --c-files: the run and its rerun see only the corpus (exit 0, no orphan); --output equal to
    the corpus folder is refused."""
    corpus = tmp_path / "corpus"
    sactor_corpus(corpus, ("alpha", "beta"))
    _sim, url = simulator_factory()
    out = corpus / "results"
    for _ in range(2):
        result = run(cli, corpus, out, url)
        assert result.returncode == 0, result.output
        assert summary(out)["orphans"] == []
        assert sorted(t["task_id"] for t in summary(out)["tasks"]) == ["alpha", "beta"]
    same = run(cli, corpus, corpus, url)
    assert same.returncode == 2, same.output
    assert "--output" in same.stderr and "--c-files" in same.stderr
    assert not (corpus / "batch_summary.json").exists()


def test_fifos_and_devices_in_the_corpus_are_skipped_with_a_reason(
    cli: Cli, simulator_factory: Any, tmp_path: Path
) -> None:
    """A FIFO named like a C file or a test task, and a link to a device, are reported and never opened (a FIFO
    would hang the run); the real tasks run."""
    corpus = tmp_path / "corpus"
    flat_corpus(corpus, 2)
    os.mkfifo(corpus / "pipe.c")
    (corpus / "prog001.json").unlink()
    os.mkfifo(corpus / "prog001.json")
    os.symlink("/dev/zero", corpus / "zero.c")
    os.mkfifo(corpus / "lone.json")
    _sim, url = simulator_factory()
    out = tmp_path / "out"
    result = run(cli, corpus, out, url, timeout=90)
    assert result.returncode == 1, result.output
    s = summary(out)
    assert {t["task_id"]: t["status"] for t in s["tasks"]} == {"prog000": "verified"}
    orphans = {Path(o["path"]).name: o["reason"] for o in s["orphans"]}
    assert set(orphans) == {"pipe.c", "prog001.json", "zero.c", "lone.json"}
    for name in ("pipe.c", "prog001.json", "lone.json"):
        assert "a FIFO" in orphans[name] and "without opening" in orphans[name], orphans[name]
    assert "a character device" in orphans["zero.c"]
    assert stat.S_ISFIFO(os.stat(corpus / "pipe.c").st_mode)


# -- what a user sees of the files and the terminal ----------------------------------------------------------------


def test_result_files_honour_the_umask(cli: Cli, simulator_factory: Any, tmp_path: Path) -> None:
    """Under umask 022, results, the ledger and the summary are readable by others (0644), like any tool's."""
    corpus = tmp_path / "corpus"
    flat_corpus(corpus, 1)
    _sim, url = simulator_factory()
    out = tmp_path / "out"
    previous = os.umask(0o022)
    try:
        assert run(cli, corpus, out, url).returncode == 0
    finally:
        os.umask(previous)
    for rel in ("prog000/result.json", "prog000/translated_code_idiomatic/combined.rs",
                "prog000/transcript.jsonl", "batch_summary.json", "ledger.jsonl"):
        assert stat.S_IMODE(os.stat(out / rel).st_mode) == 0o644, rel


def test_no_progress_line_after_a_failed_preflight(cli: Cli, tmp_path: Path) -> None:
    """With the server down and work to do: exit 3 with the reason, and no '0/0+ tasks' progress line."""
    corpus = tmp_path / "corpus"
    flat_corpus(corpus, 1)
    result = run(cli, corpus, tmp_path / "out", _closed_port_url(), timeout=60)
    assert result.returncode == 3, result.output
    assert "connect" in result.stderr.lower()
    assert "0/0" not in result.stderr and "finished:" not in result.stderr, result.stderr


def test_rerun_of_a_finished_corpus_needs_no_server(cli: Cli, simulator_factory: Any, tmp_path: Path) -> None:
    """Every task finished and unchanged: the rerun exits 0 with the server down and rewrites the same summary."""
    corpus, out, _sim, _url = finished_run(cli, simulator_factory, tmp_path, 3)
    names = [f"prog{i:03d}" for i in range(3)]
    before = summary(out)["tasks"]
    again = run(cli, corpus, out, _closed_port_url(), timeout=60)
    assert again.returncode == 0, again.output
    s = summary(out)
    assert s["tasks"] == before and s["skipped_unchanged"] == len(names)
    assert "connect" not in again.stderr.lower()
