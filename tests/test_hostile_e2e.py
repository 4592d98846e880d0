"""Hostile translations in one batch run beside ordinary tasks, through the real CLI and the simulator.

Each hostile task's canned answer is a Rust program that attacks the machine: a fork bomb, an endless loop, a
daemon, endless output, endless allocation, writes to the corpus, the results and the home directory, an
environment dump, a network connection, a leaked shared memory segment and a build-time read of a secret file.
One module-scoped run holds them all; the tests below assert that every one failed for a named reason within its
deadline, that the ordinary tasks verified, and that nothing of the run is left: no process, no file, no secret
in any output.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli, CliResult, Corpus, answer

TEST_TIMEOUT = 3.0
MAX_ATTEMPTS = 2
MEMORY_MB = 256
OUTPUT_CAP = 40_000
API_KEY = "sk-test-SECRET-123"
AWS_SECRET = "aws-SECRET-" + secrets.token_hex(8)
#: Every hostile program names itself with this (its comm, inherited by its children) and prints it with its uid.
MARK = "c2rh" + secrets.token_hex(4)
#: What the writers write (built at run time: the source does not contain it).
PAYLOAD = f"{MARK}-pwned"
ROOT_PROBE = Path("/root/.c2r_hostile_probe")
TMP_PROBE = Path(f"/tmp/c2r_hostile_probe_{MARK}")
#: The System V IPC key of the segment the ipc_leak program creates.
SHM_KEY = int(MARK[4:], 16) & 0x7FFFFFFF or 1
ORDINARY = ("plain_one", "plain_two")

PRELUDE = """
fn mark() {
    let name = b"@MARK@\\0";
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0); }
    eprintln!("@MARK@ uid={}", unsafe { libc::getuid() });
}
"""

FORK_BOMB = """
fn main() {
    mark();
    loop {
        // Fork until refused, then keep trying: every process holds a slot of the process table.
        if unsafe { libc::fork() } < 0 {
            unsafe { libc::sleep(1); }
        }
    }
}
"""

ENDLESS_LOOP = """
fn main() {
    mark();
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}
"""

DAEMON = """
fn main() {
    mark();
    unsafe {
        let child = libc::fork();
        if child == 0 {
            libc::setsid();
            if libc::fork() != 0 {
                libc::_exit(0);
            }
            // The grandchild: no parent, own session, keeps the output pipes open, sleeps forever.
            libc::chdir(b"/\\0".as_ptr() as *const libc::c_char);
            loop {
                libc::sleep(1000);
            }
        }
        libc::waitpid(child, std::ptr::null_mut(), 0);
    }
    println!("daemon started");
}
"""

PRINT_FLOOD = """
fn main() {
    mark();
    // Also first on stdout: the stderr pipe may not be read any more once stdout passes the cap.
    println!("@MARK@ uid={}", unsafe { libc::getuid() });
    loop {
        println!("@MARK@ flood flood flood flood flood flood flood flood");
    }
}
"""

MEMORY_HOG = """
fn main() {
    mark();
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![1u8; 16 << 20]);
    }
}
"""

WRITER = """
use std::io::Write;

fn main() {
    mark();
    let targets = [@TARGETS@];
    for target in targets.iter() {
        match std::fs::OpenOptions::new().create(true).append(true).open(target) {
            Ok(mut file) => {
                let _ = writeln!(file, "{}-{}", "@MARK@", "pwned");
                println!("wrote {}", target);
            }
            Err(e) => println!("write failed: {}: {}", target, e),
        }
    }
    std::process::exit(1);
}
"""

ENV_DUMP = """
fn main() {
    mark();
    // Secrets first: the environment of every process this program can see, then its own.
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let path = entry.path().join("environ");
            if let Ok(data) = std::fs::read(&path) {
                for var in data.split(|b| *b == 0) {
                    let text = String::from_utf8_lossy(var);
                    if ["KEY", "SECRET", "TOKEN", "VLLM"].iter().any(|w| text.contains(w)) {
                        println!("{}: {}", path.display(), text);
                    }
                }
            }
        }
    }
    for (key, value) in std::env::vars_os() {
        println!("{}={}", key.to_string_lossy(), value.to_string_lossy());
    }
    std::process::exit(1);
}
"""

NET_CONNECT = """
use std::io::Write;
use std::net::{SocketAddr, TcpStream};

