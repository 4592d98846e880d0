"""--executor ray through the real CLI: builds and tests run as named Ray tasks on a Ray instance the test
starts (on 127.0.0.1, stopped afterwards by its pid), with the same results as a local run; without the ray
package the run says how to install it."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Cli
from tests.test_batch_e2e import (
    _finished,
    _signal_when,
    directive_c,
    flat_corpus,
    run,
    samples_json,
    summary,
    task_json,
)

#: Ray on this machine: loopback only, no token authentication (the test's instance is nobody else's).
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
HAVE_RAY = importlib.util.find_spec("ray") is not None
#: CI sets C2RUST_REQUIRE_RAY=1 (.ci/run): there a missing Ray fails these tests instead of skipping them.
needs_ray = pytest.mark.skipif(not HAVE_RAY and not os.environ.get("C2RUST_REQUIRE_RAY"),
                               reason="ray is not installed (pip install -e '.[ray]')")
STAGES = ("translated_code_unidiomatic", "translated_code_idiomatic")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class RayHead:
    address: str  # what --ray-address takes
    dashboard: str  # where the state API answers
    temp: Path  # its --temp-dir


@pytest.fixture(scope="module")
def ray_head() -> Iterator[RayHead]:
    """A fresh one-node Ray instance (2 CPUs, 127.0.0.1) in its own process group; stopped after the module.

    ``ray start --block`` stays in the foreground and stops what it started when it gets SIGTERM; whatever of
    its process group is left after that is killed. The dashboard is on: Ray's state API is served by it.
    """
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    port, dashboard_port = _free_port(), _free_port()
    ray_cli = Path(sys.executable).with_name("ray")
    argv = [str(ray_cli) if ray_cli.exists() else "ray", "start", "--head", "--block", "--num-cpus", "2",
            "--node-ip-address", "127.0.0.1", "--port", str(port), "--dashboard-host", "127.0.0.1",
            "--dashboard-port", str(dashboard_port), "--include-dashboard", "true", "--temp-dir", str(temp),
            "--disable-usage-stats"]
    log = temp / "head.log"
    with log.open("wb") as out:
        head = subprocess.Popen(argv, env={**os.environ, **RAY_ENV}, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (_listening(port) and _listening(dashboard_port)):
            assert head.poll() is None, f"ray start exited with {head.returncode}: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"Ray did not come up in 120 s: {log.read_text()[-3000:]}"
            time.sleep(0.5)
        yield RayHead(f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard_port}", temp)
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)  # our group only: the workers, the GCS, the dashboard
        except ProcessLookupError:
            pass
        head.wait(timeout=10)
        shutil.rmtree(temp, ignore_errors=True)


def ray_corpus(root: Path) -> dict[str, str]:
    """Three tasks whose answers fail before they pass (compile error, test failure, unsafe), one of them
    judged by a script of its own folder (shipped to the node with the task). Returns {task: expected}."""
    root.mkdir(parents=True)
    plans = {
        "alpha": {"unidiomatic": ("compile_error", "pass"), "idiomatic": ("pass",)},
        "beta": {"unidiomatic": ("pass",), "idiomatic": ("test_fail", "unsafe", "pass")},
        "gamma": {"unidiomatic": ("test_fail", "pass"), "idiomatic": ("compile_error", "pass")},
    }
    for name, plan in plans.items():
        (root / f"{name}.c").write_text(directive_c(name, f"out {name}", **plan))
        (root / f"{name}_samples.json").write_text(samples_json(f"out {name}"))
        (root / f"{name}.json").write_text(task_json(name))
    # gamma: a plain command with a script beside the task, as SACToR's own test tasks have.
    (root / "judge.sh").write_text('#!/bin/sh\n[ "$("$1")" = "out gamma" ]\n')
    tests = [*json.loads(task_json("gamma")), {"command": "sh judge.sh %t"}]
    (root / "gamma.json").write_text(json.dumps(tests))
    return {name: f"out {name}" for name in plans}


def failures(out: Path) -> str:
    """The failed tasks' reasons, for an assertion message."""
    try:
        tasks = summary(out)["tasks"]
    except (OSError, ValueError) as exc:
        return f"no summary: {exc}"
    return "\n".join(f"{t['task_id']}: {t['reason']}" for t in tasks if t["status"] != "verified")


