"""Three promises users judge a batch run on, through the real CLI and the simulator: finished work is never lost
(what a killed run leaves behind), reruns redo only what changed, a malformed input costs one task at most with a
message naming the file and the fix."""

from __future__ import annotations

import json
import re
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


def test_a_test_file_larger_than_the_limit_fails_its_task_saying_so(
    cli: Cli, simulator_factory: Any, tmp_path: Path
) -> None:
    """A test task or samples list past the 64 MiB input limit fails its task alone with a reason that names the
    file and the limit (not "invalid JSON" at the point where reading stopped), a C file that large says so (not
    the size at which reading stopped); the other task verifies."""
    from tests.test_batch_e2e import flat_corpus, summary

    corpus = tmp_path / "corpus"
    flat_corpus(corpus, 3)
    padding = "x" * (65 << 20)
    (corpus / "prog001.json").write_text(
        json.dumps([{"command": "sactor run-tests --type bin ./prog001_samples.json %t 0 --feed-as-stdin",
                     "note": padding}]))
    (corpus / "prog002_samples.json").write_text(json.dumps([{"input": "", "output": "out prog002",
                                                             "note": padding}]))
    (corpus / "big.c").write_text(f"/* {padding} */\nint main(void) {{ return 0; }}\n")
    (corpus / "big.json").write_text((corpus / "prog000.json").read_text())
    _sim, url = simulator_factory()
    out = tmp_path / "out"
    result = run(cli, corpus, out, url)
    assert result.returncode == 1, result.output
    tasks = {t["task_id"]: t for t in summary(out)["tasks"]}
    assert tasks["prog000"]["status"] == "verified"
    for task, name in (("prog001", "prog001.json"), ("prog002", "prog002_samples.json")):
        reason = tasks[task]["reason"]
        assert tasks[task]["status"] == "failed"
        assert reason.startswith(f"{corpus / name}: larger than the 64 MiB limit of a test file"), reason
        assert "invalid JSON" not in reason
    assert tasks["big"]["reason"] == (f"{corpus / 'big.c'}: more than {64 << 20} bytes is larger than the "
                                      "524288-byte limit"), tasks["big"]["reason"]


def test_files_that_are_not_utf8_are_skipped_with_the_way_to_convert_them(
    cli: Cli, simulator_factory: Any, tmp_path: Path
) -> None:
    """A C file with a Latin-1 comment and a test task saved as UTF-16 are each reported with the file, the byte
    and how to convert it; the other task verifies."""
    from tests.test_batch_e2e import flat_corpus, summary

    corpus = tmp_path / "corpus"
    flat_corpus(corpus, 3)
    (corpus / "prog001.c").write_bytes((corpus / "prog001.c").read_bytes() + "/* caf\xe9 */\n".encode("latin-1"))
    (corpus / "prog002.json").write_bytes((corpus / "prog002.json").read_text().encode("utf-16"))
    _sim, url = simulator_factory()
    out = tmp_path / "out"
    result = run(cli, corpus, out, url)
    assert result.returncode == 1, result.output
    s = summary(out)
    assert {t["task_id"]: t["status"] for t in s["tasks"]} == {"prog000": "verified"}
    orphans = {Path(o["path"]).name: o["reason"] for o in s["orphans"]}
    assert set(orphans) == {"prog001.c", "prog002.json"}
    for name, reason in orphans.items():
        assert "not valid UTF-8" in reason and "convert it to UTF-8" in reason and "iconv" in reason, reason
        assert f"{corpus / name}: {reason}" in result.stderr or f"skipped {corpus / name}: {reason}" in result.stderr