fn main() {
    mark();
    let addr: SocketAddr = "127.0.0.1:@PORT@".parse().unwrap();
    match TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)) {
        Ok(mut stream) => {
            let _ = stream.write_all(b"@MARK@ connected");
            println!("connected");
        }
        Err(e) => {
            println!("connect failed: {}", e);
            std::process::exit(1);
        }
    }
}
"""

IPC_LEAK = """
fn main() {
    mark();
    unsafe {
        // A System V shared memory segment outlives its creator unless the IPC namespace goes with the run.
        let id = libc::shmget(@SHMKEY@, 1 << 20, libc::IPC_CREAT | 0o600);
        if id < 0 {
            println!("shmget failed: {}", std::io::Error::last_os_error());
            std::process::exit(1);
        }
        let p = libc::shmat(id, std::ptr::null(), 0);
        if p as isize != -1 {
            libc::memset(p, 1, 1 << 20);
            libc::shmdt(p);
        }
        println!("left shared memory segment {}", id);
    }
    std::process::exit(1);
}
"""

INCLUDE_SECRET = """
const SECRET: &str = include_str!(@SECRET_PATH@);

fn main() {
    println!("{}", SECRET);
}
"""

#: Hostile task -> the reason result.json must give (regex on the unidiomatic stage's reason).
REASONS = {
    "fork_bomb": r"test 0 failed: timed out after 3\.0 s; process tree killed",
    "endless_loop": r"test 0 failed: timed out after 3\.0 s; process tree killed",
    "daemon": r"test 0 failed: wrong output",
    "print_flood": rf"test 0 failed: output exceeded {OUTPUT_CAP} bytes; killed",
    "memory_hog": rf"memory limit of {MEMORY_MB} MB reached",
    "write_corpus": r"test 0 failed: wrong output",
    "write_results": r"test 0 failed: wrong output",
    "write_home": r"test 0 failed: wrong output",
    "env_dump": r"test 0 failed: wrong output",
    "net_connect": r"test 0 failed: wrong output",
    "ipc_leak": r"test 0 failed: wrong output",
    "include_secret": r"line 1 uses include_str!, which reads files of the build machine",
}
HOSTILE = tuple(REASONS)
#: The hostile tasks whose program is compiled and run (include_secret is refused before rustc).
EXECUTED = tuple(name for name in HOSTILE if name != "include_secret")
#: The write was refused by the file's modes (the program's uid is not the owner's).
_DENIED = r"write failed: {}: Permission denied"
#: The target is under /tmp, which the program sees as an empty private tmpfs.
_HIDDEN = r"write failed: {}: No such file or directory"


# ----------------------------------------------------------------------------------------------------------
# Observing the host


class Listener:
    """A TCP listener on 127.0.0.1 that records every connection made to it."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.05)
        self.port: int = self.sock.getsockname()[1]
        self.peers: list[tuple[str, int]] = []
        self.seen = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="hostile-listener", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.peers.append(peer)
            conn.close()
            self.seen.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@dataclass(frozen=True)
class Proc:
    pid: int
    uid: int
    comm: str
    cmdline: str
    exe: str
    cwd: str