def ray_logs(root: Path) -> str:
    """The end of the GCS's and the raylet's logs under a Ray temporary folder, for an assertion message."""
    return "".join(f"\n--- {log}\n" + log.read_text(errors="replace")[-3000:]
                   for log in sorted(root.glob("session_2*/logs/*")) if log.name in ("gcs_server.out", "raylet.out"))


def outcome(out: Path, names: list[str]) -> dict[str, Any]:
    """What a user compares between two runs: each task's status, attempt verdicts, final programs and their
    clippy figures."""
    tasks = {t["task_id"]: t for t in summary(out)["tasks"]}
    seen: dict[str, Any] = {}
    for name in names:
        events = [json.loads(line) for line in (out / name / "transcript.jsonl").read_text().splitlines()]
        seen[name] = {
            "status": tasks[name]["status"],
            "attempts": {stage: record["attempts"] for stage, record in tasks[name]["stages"].items()},
            "verdicts": [[e["kind"] for e in events if e.get("event") == "verdict" and e["stage"] == stage]
                         for stage in ("unidiomatic", "idiomatic")],
            "code": [(out / name / stage / "combined.rs").read_text() for stage in STAGES],
            "clippy": [json.loads((out / name / stage / "clippy_stat.json").read_text()) for stage in STAGES],
        }
    return seen


def ray_tasks(head: RayHead, until: Callable[[Counter[tuple[str, str]]], bool] = bool,
              timeout: float = 60) -> Counter[tuple[str, str]]:
    """(name, state) of the pipeline's tasks the cluster knows, by Ray's state API, once ``until`` holds for
    them (task events reach the state API a little after the tasks change) or ``timeout`` has passed."""
    from ray.util.state import list_tasks

    deadline = time.monotonic() + timeout
    while True:
        tasks = list_tasks(address=head.dashboard, limit=10_000, raise_on_missing_output=False)
        found = Counter((t.name, t.state) for t in tasks if t.name.startswith("c2rust"))
        if until(found) or time.monotonic() > deadline:
            return found
        time.sleep(1)


def settled(found: Counter[tuple[str, str]]) -> bool:
    return all(state in ("FINISHED", "FAILED") for _, state in found)


@needs_ray
@pytest.mark.timeout(600)  # a Ray instance and a corpus on a busy 2-core machine
def test_ray_executor_runs_the_jobs_on_the_cluster_and_matches_a_local_run(
    cli: Cli, simulator_factory: Any, tmp_path: Path, ray_head: RayHead
) -> None:
    """Every build+test, vacuity and clippy job is a named Ray task; verdicts and programs equal the local run's."""
    corpus = tmp_path / "corpus"
    names = sorted(ray_corpus(corpus))
    _sim, url = simulator_factory()
    before = ray_tasks(ray_head, until=settled, timeout=10)  # other tests' jobs on this module's cluster
    local = run(cli, corpus, tmp_path / "out-local", url, "--executor", "local", "--jobs", "2")
    assert local.returncode == 0, failures(tmp_path / "out-local") + local.output
    remote = run(cli, corpus, tmp_path / "out-ray", url, "--executor", "ray", "--ray-address", ray_head.address,
                 "--jobs", "2", timeout=300, env=RAY_ENV)
    assert remote.returncode == 0, failures(tmp_path / "out-ray") + remote.output[-5000:] + ray_logs(ray_head.temp)

    local_seen, remote_seen = outcome(tmp_path / "out-local", names), outcome(tmp_path / "out-ray", names)
    assert remote_seen == local_seen
    assert all(t["status"] == "verified" for t in remote_seen.values())
    assert remote_seen["beta"]["verdicts"][1] == ["test_failure", "refused", "verified"]
    assert summary(tmp_path / "out-ray")["config"]["run"]["executor"] == "ray"

    attempts = {stage: sum(len(s["verdicts"][i]) for s in remote_seen.values())
                for i, stage in enumerate(("unidiomatic", "idiomatic"))}
    expected = before + Counter({
        ("c2rust build+test unidiomatic", "FINISHED"): attempts["unidiomatic"],
        ("c2rust build+test idiomatic", "FINISHED"): attempts["idiomatic"],
        ("c2rust vacuity check", "FINISHED"): len(names),
        ("c2rust clippy", "FINISHED"): 2 * len(names),
    })
    found = ray_tasks(ray_head, until=lambda found: found == expected)
    assert found == expected, found