def test_higher_limits_redo_the_failed_tasks_and_keep_the_verified_ones(
    cli: Cli, simulator_factory: Any, tmp_path: Path
) -> None:
    """Raising --max-attempts gives the tasks that failed more attempts and asks nothing for those that verified
    within the old limit (they would verify the same way); lowering it below a task's attempts redoes that task.
    Likewise a longer --test-timeout keeps verified tasks (their tests passed in less) and a shorter one redoes
    them."""
    from tests.test_batch_e2e import flat_corpus, summary

    corpus = tmp_path / "corpus"
    flat_corpus(corpus, 3)
    (corpus / "prog001.c").write_text(directive_c("prog001", "out prog001", unidiomatic=("compile_error",) * 3
                                                  + ("pass",)))
    (corpus / "prog002.c").write_text(directive_c("prog002", "out prog002", unidiomatic=("compile_error", "pass")))
    sim, url = simulator_factory()
    out = tmp_path / "out"
    assert run(cli, corpus, out, url, "--max-attempts", "2").returncode == 1
    sim.reset_log()
    more = run(cli, corpus, out, url, "--max-attempts", "4")
    assert more.returncode == 0, more.output
    assert requested_ids(sim) == {"prog001"}
    assert summary(out)["skipped_unchanged"] == 2
    assert {t["task_id"]: t["status"] for t in summary(out)["tasks"]} == dict.fromkeys(
        ("prog000", "prog001", "prog002"), "verified")
    sim.reset_log()
    assert run(cli, corpus, out, url, "--max-attempts", "4").returncode == 0
    assert sim.chat_requests == []
    longer = run(cli, corpus, out, url, "--max-attempts", "5", "--test-timeout", "90")
    assert longer.returncode == 0, longer.output
    assert sim.chat_requests == []
    assert summary(out)["skipped_unchanged"] == 3
    shorter = run(cli, corpus, out, url, "--max-attempts", "5", "--test-timeout", "30")
    assert shorter.returncode == 0, shorter.output
    assert requested_ids(sim) == {"prog000", "prog001", "prog002"}
    sim.reset_log()
    fewer = run(cli, corpus, out, url, "--max-attempts", "1", "--test-timeout", "30")
    assert fewer.returncode == 1, fewer.output
    assert requested_ids(sim) == {"prog001", "prog002"}


MALFORMED: dict[str, tuple[str, str, str]] = {
    # task: (test JSON, what its reason names, what it says)
    "notjson": ('{"command": ', "notjson.json", "invalid JSON at line 1"),
    "notlist": ('{"command": "%t"}', "notlist.json", "must be a JSON list, not an object"),
    "nolist": ("[]", "nolist.json", "contains no tests"),
    "noentry": ("[null]", "noentry.json", 'test 0 is not an object with a "command"'),
    "nosamples": ('[{"command": "sactor run-tests --type bin ./gone_samples.json %t 0 --feed-as-stdin"}]',
                  "gone_samples.json", "does not exist"),
    "badsamples": ('[{"command": "sactor run-tests --type bin ./badsamples_samples.json %t 0 --feed-as-stdin"}]',
                   "badsamples_samples.json", "invalid JSON"),
    "outofrange": ('[{"command": "sactor run-tests --type bin ./outofrange_samples.json %t 7 --feed-as-stdin"}]',
                   "outofrange_samples.json", "sample 7 is out of range"),
    "notarget": ('[{"command": "echo hello"}]', "", "no %t in 'echo hello'); put %t where the program goes"),
    # short enough for discovery to parse whole when it classifies the file, too deep for Python's parser
    "deep": ("[" * 2000 + "]" * 2000, "deep.json", "the JSON is nested too deeply"),
    "longnumber": ('[{"command": "%t", "n": ' + "7" * 5000 + "}]", "longnumber.json",
                   "invalid JSON: a number is too long"),
    "nul": ('[{"command": "%t \\u0000"}]', "nul.json", "test 0: the command contains a NUL character"),
    "nularg": ('[{"command": "sactor run-tests --type bin ./nularg_samples.json %t 0 --feed-as-args"}]',
               "nularg_samples.json", "sample 0: the input contains a NUL character, which no argument can hold"),
    "surrogate": ('[{"command": "%t \\ud800"}]', "surrogate.json",
                  "test 0: the command holds '\\ud800', which is not a character"),
    "badinput": ('[{"command": "sactor run-tests --type bin ./badinput_samples.json %t 0 --feed-as-stdin"}]',
                 "badinput_samples.json", "sample 0: the input holds '\\udc00', which is not a character"),
    "longcommand": ('[{"command": "%t ' + "a" * 200_000 + '"}]', "longcommand.json",
                    "test 0: the command is 200003 bytes long, more than a command line holds"),
    "longargs": ('[{"command": "sactor run-tests --type bin ./longargs_samples.json %t 0 --feed-as-args"}]',
                 "longargs_samples.json", "sample 0: the input is 300000 bytes long, more than the arguments of a "
                 "command line hold; feed it on stdin (--feed-as-stdin)"),
}