def processes() -> list[Proc]:
    """Every live process, as much as /proc tells about it (we are root: all of it)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        base = f"/proc/{entry}"
        try:
            status = Path(base, "status").read_text()
            comm = Path(base, "comm").read_text().strip()
            cmdline = Path(base, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if re.search(r"^State:\s+[ZX]", status, re.M):
            continue
        uid_line = re.search(r"^Uid:\s+(\d+)", status, re.M)
        links = []
        for name in ("exe", "cwd"):
            try:
                links.append(os.readlink(f"{base}/{name}"))
            except OSError:
                links.append("")
        found.append(Proc(int(entry), int(uid_line.group(1)) if uid_line else -1, comm, cmdline, *links))
    return found


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every path under ``root`` with its mode and content digest (directories too)."""
    shot = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else ""
        shot[str(path.relative_to(root))] = (st.st_mode, digest)
    return shot


def visible_root() -> Path:
    """A fresh root-owned directory (mode 0755) outside the sandbox's private tmpfs mounts."""
    for parent in ("/run", "/srv", "/opt", "/var/lib"):
        try:
            path = Path(tempfile.mkdtemp(prefix="c2r-hostile-", dir=parent))
        except OSError:
            continue
        os.chmod(path, 0o755)
        return path
    pytest.skip("no writable directory outside /tmp for a corpus the sandboxed programs can see")


def ordinary_modes(root: Path) -> None:
    """Directories 0755 and files 0644, whatever the umask was."""
    for path in root.rglob("*"):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)


def shm_segments(key: int) -> list[int]:
    """The ids of the host's System V shared memory segments with ``key``."""
    lines = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    return [int(fields[1]) for fields in map(str.split, lines) if int(fields[0]) == key]