def listening_addresses(pids: set[int]) -> set[str]:
    """The addresses the processes ``pids`` listen on (TCP, IPv4 and IPv6), from /proc."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue  # gone meanwhile
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                found.add(fields[1].rsplit(":", 1)[0])
    return found


#: 127.0.0.1 as /proc/net/tcp and tcp6 write it (IPv4, and IPv4-mapped IPv6).
LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F"}


@needs_ray
@pytest.mark.timeout(600)  # a Ray instance and a corpus on a busy 2-core machine
def test_without_an_address_the_run_starts_a_local_ray_instance_on_the_loopback(
    cli: Cli, simulator_factory: Any, tmp_path: Path
) -> None:
    """--executor ray alone: a Ray instance of this run's own, listening on 127.0.0.1 only, alive through a quiet
    spell of the run (the server asks to come back in 12 s), gone with the run."""
    from pipeline.simulator import FaultPlan

    corpus = tmp_path / "corpus"
    names = sorted(ray_corpus(corpus))
    _sim, url = simulator_factory(faults=FaultPlan(script=("429",) * 3, retry_after=12))
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    # Not RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER: keeping the instance on the loopback is the run's job.
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_TMPDIR": str(temp)}
    env = {k: v for k, v in env.items() if not k.startswith("VLLM_") and k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    argv = [sys.executable, str(ROOT / "batch_translate_generic.py"), "--c-files", str(corpus), "--json-files",
            str(corpus), "--output", str(tmp_path / "out"), "--base-url", url, "--model", "sim-model",
            "--executor", "ray", "--jobs", "2", "--cache-dir", str(cli.cache_dir)]
    listening: set[str] = set()
    try:
        with subprocess.Popen(argv, cwd=cli.cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) as proc:
            deadline = time.monotonic() + 300
            while proc.poll() is None and time.monotonic() < deadline:
                pids = {int(p) for p in subprocess.run(["pgrep", "-f", str(temp)], capture_output=True,
                                                       text=True).stdout.split()}
                listening |= listening_addresses(pids)
                time.sleep(0.5)
            output = proc.communicate(timeout=max(deadline - time.monotonic(), 1))[0]
        assert proc.returncode == 0, failures(tmp_path / "out") + output[-5000:] + ray_logs(temp / "ray")
        assert "Ray cluster local (127.0.0.1): 2 CPUs on 1 node(s)" in output
        assert all(t["status"] == "verified" for t in outcome(tmp_path / "out", names).values())
        assert listening and listening <= LOOPBACK, listening
        # Its processes are gone with the run.
        leftovers = subprocess.run(["pgrep", "-f", str(temp)], capture_output=True, text=True).stdout
        assert not leftovers.strip(), leftovers
    finally:
        shutil.rmtree(temp, ignore_errors=True)


@needs_ray
@pytest.mark.timeout(600)
def test_interrupted_ray_run_stops_its_jobs_and_resumes(
    cli: Cli, simulator_factory: Any, tmp_path: Path, ray_head: RayHead
) -> None:
    """SIGINT mid-run on the cluster: exit 130, no job of it left running there; the rerun finishes the rest."""
    from pipeline.simulator import LoadModel

    corpus = tmp_path / "corpus"
    names = flat_corpus(corpus, 8, prefix="int")
    _sim, url = simulator_factory(load=LoadModel(capacity=2, latency=0.3, decode_per_token=0.0))
    out = tmp_path / "out"
    env = {k: v for k, v in {**os.environ, **RAY_ENV}.items() if not k.startswith("VLLM_")}
    argv = [sys.executable, str(ROOT / "batch_translate_generic.py"), "--c-files", str(corpus), "--json-files",
            str(corpus), "--output", str(out), "--base-url", url, "--model", "sim-model", "--workers", "2",
            "--executor", "ray", "--ray-address", ray_head.address, "--cache-dir", str(cli.cache_dir)]
    proc = subprocess.Popen(argv, cwd=cli.cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stderr = _signal_when(proc, lambda: len(_finished(out)) >= 2, signal.SIGINT)
    assert proc.returncode == 130, stderr
    done = _finished(out)
    assert 2 <= len(done) < len(names)
    assert settled(ray_tasks(ray_head, until=settled))
    rerun = run(cli, corpus, out, url, "--executor", "ray", "--ray-address", ray_head.address, timeout=300,
                env=RAY_ENV)
    assert rerun.returncode == 0, failures(out) + rerun.output[-5000:]
    assert {t["task_id"]: t["status"] for t in summary(out)["tasks"]} == dict.fromkeys(names, "verified")


def test_without_ray_the_run_says_how_to_install_it(cli: Cli, simulator_factory: Any, tmp_path: Path) -> None:
    """--executor ray where ray cannot be imported: exit 2, naming the extra to install; nothing is translated."""
    shadow = tmp_path / "shadow" / "ray"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("No module named \'ray\'")\n')
    corpus = tmp_path / "corpus"
    ray_corpus(corpus)
    _sim, url = simulator_factory()
    result = run(cli, corpus, tmp_path / "out", url, "--executor", "ray",
                 env={"PYTHONPATH": str(tmp_path / "shadow")})
    assert result.returncode == 2, result.output
    assert "pip install -e '.[ray]'" in result.output
    assert "--executor local" in result.output
    assert not (tmp_path / "out" / "alpha" / "result.json").exists()


@needs_ray
def test_an_address_nobody_answers_on_stops_the_run_at_start_up(
    cli: Cli, simulator_factory: Any, tmp_path: Path
) -> None:
    """--ray-address where no cluster listens: exit 2 at once, naming the address and the fix (Ray itself would
    keep retrying for minutes)."""
    corpus = tmp_path / "corpus"
    ray_corpus(corpus)
    _sim, url = simulator_factory()
    address = f"127.0.0.1:{_free_port()}"
    started = time.monotonic()
    result = run(cli, corpus, tmp_path / "out", url, "--executor", "ray", "--ray-address", address, env=RAY_ENV)
    assert result.returncode == 2, result.output
    assert f"--ray-address {address} ([pipeline] ray_address): no Ray cluster answers there" in result.output
    assert "ray start --head" in result.output
    assert time.monotonic() - started < 60
    assert not (tmp_path / "out" / "alpha" / "result.json").exists()


@needs_ray
@pytest.mark.timeout(600)
def test_a_node_without_the_toolchain_stops_the_run_naming_the_node(
    cli: Cli, simulator_factory: Any, tmp_path: Path, ray_head: RayHead
) -> None:
    """The driver finds the compiler but the Ray node does not: exit 2 with the node's toolchain message, as a
    local run without rustc would say it, prefixed by the node."""
    tools = tmp_path / "tools"
    tools.mkdir()
    rustc = shutil.which("rustc")
    assert rustc is not None
    wrapper = tools / "rustc-driver-only"  # on the driver's PATH, not on the node's
    wrapper.write_text(f'#!/bin/sh\nexec "{rustc}" "$@"\n')
    wrapper.chmod(0o755)
    (cli.cwd / "sactor.toml").write_text('[toolchain]\nrustc = "rustc-driver-only"\n')
    corpus = tmp_path / "corpus"
    ray_corpus(corpus)
    _sim, url = simulator_factory()
    result = run(cli, corpus, tmp_path / "out", url, "--executor", "ray", "--ray-address", ray_head.address,
                 timeout=300, env={**RAY_ENV, "PATH": f"{tools}:{os.environ['PATH']}"})
    assert result.returncode == 2, result.output
    assert "Ray node 127.0.0.1: [toolchain] rustc = 'rustc-driver-only' was not found" in result.output