def test_each_malformed_input_fails_its_own_task_with_a_reason_and_asks_nothing(
    cli: Cli, simulator_factory: Any, tmp_path: Path
) -> None:
    """Test files that are not JSON, nested too deeply, not a list, empty, name no samples file or a broken one, a
    sample out of range, a command without %t, an empty, a binary and an oversized C file: each fails its task
    alone, with a reason naming the file and what is wrong; no request is sent for them, and the good tasks (two of
    them named alike but for the case) verify."""
    from tests.test_batch_e2e import flat_corpus, summary

    corpus = tmp_path / "corpus"
    flat_corpus(corpus, 1)
    good_c = (corpus / "prog000.c").read_text()
    for name, (tests, _file, _says) in MALFORMED.items():
        (corpus / f"{name}.c").write_text(good_c)
        (corpus / f"{name}.json").write_text(tests)
    (corpus / "badsamples_samples.json").write_text("[{")
    (corpus / "outofrange_samples.json").write_text('[{"input": "", "output": "x"}]')
    (corpus / "nularg_samples.json").write_text('[{"input": "a\\u0000b", "output": "x"}]')
    (corpus / "badinput_samples.json").write_text('[{"input": "a\\udc00b", "output": "x"}]')
    (corpus / "longargs_samples.json").write_text(json.dumps([{"input": "a " * 150_000, "output": "x"}]))
    for name, source in (("empty", " \n"), ("bom", "\ufeff\n"), ("huge", "int x;\n" * 100_000),
                         ("binary", "int main(void) { return 0; }\n\0\x01\x02")):
        (corpus / f"{name}.c").write_text(source)
        (corpus / f"{name}.json").write_text((corpus / "prog000.json").read_text())
    for name in ("Twin", "twin"):  # names differing only in case: two tasks, two folders
        for suffix in (".c", ".json", "_samples.json"):
            (corpus / f"{name}{suffix}").write_text((corpus / f"prog000{suffix}").read_text().replace("prog000", name))
    sim, url = simulator_factory()
    out = tmp_path / "out"
    result = run(cli, corpus, out, url)
    assert result.returncode == 1, result.output
    assert "Traceback" not in result.stderr
    assert requested_ids(sim) == {"prog000", "Twin", "twin"}
    tasks = {t["task_id"]: t for t in summary(out)["tasks"]}
    for name in ("prog000", "Twin", "twin"):
        assert tasks.pop(name)["status"] == "verified"
        assert f"out {name}" in (out / name / "translated_code_idiomatic" / "combined.rs").read_text()
    assert {task: t["status"] for task, t in tasks.items()} == dict.fromkeys([*MALFORMED, "empty", "bom", "huge",
                                                                             "binary"], "failed")
    for name, (_tests, file, says) in MALFORMED.items():
        assert file in tasks[name]["reason"] and says in tasks[name]["reason"], tasks[name]["reason"]
    for name in ("empty", "bom"):
        assert tasks[name]["reason"] == f"{corpus / name}.c: the C file is empty"
    assert tasks["binary"]["reason"] == f"{corpus / 'binary.c'}: a NUL byte at offset 29: not C source text"
    assert tasks["huge"]["reason"].startswith(f"{corpus / 'huge.c'}: 700000 bytes is larger than the")