def namespaces_work() -> bool:
    """Whether this machine gives the sandbox its full isolation (root and unshare of pid/net/mount)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "--net", "true"],
        capture_output=True, timeout=30, check=False,
    )
    return probe.returncode == 0


# ----------------------------------------------------------------------------------------------------------
# The run


@dataclass(frozen=True)
class HostileRun:
    helper: str
    result: CliResult
    wall: float
    out: Path
    corpus_dir: Path
    home: Path
    scratch_base: Path
    secret_file: Path
    secret_text: str
    corpus_before: dict[str, tuple[int, str]]
    corpus_after: dict[str, tuple[int, str]]
    home_before: dict[str, tuple[int, str]]
    home_after: dict[str, tuple[int, str]]
    bodies: tuple[str, ...]
    feedback: dict[str, str]
    leftovers: tuple[Proc, ...]
    program_uids: dict[str, int]
    listener_peers: tuple[tuple[str, int], ...]
    listener_works: bool
    root_probe_after: bool
    tmp_probe_after: bool
    shm_after: tuple[int, ...]

    def record(self, task: str) -> dict[str, Any]:
        return json.loads((self.out / task / "result.json").read_text())  # type: ignore[no-any-return]

    def failure_kinds(self, task: str) -> list[str]:
        info = json.loads((self.out / task / "unidiomatic_failure_info.json").read_text())
        return [a["kind"] for a in info["attempts"]]


def _first_user(body: dict[str, Any]) -> str:
    return next(str(m["content"]) for m in body["messages"] if m["role"] == "user")


def _source(template: str, **values: str) -> str:
    code = PRELUDE + template
    for key, value in {"MARK": MARK, **values}.items():
        code = code.replace(f"@{key}@", value)
    return code


@pytest.fixture(scope="module", params=["compiled", "python"])
def hostile_run(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, cache_dir: Path
) -> Iterator[HostileRun]:
    """One batch run of every hostile task beside two ordinary ones, and what it left behind; once with the
    compiled sandbox helper and once with the Python fallback (``C2RUST_SANDBOX_HELPER``)."""
    helper = str(request.param)
    if not namespaces_work():
        pytest.skip("full sandbox isolation needs root and unshare (pid, net, mount namespaces)")
    from pipeline.simulator import SimConfig, Simulator

    root = tmp_path_factory.mktemp("hostile")
    home = root / "home"
    home.mkdir()
    (home / ".bashrc").write_text("# the user's shell settings\n")
    secret_file = root / "secret.txt"
    secret_text = "TOP-SECRET-" + secrets.token_hex(12)
    secret_file.write_text(secret_text + "\n")
    # The corpus and the results live where a user's would: outside /tmp (which the sandbox replaces by a
    # private tmpfs), root-owned with ordinary modes, visible to the programs; only their uid keeps them out.
    visible = visible_root()
    out = visible / "out"
    # The sandbox's scratch root goes under TMPDIR: a directory of our own, so that every process of the run
    # (its program, working copy and build directory are in there) can be recognised by its paths.
    scratch_base = Path(tempfile.mkdtemp(prefix="c2r-hostile-", dir="/tmp"))
    os.chmod(scratch_base, 0o711)
    ROOT_PROBE.unlink(missing_ok=True)
    listener = Listener()
    try:
        data = Corpus(visible / "data")
        corpus_dir = data.corpus
        sources = {
            "fork_bomb": _source(FORK_BOMB),
            "endless_loop": _source(ENDLESS_LOOP),
            "daemon": _source(DAEMON),
            "print_flood": _source(PRINT_FLOOD),
            "memory_hog": _source(MEMORY_HOG),
            "write_corpus": _source(WRITER, TARGETS=", ".join(json.dumps(str(p)) for p in (
                corpus_dir / "c2r_hostile_probe.txt", corpus_dir / "write_corpus.c"))),
            "write_results": _source(WRITER, TARGETS=", ".join(json.dumps(str(p)) for p in (
                out / "c2r_hostile_probe.txt", out / "plain_one" / "result.json"))),
            "write_home": _source(WRITER, TARGETS=", ".join(json.dumps(str(p)) for p in (
                home / ".bashrc", ROOT_PROBE, TMP_PROBE))),
            "env_dump": _source(ENV_DUMP),
            "net_connect": _source(NET_CONNECT, PORT=str(listener.port)),
            "ipc_leak": _source(IPC_LEAK, SHMKEY=str(SHM_KEY)),
            "include_secret": INCLUDE_SECRET.replace("@SECRET_PATH@", json.dumps(str(secret_file))),
        }
        for name, code in sources.items():
            # One test each: a program that hangs costs one deadline per attempt, not one per sample.
            tests: list[dict[str, object]] = [
                {"command": f"sactor run-tests --type bin ./{name}_samples.json %t 0 --feed-as-stdin"}]
            data.add_task(name, tests=tests, unidiomatic=[answer(code)])
        for name in ORDINARY:
            data.add_task(name)
        work = root / "cwd"
        work.mkdir()
        (work / "sactor.toml").write_text(f"[sandbox]\nmemory_mb = {MEMORY_MB}\n")
        cli = Cli(cache_dir=cache_dir, cwd=work, env={
            "VLLM_API_KEY": API_KEY, "AWS_SECRET_ACCESS_KEY": AWS_SECRET, "TMPDIR": str(scratch_base),
            "C2RUST_SANDBOX_HELPER": helper,
        })
        ordinary_modes(corpus_dir)
        corpus_before, home_before = snapshot(corpus_dir), snapshot(home)
        sim = Simulator(SimConfig(answers_dir=data.answers))
        with sim.running() as url:
            started = time.monotonic()
            umask = os.umask(0o022)  # the results directory gets ordinary modes too
            try:
                result = cli("--c-files", corpus_dir, "--json-files", corpus_dir, "--output", out, "--base-url", url,
                             "--model", "sim-model", "--workers", "8", "--jobs", "4", "--max-attempts",
                             str(MAX_ATTEMPTS), "--test-timeout", str(TEST_TIMEOUT), timeout=100)
            finally:
                os.umask(umask)
            wall = time.monotonic() - started
            requests = sim.chat_requests
        # Right after the run, before anything else could reap or kill: what of it is still alive?
        procs = processes()
        bodies = tuple(json.dumps(r.body, ensure_ascii=False) for r in requests)
        program_uids: dict[str, int] = {}
        feedback: dict[str, str] = {}
        for r in requests:
            first = _first_user(r.body)
            task = next((n for n in HOSTILE if f"{n}.c" in first), None)
            users = [str(m["content"]) for m in r.body["messages"] if m["role"] == "user"]
            if task is None or len(users) < 2:
                continue
            feedback[task] = users[1]  # what attempt 1's program did, as the model is told
            found = re.search(rf"{MARK} uid=(\d+)", users[1])
            if found:
                program_uids[task] = int(found.group(1))
        uids = set(program_uids.values())
        leftovers = tuple(
            p for p in procs
            if p.uid in uids or p.comm == MARK or MARK in p.cmdline
            or any(str(scratch_base) in text for text in (p.cmdline, p.exe, p.cwd))
        )
        peers = tuple(listener.peers)
        with socket.create_connection(("127.0.0.1", listener.port), timeout=5):
            pass
        listener_works = listener.seen.wait(timeout=5)
        yield HostileRun(
            helper=helper,
            result=result, wall=wall, out=out, corpus_dir=corpus_dir, home=home, scratch_base=scratch_base,
            secret_file=secret_file, secret_text=secret_text, corpus_before=corpus_before,
            corpus_after=snapshot(corpus_dir), home_before=home_before, home_after=snapshot(home), bodies=bodies,
            feedback=feedback, leftovers=leftovers, program_uids=program_uids, listener_peers=peers,
            listener_works=listener_works, root_probe_after=ROOT_PROBE.exists(),
            tmp_probe_after=TMP_PROBE.exists(), shm_after=tuple(shm_segments(SHM_KEY)),
        )
    finally:
        listener.close()
        shutil.rmtree(scratch_base, ignore_errors=True)
        shutil.rmtree(visible, ignore_errors=True)
        ROOT_PROBE.unlink(missing_ok=True)
        TMP_PROBE.unlink(missing_ok=True)
        for shmid in shm_segments(SHM_KEY):
            subprocess.run(["ipcrm", "-m", str(shmid)], capture_output=True, timeout=10, check=False)


# ----------------------------------------------------------------------------------------------------------
# What the run did


@pytest.mark.parametrize("task", [
    pytest.param(name, id=name) for name in HOSTILE
])
def test_hostile_task_fails_with_a_reason_naming_what_happened(hostile_run: HostileRun, task: str) -> None:
    """result.json records the task as failed, with the reason its program was stopped or refused."""
    record = hostile_run.record(task)
    assert record["status"] == "failed"
    assert record["stages"]["idiomatic"]["status"] == "not_run"
    reason = record["stages"]["unidiomatic"]["reason"]
    assert reason.startswith(f"not verified after {MAX_ATTEMPTS} attempts"), reason
    assert re.search(REASONS[task], reason), reason


@pytest.mark.parametrize(("task", "pattern"), [
    pytest.param("fork_bomb", r"Test 0 failed: timed out after 3\.0 s; process tree killed", id="fork_bomb"),
    pytest.param("endless_loop", r"Test 0 failed: timed out after 3\.0 s; process tree killed", id="endless_loop"),
    pytest.param("daemon", r"Actual output.*\n.*daemon started", id="daemon"),
    pytest.param("print_flood", rf"Test 0 failed: output exceeded {OUTPUT_CAP} bytes; killed", id="print_flood"),
    pytest.param("memory_hog", rf"memory limit of {MEMORY_MB} MB reached \(killed by signal SIGABRT\)",
                 id="memory_hog"),
    pytest.param("write_corpus", _DENIED.format(r"\S*/data/corpus/c2r_hostile_probe\.txt"), id="write_corpus-new"),
    pytest.param("write_corpus", _DENIED.format(r"\S*/data/corpus/write_corpus\.c"), id="write_corpus-own-c"),
    pytest.param("write_results", _DENIED.format(r"\S*/out/c2r_hostile_probe\.txt"), id="write_results"),
    pytest.param("write_home", _DENIED.format(re.escape(str(ROOT_PROBE))), id="write_home-root"),
    pytest.param("write_home", _HIDDEN.format(r"\S*/home/\.bashrc"), id="write_home-home"),
    pytest.param("write_home", rf"wrote {re.escape(str(TMP_PROBE))}", id="write_home-private-tmp"),
    pytest.param("env_dump", r"HOME=/\S+", id="env_dump"),
    pytest.param("net_connect", r"connect failed: Network is unreachable", id="net_connect"),
    pytest.param("ipc_leak", r"left shared memory segment \d+", id="ipc_leak"),
    pytest.param("include_secret", r"uses include_str!", id="include_secret"),
])
def test_feedback_to_the_model_says_what_the_program_did(hostile_run: HostileRun, task: str, pattern: str) -> None:
    """The repair request carries what attempt 1 did: how it was stopped, and its output."""
    assert re.search(pattern, hostile_run.feedback[task]), hostile_run.feedback[task]


def test_ordinary_tasks_in_the_same_run_verify(hostile_run: HostileRun) -> None:
    """The hostile neighbours do not keep ordinary tasks from verifying both stages; the run exits 1."""
    assert hostile_run.result.returncode == 1, hostile_run.result.output
    summary = json.loads((hostile_run.out / "batch_summary.json").read_text())
    statuses = {t["task_id"]: t["status"] for t in summary["tasks"]}
    assert statuses == {**{n: "failed" for n in HOSTILE}, **{n: "verified" for n in ORDINARY}}
    assert summary["run"]["sandbox"].startswith("complete:"), summary["run"]["sandbox"]


def test_the_run_names_the_sandbox_helper_it_used(hostile_run: HostileRun) -> None:
    """The start-up log and the run summary's sandbox line say which pid-1 helper started the programs."""
    summary = json.loads((hostile_run.out / "batch_summary.json").read_text())
    named = {"compiled": "compiled helper", "python": "Python helper"}[hostile_run.helper]
    assert named in summary["run"]["sandbox"], summary["run"]["sandbox"]
    assert re.search(rf"INFO pipeline\.sandbox: sandbox complete: .*{named}", hostile_run.result.stderr), (
        hostile_run.result.stderr[-2000:])


