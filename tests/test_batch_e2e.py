"""The batch engine through the real CLI and the simulator: layouts, faults, resume, locking, reruns."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.conftest import ROOT, Cli

FAST_RETRIES = """
[pipeline]
retry_attempts = 8
retry_max_wait = 0.05
retry_deadline = 30
outage_budget = 20
request_timeout = 5
"""


def directive_c(task_id: str, stdout: str, *, unidiomatic: tuple[str, ...] = ("pass",),
                idiomatic: tuple[str, ...] = ("pass",)) -> str:
    plan = {"id": task_id, "unidiomatic": list(unidiomatic), "idiomatic": list(idiomatic), "stdout": stdout,
            "tokens": 40}
    return f'// @sim {json.dumps(plan)}\n#include <stdio.h>\nint main(void) {{ puts("{stdout}"); return 0; }}\n'


def samples_json(stdout: str) -> str:
    return json.dumps([{"input": "", "output": stdout}, {"input": "1 2", "output": stdout}])


def task_json(name: str) -> str:
    return json.dumps([{"command": f"sactor run-tests --type bin ./{name}_samples.json %t {i} --feed-as-stdin"}
                       for i in range(2)])


def flat_corpus(root: Path, count: int, *, prefix: str = "prog") -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        name = f"{prefix}{i:03d}"
        (root / f"{name}.c").write_text(directive_c(name, f"out {name}"))
        (root / f"{name}_samples.json").write_text(samples_json(f"out {name}"))
        (root / f"{name}.json").write_text(task_json(name))
        names.append(name)
    return names


def sactor_corpus(root: Path, names: tuple[str, ...], *, tests: Any = task_json) -> None:
    """NAME/NAME.c, NAME/test_task/NAME_samples.json and NAME/test_task/test_task.json (``tests(name)``)."""
    for name in names:
        (root / name / "test_task").mkdir(parents=True)
        (root / name / f"{name}.c").write_text(directive_c(name, f"out {name}"))
        (root / name / "test_task" / f"{name}_samples.json").write_text(samples_json(f"out {name}"))
        (root / name / "test_task" / "test_task.json").write_text(tests(name))


def run(cli: Cli, corpus: Path, out: Path, url: str, *extra: str, **kw: Any) -> Any:
    return cli("--c-files", corpus, "--json-files", corpus, "--output", out, "--base-url", url,
               "--model", "sim-model", *extra, **kw)


def finished_run(cli: Cli, simulator_factory: Any, tmp_path: Path, count: int) -> tuple[Path, Path, Any, str]:
    """A flat corpus of ``count`` tasks run once to the end: (corpus, output, simulator, url)."""
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    flat_corpus(corpus, count)
    sim, url = simulator_factory()
    first = run(cli, corpus, out, url)
    assert first.returncode == 0, first.output
    return corpus, out, sim, url


def summary(out: Path) -> dict[str, Any]:
    return json.loads((out / "batch_summary.json").read_text())  # type: ignore[no-any-return]


def requested_ids(sim: Any) -> set[str]:
    ids = set()
    for r in sim.chat_requests:
        first = next(m["content"] for m in r.body["messages"] if m["role"] == "user")
        for line in first.splitlines():
            if "@sim " in line:
                ids.add(json.loads(line.split("@sim ", 1)[1])["id"])
    return ids


def test_flat_layout_with_orphans(cli: Cli, simulator_factory: Any, tmp_path: Path) -> None:
    """Pairs NAME.c with NAME.json, reports a C file without tests and a JSON without C, exits 1 for them."""
    corpus = tmp_path / "corpus"
    flat_corpus(corpus, 3)
    (corpus / "lonely.c").write_text(directive_c("lonely", "x"))
    (corpus / "stray.json").write_text(task_json("stray"))
    _sim, url = simulator_factory()
    out = tmp_path / "out"
    result = run(cli, corpus, out, url)
    assert result.returncode == 1, result.output
    s = summary(out)
    assert {t["task_id"]: t["status"] for t in s["tasks"]} == {f"prog{i:03d}": "verified" for i in range(3)}
    orphans = {Path(o["path"]).name: o["reason"] for o in s["orphans"]}
    assert set(orphans) == {"lonely.c", "stray.json"}
    for i in range(3):
        assert (out / f"prog{i:03d}" / "translated_code_idiomatic" / "combined.rs").is_file()


def test_sactor_layout(cli: Cli, simulator_factory: Any, tmp_path: Path) -> None:
    """NAME/NAME.c with NAME/test_task/test_task.json."""
    corpus = tmp_path / "corpus"
    sactor_corpus(corpus, ("alpha", "beta"))
    _sim, url = simulator_factory()
    out = tmp_path / "out"
    result = run(cli, corpus, out, url)
    assert result.returncode == 0, result.output
    assert sorted(t["task_id"] for t in summary(out)["tasks"]) == ["alpha", "beta"]


def test_codenet_layout_shares_one_json_per_problem(cli: Cli, simulator_factory: Any, tmp_path: Path) -> None:
    """pXXXXX/C/*.c with one sample-list JSON per problem; equal file names in two problems stay apart."""
    c_dir, j_dir = tmp_path / "c", tmp_path / "json"
    for problem, subs in (("p00001", ("s100", "s200")), ("p00002", ("s100",))):
        (c_dir / problem / "C").mkdir(parents=True)
        (j_dir / problem / "C").mkdir(parents=True)
        (j_dir / problem / "C" / f"{problem}.json").write_text(samples_json(problem))
        for sub in subs:
            (c_dir / problem / "C" / f"{sub}.c").write_text(directive_c(f"{problem}-{sub}", problem))
    _sim, url = simulator_factory()
    out = tmp_path / "out"
    result = cli("--c-files", c_dir, "--json-files", j_dir, "--output", out, "--base-url", url,
                 "--model", "sim-model")
    assert result.returncode == 0, result.output
    ids = sorted(t["task_id"] for t in summary(out)["tasks"])
    assert len(ids) == 3 and len(set(ids)) == 3
    assert all(t["status"] == "verified" for t in summary(out)["tasks"])


def test_injected_faults_leave_every_task_in_a_final_state(
    cli: Cli, simulator_factory: Any, tmp_path: Path
) -> None:
    """With 10% of requests failing (503, 429, dropped, malformed), every task still ends verified or failed."""
    corpus = tmp_path / "corpus"
    names = flat_corpus(corpus, 12)
    from pipeline.simulator import FaultPlan

    sim, url = simulator_factory(faults=FaultPlan(rate=0.1, kinds=("503", "429", "drop", "malformed", "500"),
                                                  seed=7, retry_after=0.05))
    (cli.cwd / "sactor.toml").write_text(FAST_RETRIES)
    out = tmp_path / "out"
    result = run(cli, corpus, out, url, timeout=240)
    assert result.returncode in (0, 1), result.output
    s = summary(out)
    assert sorted(t["task_id"] for t in s["tasks"]) == names
    assert all(t["status"] in ("verified", "failed") for t in s["tasks"])
    assert any(r.fault for r in sim.chat_requests), "the simulator injected no fault"
    for name in names:
        assert (out / name / "result.json").is_file()


def test_rerun_of_a_finished_corpus_sends_no_request(cli: Cli, simulator_factory: Any, tmp_path: Path) -> None:
    """Unchanged inputs and settings: everything is skipped; changing one C file redoes that task alone."""
    corpus, out, sim, url = finished_run(cli, simulator_factory, tmp_path, 4)
    first = len(sim.chat_requests)
    assert first == 8
    sim.reset_log()
    again = run(cli, corpus, out, url)
    assert again.returncode == 0, again.output
    assert sim.chat_requests == []
    assert summary(out)["skipped_unchanged"] == 4
    (corpus / "prog002.c").write_text(directive_c("prog002-v2", "out prog002"))
    third = run(cli, corpus, out, url)
    assert third.returncode == 0, third.output
    assert requested_ids(sim) == {"prog002-v2"}
    assert summary(out)["skipped_unchanged"] == 3


def test_changed_settings_redo_tasks_and_retry_failed_widens(
    cli: Cli, simulator_factory: Any, tmp_path: Path
) -> None:
    """A failed task stays failed on rerun unless --retry-failed; --force redoes everything."""
    corpus = tmp_path / "corpus"
    flat_corpus(corpus, 2)
    (corpus / "prog001.c").write_text(directive_c("prog001", "out prog001", unidiomatic=("compile_error",)))
    sim, url = simulator_factory()
    out = tmp_path / "out"
    assert run(cli, corpus, out, url, "--max-attempts", "2").returncode == 1
    sim.reset_log()
    assert run(cli, corpus, out, url, "--max-attempts", "2").returncode == 1
    assert sim.chat_requests == []
    assert run(cli, corpus, out, url, "--max-attempts", "2", "--retry-failed").returncode == 1
    assert requested_ids(sim) == {"prog001"}
    sim.reset_log()
    assert run(cli, corpus, out, url, "--max-attempts", "2", "--force").returncode == 1
    assert requested_ids(sim) == {"prog000", "prog001"}


def _start_run(cli: Cli, corpus: Path, out: Path, url: str, *extra: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_")}
    argv = [sys.executable, str(ROOT / "batch_translate_generic.py"), "--c-files", str(corpus), "--json-files",
            str(corpus), "--output", str(out), "--base-url", url, "--model", "sim-model", "--cache-dir",
            str(cli.cache_dir), *extra]
    return subprocess.Popen(argv, cwd=cli.cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def _signal_when(proc: subprocess.Popen[str], condition: Any, signum: int) -> str:
    """Send ``signum`` to the run once ``condition()`` holds; wait for it to end; return its stderr."""
    try:
        _wait_for(condition)
        proc.send_signal(signum)
        _stdout, stderr = proc.communicate(timeout=60)
        return stderr
    finally:
        if proc.poll() is None:
            proc.kill()


def _finished(out: Path) -> set[str]:
    """Task ids the ledger records as finished (its snapshot and its journal)."""
    done: set[str] = set()
    for name in ("ledger.jsonl", "ledger.journal.jsonl"):
        path = out / name
        if path.exists():
            done |= {json.loads(line)["task_id"] for line in path.read_text().splitlines() if line.endswith("}")}
    return done


def test_interrupted_run_resumes_without_redoing_finished_tasks(
    cli: Cli, simulator_factory: Any, tmp_path: Path
) -> None:
    """SIGINT mid-run exits 130; the rerun asks nothing for finished tasks and ends like an uninterrupted run."""
    from pipeline.simulator import LoadModel

    corpus = tmp_path / "corpus"
    names = flat_corpus(corpus, 10)
    sim, url = simulator_factory(load=LoadModel(capacity=2, latency=0.15, decode_per_token=0.0))
    out = tmp_path / "out"
    proc = _start_run(cli, corpus, out, url, "--workers", "2")
    stderr = _signal_when(proc, lambda: len(_finished(out)) >= 2, signal.SIGINT)
    assert proc.returncode == 130, stderr
    done = _finished(out)
    assert 2 <= len(done) < len(names)
    sim.reset_log()
    result = run(cli, corpus, out, url, "--workers", "2")
    assert result.returncode == 0, result.output
    assert not requested_ids(sim) & done
    resumed = {t["task_id"]: t["status"] for t in summary(out)["tasks"]}
    clean_out = tmp_path / "clean"
    assert run(cli, corpus, clean_out, url, "--workers", "4").returncode == 0
    assert resumed == {t["task_id"]: t["status"] for t in summary(clean_out)["tasks"]}
    for name in names:
        for stage in ("unidiomatic", "idiomatic"):
            rel = Path(name) / f"translated_code_{stage}" / "combined.rs"
            assert (out / rel).read_text() == (clean_out / rel).read_text()


def test_second_concurrent_run_is_refused(cli: Cli, simulator_factory: Any, tmp_path: Path) -> None:
    """While one run holds the output directory, another exits 2 at once naming the holder."""
    from pipeline.simulator import LoadModel

    corpus = tmp_path / "corpus"
    flat_corpus(corpus, 6)
    _sim, url = simulator_factory(load=LoadModel(capacity=1, latency=0.3, decode_per_token=0.0))
    out = tmp_path / "out"
    first = _start_run(cli, corpus, out, url, "--workers", "1")
    try:
        _wait_for(lambda: (out / ".run.lock").exists() and "pid" in (out / ".run.lock").read_text())
        second = run(cli, corpus, out, url, timeout=30)
        assert second.returncode == 2, second.output
        assert f"pid {first.pid}" in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    assert first.returncode == 130


def test_server_down_at_start_exits_3(cli: Cli, tmp_path: Path) -> None:
    """Preflight against a closed port fails fast with a readable reason and exit status 3."""
    corpus = tmp_path / "corpus"
    flat_corpus(corpus, 1)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = run(cli, corpus, tmp_path / "out", f"http://127.0.0.1:{port}/v1", timeout=60)
    assert result.returncode == 3, result.output
    assert "connect" in result.stderr.lower()


def test_killed_run_leaves_nothing_a_rerun_would_trust(cli: Cli, simulator_factory: Any, tmp_path: Path) -> None:
    """After SIGKILL mid-run, the rerun redoes exactly the tasks without a ledger record and verifies all."""
    from pipeline.simulator import LoadModel

    corpus = tmp_path / "corpus"
    names = flat_corpus(corpus, 8)
    sim, url = simulator_factory(load=LoadModel(capacity=2, latency=0.15, decode_per_token=0.0))
    out = tmp_path / "out"
    proc = _start_run(cli, corpus, out, url, "--workers", "2")
    _signal_when(proc, lambda: len(_finished(out)) >= 2, signal.SIGKILL)
    done = _finished(out)
    assert len(done) < len(names)
    sim.reset_log()
    result = run(cli, corpus, out, url, "--workers", "2")
    assert result.returncode == 0, result.output
    assert requested_ids(sim) == set(names) - done
    assert {t["status"] for t in summary(out)["tasks"]} == {"verified"}


DAEMON_AND_SPIN = """fn main() {
    unsafe {
        if libc::fork() == 0 {
            libc::setsid();
            if libc::fork() == 0 {
                libc::sleep(1000);
            }
            libc::_exit(0);
        }
    }
    loop {
        std::hint::spin_loop();
    }
}
"""


def _run_processes(tag: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if tag in line]


def test_killed_run_leaves_no_process_and_next_run_removes_its_scratch(
    cli: Cli, corpus: Any, simulator_factory: Any, tmp_path: Path
) -> None:
    """SIGKILL of the CLI while a program and its daemonised child run takes them down; the scratch goes later."""
    from pipeline.sandbox import choose_scratch_root
    from tests.conftest import answer

    corpus.add_task("hang", unidiomatic=[answer(DAEMON_AND_SPIN)])
    _sim, url = simulator_factory(answers_dir=corpus.answers)
    proc = _start_run(cli, corpus.corpus, tmp_path / "out", url, "--test-timeout", "120")
    tag = f"c2rust-sandbox-{proc.pid}-"
    _signal_when(proc, lambda: len([p for p in _run_processes(tag) if "/main" in p]) >= 2, signal.SIGKILL)
    _wait_for(lambda: not _run_processes(tag), timeout=10)
    root, _why = choose_scratch_root("")  # where the run put it: /dev/shm, when that is a roomy tmpfs
    leftovers = [p for p in root.iterdir() if p.name.startswith(tag)]
    assert leftovers, "expected the killed run's scratch directory to be left behind"
    other = tmp_path / "other"
    flat_corpus(other, 1)
    assert run(cli, other, tmp_path / "out2", url).returncode == 0
    assert not [p for p in root.iterdir() if p.name.startswith(tag)]


def test_server_gone_past_the_outage_budget_stops_the_run_with_exit_3(
    cli: Cli, tmp_path: Path
) -> None:
    """The server dies mid-run: the run stops with exit 3 and a clear message; finished tasks stay done."""
    from pipeline.simulator import LoadModel, SimConfig, Simulator

    corpus = tmp_path / "corpus"
    names = flat_corpus(corpus, 8)
    (cli.cwd / "sactor.toml").write_text(FAST_RETRIES.replace("outage_budget = 20", "outage_budget = 2"))
    out = tmp_path / "out"
    # Tasks finish close together at the end of a run (the most work left is served first, pipeline/scheduling.py):
    # slow answers leave the server time to die while six tasks still wait for theirs.
    sim = Simulator(SimConfig(load=LoadModel(capacity=1, latency=0.6)))
    with sim.running() as url:
        proc = _start_run(cli, corpus, out, url, "--workers", "1")
        _wait_for(lambda: len(_finished(out)) >= 2)
    started = time.monotonic()
    _stdout, stderr = proc.communicate(timeout=90)
    assert proc.returncode == 3, stderr
    assert time.monotonic() - started < 60
    assert "has not answered" in stderr or "cannot connect" in stderr
    done = _finished(out)
    assert 2 <= len(done) < len(names)
    s = summary(out)
    assert s["run"]["stopped_by"]
    assert {t["task_id"] for t in s["tasks"]} == done
    second = Simulator(SimConfig())
    with second.running() as url2:
        result = run(cli, corpus, out, url2)
        assert result.returncode == 0, result.output
        assert not requested_ids(second) & done