def test_switching_the_feed_redoes_only_the_tasks_whose_tests_are_sample_lists(
    cli: Cli, simulator_factory: Any, tmp_path: Path
) -> None:
    """--feed-as-args says how a samples list's inputs are given; a SACToR test task names its feed in each command,
    so switching the flag redoes the tasks tested by samples lists and keeps the others."""
    from tests.test_batch_e2e import flat_corpus, samples_json

    corpus = tmp_path / "corpus"
    flat_corpus(corpus, 3)
    (corpus / "prog002_samples.json").unlink()
    (corpus / "prog002.json").write_text(samples_json("out prog002"))  # a samples list as the task's tests
    sim, url = simulator_factory()
    out = tmp_path / "out"
    assert run(cli, corpus, out, url).returncode == 0
    sim.reset_log()
    switched = run(cli, corpus, out, url, "--feed-as-args")
    assert switched.returncode == 0, switched.output
    assert requested_ids(sim) == {"prog002"}
    sim.reset_log()
    assert run(cli, corpus, out, url, "--feed-as-args").returncode == 0
    assert sim.chat_requests == []
    assert run(cli, corpus, out, url).returncode == 0
    assert requested_ids(sim) == {"prog002"}


def test_a_rerun_redoes_the_tasks_whose_files_changed_and_ignores_settings_that_shape_no_result(
    cli: Cli, simulator_factory: Any, tmp_path: Path
) -> None:
    """An edited samples file or test task redoes its task alone; request, retry, streaming, process and sandbox
    settings redo nothing; the system message (part of every prompt) redoes every task."""
    from tests.test_batch_e2e import summary

    corpus, out, sim, url = finished_run(cli, simulator_factory, tmp_path, 4)
    samples = json.loads((corpus / "prog001_samples.json").read_text())
    (corpus / "prog001_samples.json").write_text(json.dumps([*samples, {"input": "9", "output": "out prog001"}]))
    (corpus / "prog002.json").write_text(json.dumps(json.loads((corpus / "prog002.json").read_text())[:1]))
    sim.reset_log()
    edited = run(cli, corpus, out, url)
    assert edited.returncode == 0, edited.output
    assert requested_ids(sim) == {"prog001", "prog002"}
    sim.reset_log()
    (cli.cwd / "sactor.toml").write_text(
        "[pipeline]\nworkers = 3\nrequest_timeout = 50\nretry_attempts = 2\nstream = true\noutage_budget = 100\n"
        "[toolchain]\ncompile_timeout = 100\n[sandbox]\nmemory_mb = 1024\nopen_files = 128\n")
    unchanged = run(cli, corpus, out, url, "--jobs", "1")
    assert unchanged.returncode == 0, unchanged.output
    assert sim.chat_requests == [] and summary(out)["skipped_unchanged"] == 4
    with (cli.cwd / "sactor.toml").open("a") as fh:
        fh.write('[general]\nsystem_message = "You translate C to Rust, carefully."\n')
    prompted = run(cli, corpus, out, url)
    assert prompted.returncode == 0, prompted.output
    assert requested_ids(sim) == {"prog000", "prog001", "prog002", "prog003"}


def test_symbolic_links_to_files_outside_the_corpus_work_and_loops_are_reported(
    cli: Cli, simulator_factory: Any, tmp_path: Path
) -> None:
    """A C file and its tests linked from elsewhere (a curated subset of a dataset) form a task; links that loop
    or lead nowhere are reported as orphans with what they are, and the run goes on."""
    import os

    from tests.test_batch_e2e import flat_corpus, summary

    corpus, elsewhere = tmp_path / "corpus", tmp_path / "dataset"
    flat_corpus(corpus, 1)
    flat_corpus(elsewhere, 2, prefix="linked")
    for suffix in (".c", ".json", "_samples.json"):
        os.symlink(elsewhere / f"linked001{suffix}", corpus / f"linked001{suffix}")
    os.symlink("loop2.c", corpus / "loop1.c")
    os.symlink("loop1.c", corpus / "loop2.c")
    os.symlink("nowhere.json", corpus / "gone.json")
    _sim, url = simulator_factory()
    out = tmp_path / "out"
    result = run(cli, corpus, out, url)
    assert result.returncode == 1, result.output
    s = summary(out)
    assert {t["task_id"]: t["status"] for t in s["tasks"]} == {"prog000": "verified", "linked001": "verified"}
    orphans = {Path(o["path"]).name: o["reason"] for o in s["orphans"]}
    assert set(orphans) == {"loop1.c", "loop2.c", "gone.json"}
    assert "Too many levels of symbolic links" in orphans["loop1.c"]
    assert "a broken symbolic link" in orphans["gone.json"]