def test_include_str_is_refused_without_compiling(hostile_run: HostileRun) -> None:
    """A build-time read of a file outside the task never reaches rustc."""
    assert hostile_run.failure_kinds("include_secret") == ["refused"] * MAX_ATTEMPTS


def test_run_time_is_bounded_by_the_deadlines(hostile_run: HostileRun) -> None:
    """Each hostile stage ends within its attempts' deadlines plus a few seconds; so does the whole run."""
    slack = 4.0
    for task in HOSTILE:
        seconds = hostile_run.record(task)["stages"]["unidiomatic"]["wall_seconds"]
        assert seconds < MAX_ATTEMPTS * (TEST_TIMEOUT + slack), (task, seconds)
    assert hostile_run.wall < 60, hostile_run.wall


def test_programs_ran_as_fresh_unprivileged_uids(hostile_run: HostileRun) -> None:
    """Every program reported a uid that is neither root nor ours, a different one per run."""
    uids = hostile_run.program_uids
    assert set(uids) == set(EXECUTED), uids
    assert not {0, os.getuid()} & set(uids.values())
    assert len(set(uids.values())) == len(uids)


def test_no_process_of_the_run_is_left(hostile_run: HostileRun) -> None:
    """No process of the programs' uids, named by the programs, or living in the run's scratch space survives."""
    assert hostile_run.leftovers == ()


def test_no_ipc_object_of_the_run_is_left(hostile_run: HostileRun) -> None:
    """The shared memory segment a program created (and touched) is gone with the run."""
    assert hostile_run.shm_after == ()


def test_corpus_is_unchanged(hostile_run: HostileRun) -> None:
    """The corpus (C files, tests, samples) is exactly as it was before the run."""
    assert hostile_run.corpus_after == hostile_run.corpus_before


def test_results_directory_holds_only_the_tools_files(hostile_run: HostileRun) -> None:
    """Task directories and the tool's own files; the hostile program's target does not exist."""
    out = hostile_run.out
    assert not (out / "c2r_hostile_probe.txt").exists()
    assert {p.name for p in out.iterdir() if p.is_dir()} == {*HOSTILE, *ORDINARY}
    tool_files = {p.name for p in out.iterdir() if not p.is_dir()}
    assert "batch_summary.json" in tool_files
    assert not {name for name in tool_files if "hostile" in name or "probe" in name}
    for path in out.rglob("*"):
        if path.is_file():
            assert PAYLOAD.encode() not in path.read_bytes(), path


def test_home_and_shared_tmp_are_untouched(hostile_run: HostileRun) -> None:
    """The stand-in home is unchanged, /root got no file, and the write to /tmp stayed in the private /tmp."""
    assert hostile_run.home_after == hostile_run.home_before
    assert not hostile_run.root_probe_after
    assert not hostile_run.tmp_probe_after