def _without_root_rights() -> list[str]:
    """The command prefix that runs a program as root without the rights to ignore file modes (CAP_DAC_OVERRIDE,
    CAP_DAC_READ_SEARCH), as a user who is not root is; nothing for a user who is not root."""
    import os
    import shutil

    import pytest

    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv to drop root's file-access rights")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--inh-caps",
            "-dac_override,-dac_read_search", "--"]


def _run_without_root_rights(cli: Cli, corpus: Path, out: Path, url: str) -> subprocess.CompletedProcess[str]:
    import os

    from tests.conftest import ROOT

    argv = [*_without_root_rights(), sys.executable, str(ROOT / "batch_translate_generic.py"), "--c-files",
            str(corpus), "--json-files", str(corpus), "--output", str(out), "--base-url", url, "--model",
            "sim-model", "--cache-dir", str(cli.cache_dir)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_")}
    return subprocess.run(argv, cwd=cli.cwd, env=env, capture_output=True, text=True, timeout=300)


def test_folders_a_program_made_unreadable_are_removed_without_root_privileges(tmp_path: Path) -> None:
    """A program that leaves a folder of mode 000 in its working copy (`mkdir -p d/e && chmod 000 d/e d`) must not
    stop the clean-up of a user who is not root (the rights root's CAP_DAC_OVERRIDE gives are dropped here): the
    folder is opened up and removed, and nothing raises."""
    from tests.conftest import ROOT

    work = tmp_path / "work"
    (work / "d" / "e").mkdir(parents=True)
    (work / "d" / "e" / "f").write_text("x")
    (work / "d" / "e").chmod(0)
    (work / "d").chmod(0)
    script = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from pipeline.sandbox import _remove_tree; " \
             f"from pathlib import Path; _remove_tree(Path({str(work)!r}))"
    done = subprocess.run([*_without_root_rights(), sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert not work.exists()


def test_unreadable_files_cost_their_task_only_for_a_user_without_root_rights(
    cli: Cli, simulator_factory: Any, tmp_path: Path
) -> None:
    """Run as root without the rights to ignore file modes (as a user who is not root is): a C file, a test task
    and a samples file of mode 000 are each reported with "Permission denied" and their task is skipped; the
    sandbox, which cannot switch uids then, still cleans up after itself, and the readable task verifies."""
    from tests.test_batch_e2e import flat_corpus, summary

    corpus = tmp_path / "corpus"
    flat_corpus(corpus, 4)
    for name in ("prog001.c", "prog002_samples.json", "prog003.json"):
        (corpus / name).chmod(0)
    _sim, url = simulator_factory()
    out = tmp_path / "out"
    done = _run_without_root_rights(cli, corpus, out, url)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    s = summary(out)
    tasks = {t["task_id"]: t for t in s["tasks"]}
    assert {task: t["status"] for task, t in tasks.items()} == {"prog000": "verified"}
    orphans = {Path(o["path"]).name: o["reason"] for o in s["orphans"]}
    assert orphans == {
        "prog001.c": "cannot read the file (Permission denied)",
        "prog002_samples.json": "cannot read the file (Permission denied): task 'prog002' is left as it was; make "
                                "the file readable and rerun",
        "prog003.json": "cannot read the file (Permission denied); prog003.c has no usable tests"}


def test_a_file_that_cannot_be_read_for_a_while_keeps_its_finished_task(
    cli: Cli, simulator_factory: Any, tmp_path: Path
) -> None:
    """A finished task whose C file, test task or samples file cannot be read during one rerun (permissions, an I/O
    error) is reported, but neither its results nor its ledger record are touched: once the file is readable
    again, nothing is asked for it."""
    from tests.test_batch_e2e import summary

    corpus, out, sim, url = finished_run(cli, simulator_factory, tmp_path, 4)
    unreadable = [corpus / "prog001.c", corpus / "prog002.json", corpus / "prog003_samples.json"]
    for path in unreadable:
        path.chmod(0)
    done = _run_without_root_rights(cli, corpus, out, url)
    assert done.returncode == 1, done.stdout + done.stderr
    s = summary(out)
    assert {t["task_id"]: t["status"] for t in s["tasks"]} == dict.fromkeys(
        ("prog000", "prog001", "prog002", "prog003"), "verified")
    orphans = {Path(o["path"]).name: o["reason"] for o in s["orphans"]}
    assert set(orphans) == {path.name for path in unreadable}
    assert all("Permission denied" in reason for reason in orphans.values()), orphans
    for task in ("prog001", "prog002", "prog003"):
        assert (out / task / "translated_code_idiomatic" / "combined.rs").is_file(), task
    for path in unreadable:
        path.chmod(0o644)
    sim.reset_log()
    again = run(cli, corpus, out, url)
    assert again.returncode == 0, again.output
    assert sim.chat_requests == []
    assert summary(out)["skipped_unchanged"] == 4


def test_tasks_verified_under_earlier_verification_rules_are_checked_again_without_the_model(
    cli: Cli, simulator_factory: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    """After an upgrade that makes verification stricter, a rerun asks nothing for a task whose stored programs
    still verify (its results stay as they are) and redoes one whose stored program the new rules refuse."""
    from pipeline.cli import _config, build_parser
    from pipeline.engine import settings_fingerprint
    from tests.test_batch_e2e import summary

    corpus, out, sim, url = finished_run(cli, simulator_factory, tmp_path, 2)
    # What a run of the release before the rules' revision left: its records keyed without the revision...
    monkeypatch.chdir(cli.cwd)
    for name, value in cli.env.items():
        monkeypatch.setenv(name, value)
    config = _config(build_parser().parse_args(
        ["run", "--c-files", str(corpus), "--json-files", str(corpus), "--output", str(out), "--base-url", url,
         "--model", "sim-model", "--cache-dir", str(cli.cache_dir)]))
    now, before = settings_fingerprint(config), settings_fingerprint(config, rules=None)
    assert now != before
    ledger = out / "ledger.jsonl"
    records = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert {r["key"].partition(":")[2] for r in records} == {now}
    for record in records:
        record["key"] = record["key"].replace(f":{now}", f":{before}")
        record.pop("reuse_key", None)
    ledger.write_text("".join(json.dumps(r) + "\n" for r in records))
    # ... and a stored program that passed then but runs another program, which the current rules refuse.
    for stage in ("unidiomatic", "idiomatic"):
        program = out / "prog001" / f"translated_code_{stage}" / "combined.rs"
        program.write_text("use std::process::Command;\n" + program.read_text())
    kept = {path: path.read_bytes() for path in (out / "prog000").rglob("*") if path.is_file()}
    sim.reset_log()
    rerun = run(cli, corpus, out, url)
    assert rerun.returncode == 0, rerun.output
    assert requested_ids(sim) == {"prog001"}
    assert "prog000: verified again under the current verification rules" in rerun.stderr, rerun.stderr[-3000:]
    assert re.search(r"prog001: its unidiomatic program no longer verifies under the current verification rules "
                     r"\(line 1 runs another program \(std::process::Command\)", rerun.stderr), rerun.stderr[-3000:]
    assert summary(out)["skipped_unchanged"] == 1
    assert {t["task_id"]: t["status"] for t in summary(out)["tasks"]} == {"prog000": "verified",
                                                                            "prog001": "verified"}
    assert {path: path.read_bytes() for path in (out / "prog000").rglob("*") if path.is_file()} == kept
    assert "Command" not in (out / "prog001" / "translated_code_unidiomatic" / "combined.rs").read_text()
    sim.reset_log()
    again = run(cli, corpus, out, url)
    assert again.returncode == 0, again.output
    assert sim.chat_requests == []
    assert summary(out)["skipped_unchanged"] == 2