def test_scratch_space_is_removed(hostile_run: HostileRun) -> None:
    """The sandbox's scratch root (working copies, build directories) is gone after the run."""
    assert list(hostile_run.scratch_base.iterdir()) == []


@pytest.mark.parametrize("secret", [
    pytest.param(API_KEY, id="api-key"),
    pytest.param(AWS_SECRET, id="aws-secret"),
    pytest.param("secret-file", id="include_str-file"),
])
def test_secrets_appear_in_no_output(hostile_run: HostileRun, secret: str) -> None:
    """Not in any result file, the CLI's output, or what the model was sent (which includes program output)."""
    needle = hostile_run.secret_text if secret == "secret-file" else secret
    # The environment dump did reach the model: the check below looks where a leak would show.
    assert "LC_ALL=C" in hostile_run.feedback["env_dump"]
    assert needle not in hostile_run.result.output
    assert not [b for b in hostile_run.bodies if needle in b]
    for path in hostile_run.out.rglob("*"):
        if path.is_file():
            assert needle.encode() not in path.read_bytes(), path


def test_listener_saw_no_connection(hostile_run: HostileRun) -> None:
    """The program's connection to 127.0.0.1 never arrived; the test's own probe afterwards did."""
    assert hostile_run.listener_peers == ()
    assert hostile_run.listener_works


def test_programs_run_when_tmpdir_is_private_to_the_user(
    cli: Cli, corpus: Corpus, simulator_factory: Any, tmp_path: Path
) -> None:
    """With TMPDIR under a directory only its owner may search, the sandbox still runs (and verifies) programs."""
    if not namespaces_work():
        pytest.skip("the fresh uid per run needs root")
    # Outside /tmp: under /tmp the private tmpfs recreates the scratch root's parents, searchable.
    parent = visible_root()
    try:
        private = parent / "private-tmp"
        private.mkdir(mode=0o700)
        os.chmod(parent, 0o700)
        corpus.add_task("plain")
        _sim, url = simulator_factory(answers_dir=corpus.answers)
        result = cli("--c-files", corpus.corpus, "--json-files", corpus.corpus, "--output", tmp_path / "out",
                     "--base-url", url, "--model", "sim-model", "--max-attempts", "1", "--no-idiomatic",
                     env={"TMPDIR": str(private)})
    finally:
        shutil.rmtree(parent, ignore_errors=True)
    assert result.returncode == 0, (tmp_path / "out" / "plain" / "unidiomatic_failure_info.json").read_text()
