"""Specification of pipeline.sandbox: untrusted programs run under limits, alone, and leave nothing behind.

Each hostile behaviour is a shell or Python one-liner run through the real sandbox (no mocks). Leftover
processes are found the way an operator would: by a unique token in their command line (``sleep 9876.<n>``)
and, where the run had a uid of its own, by that uid.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import anyio
import pytest

import pipeline.sandbox
from pipeline import sandbox_helper
from pipeline.config import SandboxSettings, ToolchainSettings
from pipeline.errors import ConfigError
from pipeline.sandbox import MARKER_VAR, Limits, ProcessResult, Sandbox, run_process

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux-only")

PYTHON3 = "/usr/bin/python3"  # the system Python: readable by the sandbox's uids, unlike a pyenv under /root
needs_python3 = pytest.mark.skipif(not Path(PYTHON3).exists(), reason="needs /usr/bin/python3")
IS_ROOT = os.geteuid() == 0
ROOT = Path(__file__).resolve().parents[1]


#: The pid-1 helper every test of this file runs with, set by the ``helper`` fixture: each test runs twice,
#: with the compiled helper and with the Python fallback (``-k compiled`` or ``-k python`` picks one).
_helper = "auto"


@pytest.fixture(autouse=True, params=["compiled", "python"])
def helper(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    kind = str(request.param)
    monkeypatch.setattr(sys.modules[__name__], "_helper", kind)
    # Trusted tools (run_process) use the helper of the last Sandbox.open; these tests may open none.
    chosen = sandbox_helper.choose(kind, ToolchainSettings().resolved_cache_dir())
    monkeypatch.setattr(pipeline.sandbox, "_tool_helper", chosen)
    return kind


def settings(**kw: object) -> SandboxSettings:
    """The sandbox settings of a test, with the helper of this round."""
    return SandboxSettings(helper=_helper, **kw)  # type: ignore[arg-type]


def limits(wall: float = 10.0, **kw: int) -> Limits:
    return Limits(wall_seconds=wall, **{"output_bytes": 100_000, **kw})


def sleeper() -> tuple[str, str]:
    """A sleep command whose command line is unique: (command, token to look for in /proc)."""
    token = f"9876.{secrets.randbelow(10**8):08d}"
    return f"sleep {token}", token


def processes_with(token: str | None = None, uid: int | None = None) -> list[int]:
    """Live processes whose command line contains ``token`` or whose real uid is ``uid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("State", "").strip().startswith(("Z", "X")):
            continue
        if (token and token in cmdline) or (uid is not None and fields.get("Uid", "").split()[:1] == [str(uid)]):
            found.append(int(entry))
    return found


async def wait_for(predicate: Callable[[], object], seconds: float = 5.0) -> None:
    """Poll ``predicate()`` until it is true, failing after ``seconds`` (the state is another process's)."""
    with anyio.fail_after(seconds):
        while not predicate():  # noqa: ASYNC110
            await anyio.sleep(0.02)


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox.open(settings()) as sb:
        yield sb


@pytest.fixture
async def fallback() -> AsyncIterator[Sandbox]:
    """The sandbox as it is without namespaces or a separate uid (the non-root fallback)."""
    async with Sandbox.open(settings(), namespaces=False) as sb:
        yield sb


async def run_sh(sb: Sandbox, script: str, *args: str, lim: Limits | None = None, **kw: object) -> ProcessResult:
    async with sb.workdir() as wd:
        return await sb.run(["sh", "-c", script, "sh", *args], cwd=wd, limits=lim or limits(), **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------
# What is in force


async def test_isolation_is_complete_when_running_as_root(sandbox: Sandbox) -> None:
    """As root, the probe finds PID, network and mount namespaces, a separate uid and rlimits."""
    iso = sandbox.isolation
    if IS_ROOT:
        assert iso.complete, iso.describe()
        assert iso.describe().startswith("complete")
    else:
        assert not iso.complete
        assert "separate unprivileged uid" in iso.describe()


async def test_fallback_isolation_says_what_is_missing(fallback: Sandbox) -> None:
    """Without namespaces the sandbox still runs, and says what it lacks."""
    iso = fallback.isolation
    assert not iso.complete
    assert iso.rlimits
    assert "missing PID namespace, network namespace" in iso.describe()
    result = await run_sh(fallback, "echo hi")
    assert result.ok and result.stdout == b"hi\n"


async def test_strict_sandbox_refuses_incomplete_isolation() -> None:
    """[sandbox] strict = true with missing isolation stops the run with the fix in the message."""
    with pytest.raises(ConfigError, match=r"strict = true.*missing PID namespace.*strict = false"):
        async with Sandbox.open(settings(strict=True), namespaces=False):
            pass


@pytest.mark.skipif(not IS_ROOT, reason="complete isolation needs root")
async def test_strict_sandbox_opens_when_isolation_is_complete() -> None:
    """Strict mode is no obstacle where everything is in force."""
    async with Sandbox.open(settings(strict=True)) as sb:
        assert sb.isolation.complete


def the_sleeper(token: str) -> int | None:
    """The running ``sleep`` of a :func:`sleeper` token (not the wrappers whose command lines name it)."""
    for pid in processes_with(token=token):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == "sleep":
                return pid
    return None


def parent_chain(pid: int) -> list[str]:
    """The command names of ``pid``'s ancestors, from its parent up to (not including) this test process."""
    names = []
    while True:
        try:
            fields = dict(
                line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
            )
        except OSError:
            return names
        pid = int(fields["PPid"])
        if pid in (0, os.getpid()):
            return names
        names.append(Path(f"/proc/{pid}/comm").read_text().strip())


#: Run by a program inside the sandbox: its pid, then each interface with its IFF_UP flag, then it sleeps.
_INSIDE = """
import fcntl, os, socket, struct, sys
print(os.getpid())
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for line in open("/proc/net/dev").read().splitlines()[2:]:
    name = line.split(":")[0].strip()
    flags = struct.unpack("16sH", fcntl.ioctl(s.fileno(), 0x8913, struct.pack("256s", name.encode())[:18]))[1]
    print(name, "up" if flags & 1 else "down")
sys.stdout.flush()
os.execvp("sleep", ["sleep", sys.argv[1]])
"""


@needs_python3
@pytest.mark.skipif(not IS_ROOT, reason="namespaces with a separate uid need root")
async def test_as_root_a_running_program_has_no_unshare_or_setpriv_above_it(helper: str) -> None:
    """With the compiled helper as root, no setpriv or unshare process is in a running program's parent chain
    (the helper makes the namespaces itself, #16); the program is still pid 2 of its PID namespace and sees only
    a loopback that is down. The Python helper keeps the unshare chain."""
    _, token = sleeper()
    seen: list[ProcessResult] = []
    async with Sandbox.open(settings()) as sb, sb.workdir() as wd:
        async with anyio.create_task_group() as tg:
            async def run() -> None:
                seen.append(await sb.run([PYTHON3, "-c", _INSIDE, token], cwd=wd, limits=limits(wall=5.0)))

            tg.start_soon(run)
            await wait_for(lambda: the_sleeper(token))
            chain = parent_chain(the_sleeper(token) or 0)
            tg.cancel_scope.cancel()
        described = sb.isolation.describe()
    assert processes_with(token=token) == []
    assert not seen  # cancelled while the program ran
    if helper == "compiled":
        assert "namespaces made by the compiled helper" in described, described
        assert not {"unshare", "setpriv"} & set(chain), chain
        assert chain[0].startswith("sandbox-helper") and len(chain) == 2, chain  # pid 1, then the waiting one
    else:
        assert "namespaces made by unshare" in described, described
        assert "unshare" in chain, chain


@needs_python3
@pytest.mark.skipif(not IS_ROOT, reason="namespaces with a separate uid need root")
async def test_the_program_is_pid_2_with_only_a_loopback_that_is_down(sandbox: Sandbox) -> None:
    code = _INSIDE.replace('os.execvp("sleep", ["sleep", sys.argv[1]])', "")
    async with sandbox.workdir() as wd:
        result = await sandbox.run([PYTHON3, "-c", code, "0"], cwd=wd, limits=limits())
    assert result.ok, result.describe() + result.stderr.decode()
    assert result.stdout.decode().split("\n") == ["2", "lo down", ""]


_KILLED_PARENT = """
import sys
import anyio
from pipeline.config import SandboxSettings
from pipeline.sandbox import Limits, Sandbox

async def main() -> None:
    async with Sandbox.open(SandboxSettings(helper=sys.argv[1])) as sb, sb.workdir() as wd:
        print(sb.isolation.describe(), flush=True)
        await sb.run(["sh", "-c", sys.argv[2]], cwd=wd, limits=Limits(wall_seconds=60))

anyio.run(main)
"""


@pytest.mark.skipif(not IS_ROOT, reason="namespaces with a separate uid need root")
async def test_sigkill_of_the_process_that_started_the_helper_takes_the_program_down(helper: str) -> None:
    """A CLI killed with SIGKILL (no cleanup) leaves no sandboxed program behind: the helper's parent-death
    signal, then its pid 1's, end the namespace (setpriv --pdeathsig and unshare --kill-child did that before)."""
    command, token = sleeper()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    async with await anyio.open_process(
        [sys.executable, "-c", _KILLED_PARENT, _helper, command], env=env, start_new_session=True
    ) as parent:
        try:
            await wait_for(lambda: the_sleeper(token), seconds=20)
            chain = parent_chain(the_sleeper(token) or 0)
            os.kill(parent.pid, signal.SIGKILL)
            await parent.wait()
            await wait_for(lambda: not processes_with(token=token), seconds=5)
        finally:
            with contextlib.suppress(ProcessLookupError):
                parent.kill()
            for pid in processes_with(token=token):
                os.kill(pid, signal.SIGKILL)
    if helper == "compiled":
        assert not {"unshare", "setpriv"} & set(chain), chain


@pytest.mark.skipif(not IS_ROOT, reason="namespaces with a separate uid need root")
async def test_a_helper_refused_its_namespaces_falls_back_to_unshare_with_a_note(
    helper: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the kernel refuses the compiled helper its namespaces (EPERM in a container; here: a flag it does
    not know), the probe starts it under unshare instead, and Isolation says so."""
    if helper != "compiled":
        pytest.skip("only the compiled helper makes namespaces itself")
    monkeypatch.setitem(sandbox_helper.CLONE_FLAGS, "ipc", sandbox_helper.CLONE_FLAGS["ipc"] | 1)
    command, token = sleeper()
    async with Sandbox.open(settings()) as sb, sb.workdir() as wd:
        iso = sb.isolation
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: sb.run(["sh", "-c", command], cwd=wd, limits=limits(wall=5.0)))
            await wait_for(lambda: the_sleeper(token))
            chain = parent_chain(the_sleeper(token) or 0)
            tg.cancel_scope.cancel()
    assert iso.complete, iso.describe()
    assert (
        "namespaces by the compiled helper refused: sandbox-helper: cannot make the namespaces: unshare: "
        "Invalid argument" in iso.notes
    ), iso.notes
    assert "namespaces made by unshare" in iso.describe()
    assert "unshare" in chain, chain


_PROBE = """
import json, sys
import anyio
from pipeline.config import SandboxSettings
from pipeline.sandbox import Sandbox

async def main() -> None:
    async with Sandbox.open(SandboxSettings(helper=sys.argv[1])) as sb:
        print(json.dumps({"missing": sb.isolation.missing(), "notes": sb.isolation.notes}))

anyio.run(main)
"""


@pytest.mark.skipif(not IS_ROOT or shutil.which("setpriv") is None, reason="needs root and setpriv")
async def test_without_cap_sys_admin_the_refusal_is_named_and_the_uid_still_changes(helper: str) -> None:
    """As root in a container without CAP_SYS_ADMIN (here: dropped from the bounding set), the kernel refuses the
    compiled helper its namespaces (EPERM), then unshare; the sandbox runs in "uid only" mode and says why."""
    if helper != "compiled":
        pytest.skip("only the compiled helper makes namespaces itself")
    done = await anyio.run_process(
        ["setpriv", "--bounding-set", "-sys_admin", "--inh-caps", "-sys_admin", sys.executable, "-c", _PROBE, _helper],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    found = json.loads(done.stdout)
    assert found["missing"] == ["PID namespace", "network namespace", "mount namespace with private /tmp"], found
    helper_note, chain_note = found["notes"][:2]
    assert helper_note == (
        "namespaces by the compiled helper refused: sandbox-helper: cannot make the namespaces: unshare: "
        "Operation not permitted"
    ), found
    assert chain_note.startswith("namespaces refused: unshare: ") and "Operation not permitted" in chain_note, found


# ---------------------------------------------------------------------------------------------------------
# Ordinary results


@pytest.mark.parametrize(
    ("script", "stdin", "returncode", "sig", "stdout", "described"),
    [
        pytest.param("exit 3", None, 3, None, b"", "exit status 3", id="exit-status"),
        pytest.param("kill -SEGV $$", None, None, signal.SIGSEGV, b"", "killed by signal SIGSEGV", id="signal"),
        pytest.param("cat", b"hello\n", 0, None, b"hello\n", "exit status 0", id="stdin-to-stdout"),
        pytest.param("head -c 3", b"x" * 1_000_000, 0, None, b"xxx", "exit status 0", id="unread-stdin"),
        pytest.param("nonexistent-cmd-xyz", None, 127, None, b"", "exit status 127", id="missing-command"),
    ],
)
async def test_run_reports_how_the_program_ended(
    sandbox: Sandbox, script: str, stdin: bytes | None, returncode: int | None, sig: int | None, stdout: bytes,
    described: str,
) -> None:
    """Exit status, signal, stdin and stdout come through as the program produced them."""
    result = await run_sh(sandbox, script, stdin=stdin)
    assert (result.returncode, result.signal, result.stdout) == (returncode, sig, stdout)
    assert result.describe() == described
    assert result.ok == (returncode == 0)
    assert not result.timed_out and not result.output_exceeded
    assert result.cpu_seconds is not None


# ---------------------------------------------------------------------------------------------------------
# Hostile programs


async def test_endless_loop_times_out(sandbox: Sandbox) -> None:
    """A program that never ends is killed at the wall deadline."""
    started = time.monotonic()
    result = await run_sh(sandbox, "while :; do :; done", lim=limits(wall=1.0))
    assert result.timed_out and not result.ok
    assert result.describe() == "timed out after 1.0 s; process tree killed"
    assert 1.0 <= time.monotonic() - started < 4.0


async def test_cpu_limit_stops_a_busy_program(sandbox: Sandbox) -> None:
    """RLIMIT_CPU ends a busy program before the wall deadline, with SIGXCPU."""
    result = await run_sh(sandbox, "while :; do :; done", lim=limits(wall=20.0, cpu_seconds=1))
    assert not result.timed_out
    assert result.signal == signal.SIGXCPU
    assert result.wall_seconds < 10.0
    assert result.describe() == "CPU time limit of 1 s exceeded (killed by signal SIGXCPU)"


async def test_fork_bomb_ends_and_leaves_no_process(sandbox: Sandbox) -> None:
    """A fork bomb hits the process limit, is killed with its tree, and does not starve a concurrent run."""
    bomb = "id -u; b() { b | b & }; b; while :; do :; done"
    outcome: dict[str, ProcessResult] = {}

    async def run(name: str, script: str, lim: Limits) -> None:
        outcome[name] = await run_sh(sandbox, script, lim=lim)

    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(run, "bomb", bomb, limits(wall=2.0, processes=32, output_bytes=1_000_000))
        await anyio.sleep(0.3)
        tg.start_soon(run, "neighbour", "echo still here", limits(wall=10.0))
    assert time.monotonic() - started < 2.0 + 4.0
    assert not outcome["bomb"].ok
    assert outcome["neighbour"].ok and outcome["neighbour"].stdout == b"still here\n"
    uid_line = outcome["bomb"].stdout.split(b"\n", 1)[0]
    if sandbox.isolation.unprivileged and uid_line.isdigit():
        assert processes_with(uid=int(uid_line)) == []


@pytest.mark.parametrize("namespaces", [pytest.param(True, id="namespaces"), pytest.param(False, id="fallback")])
@pytest.mark.parametrize(
    "how",
    [
        pytest.param('setsid sh -c "exec {sleep}" </dev/null >/dev/null 2>&1 &', id="setsid-detached"),
        pytest.param('( setsid sh -c "exec {sleep}" & ) ', id="double-fork-holding-pipes"),
    ],
)
async def test_daemonised_child_is_gone_after_the_run(namespaces: bool, how: str) -> None:
    """A child that escapes into its own session is killed when the run ends, with or without namespaces."""
    command, token = sleeper()
    script = "id -u\n" + how.format(sleep=command) + "\necho started"
    async with Sandbox.open(settings(), namespaces=namespaces) as sb:
        result = await run_sh(sb, script)
        assert result.ok, result.describe()
        assert result.stdout.endswith(b"started\n")
        assert result.wall_seconds < 5.0  # did not wait for the daemon
        assert processes_with(token=token) == []
        uid = int(result.stdout.split()[0])
        if sb.isolation.unprivileged:
            assert uid != os.geteuid()
            assert processes_with(uid=uid) == []


@pytest.mark.parametrize("stream", [pytest.param("stdout", id="stdout"), pytest.param("stderr", id="stderr")])
async def test_endless_output_is_capped(sandbox: Sandbox, stream: str) -> None:
    """Endless output kills the program once past the cap; at most the cap is kept."""
    script = "yes" if stream == "stdout" else "yes >&2"
    result = await run_sh(sandbox, script, lim=limits(wall=10.0, output_bytes=10_000))
    assert result.output_exceeded and not result.timed_out and not result.ok
    assert len(getattr(result, stream)) == 10_000
    assert result.describe() == "output exceeded 10000 bytes; killed"
    assert result.wall_seconds < 5.0


@needs_python3
async def test_endless_allocation_fails_inside_the_limit(sandbox: Sandbox) -> None:
    """A program that allocates without end fails at the memory limit; the host is untouched."""
    code = "a = []\nwhile True: a.append(bytearray(1 << 24))"
    async with sandbox.workdir() as wd:
        result = await sandbox.run(
            [PYTHON3, "-c", code], cwd=wd, limits=limits(wall=20.0, memory_bytes=256 << 20)
        )
    assert not result.ok and not result.timed_out
    assert "memory limit of 256 MB reached" in result.describe()


@pytest.mark.skipif(not IS_ROOT, reason="needs a separate uid (root)")
async def test_writes_outside_the_workdir_fail(sandbox: Sandbox, tmp_path: Path) -> None:
    """Files the test owns (root, normal modes) stay unchanged; the program's own directory is writable."""
    hidden = tmp_path / "results.json"
    hidden.write_text("original")
    async with sandbox.build_dir() as visible_dir:
        visible = visible_dir / "corpus.c"
        visible.write_text("original")
        script = (
            'cat "$1"; echo pwned > "$1"; echo pwned >> "$1"; rm -f "$1"; echo pwned > "$2"; '
            "echo pwned > ../escape; echo pwned > /root/escape; echo mine > inside; cat inside"
        )
        async with sandbox.workdir() as wd:
            result = await sandbox.run(
                ["sh", "-c", script, "sh", str(visible), str(hidden)], cwd=wd, limits=limits()
            )
            assert (wd / "inside").read_text() == "mine\n"
        assert visible.read_text() == "original"
    assert result.stdout == b"originalmine\n"  # it could read the file, so the write failed on permissions
    assert hidden.read_text() == "original"
    assert not (sandbox.scratch / "escape").exists()
    assert not await anyio.Path("/root/escape").exists()
    assert b"Permission denied" in result.stderr


@pytest.fixture
def run_folder() -> Iterator[Path]:
    """A root-owned folder outside the private tmpfs mounts with a world-readable file: a corpus with ordinary
    modes, which the uid of a run may read unless it is hidden."""
    for parent in ("/run", "/srv", "/opt", "/var/lib"):
        with contextlib.suppress(OSError):
            folder = Path(tempfile.mkdtemp(prefix="c2r-hidden-", dir=parent))
            break
    else:
        pytest.skip("no writable folder outside /tmp")
    try:
        os.chmod(folder, 0o755)
        (folder / "expected.txt").write_text("the expected output\n")
        os.chmod(folder / "expected.txt", 0o644)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("scratch_inside", [pytest.param(False, id="scratch-apart"),
                                            pytest.param(True, id="scratch-inside-the-hidden-folder")])
async def test_hidden_folders_look_empty_unless_the_command_names_a_path_inside(
    run_folder: Path, scratch_inside: bool
) -> None:
    """A run sees a hidden folder (the corpus, the results) empty; a command that names a file inside it (its own
    test script) sees it as it is; a scratch root inside it still works."""
    scratch = run_folder / "scratch" if scratch_inside else None
    if scratch is not None:
        scratch.mkdir(mode=0o711)
    async with Sandbox.open(settings(), hidden=[run_folder], scratch_root=scratch) as sb:
        if not sb.isolation.mount_namespace:
            pytest.skip("hiding needs the mount namespace (root)")
        target = str(run_folder / "expected.txt")
        peek = await run_sh(sb, f"ls -A {run_folder}; cat {target}")  # named inside the script only
        named = await run_sh(sb, 'cat "$1"', target)
    # Only the scratch root, bound back where it was, shows through.
    assert peek.stdout == (b"scratch\n" if scratch_inside else b""), peek
    assert b"No such file or directory" in peek.stderr, peek
    assert named.stdout == b"the expected output\n", named


async def test_environment_is_scrubbed(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing of our environment reaches the program: only PATH, LC_ALL, HOME, TMPDIR and what is passed."""
    secret = "sk-fake-" + secrets.token_hex(8)
    monkeypatch.setenv("C2R_TEST_API_KEY", secret)
    monkeypatch.setenv("VLLM_API_KEY", secret)
    async with sandbox.workdir() as wd:
        result = await sandbox.run(["env"], cwd=wd, limits=limits(), env={"GREETING": "hi"})
    assert result.ok
    assert secret.encode() not in result.stdout
    seen = dict(line.split("=", 1) for line in result.stdout.decode().splitlines())
    # Ours: the sweep of a killed run finds its processes by it, the root helper of its namespaces included.
    assert len(seen.pop(MARKER_VAR)) == 24
    assert seen == {
        "PATH": "/usr/local/bin:/usr/bin:/bin", "LC_ALL": "C", "HOME": str(wd), "TMPDIR": str(wd),
        "GREETING": "hi",
    }


async def test_other_processes_environments_are_out_of_reach(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading /proc/*/environ finds no secret of ours: other processes are invisible or not readable."""
    if not (sandbox.isolation.pid_namespace or sandbox.isolation.unprivileged):
        pytest.skip("needs a PID namespace or a separate uid")
    secret = "sk-fake-" + secrets.token_hex(8)
    monkeypatch.setenv("C2R_TEST_API_KEY", secret)
    async with sandbox.build_dir() as bd:  # a process of ours that holds the secret while the program looks
        parent = await anyio.open_process(["sleep", "30"], cwd=bd)
        try:
            result = await run_sh(sandbox, "ls /proc | grep -c '^[0-9]'; cat /proc/[0-9]*/environ | tr '\\0' '\\n'")
        finally:
            parent.kill()
            await parent.aclose()
    assert result.stdout and secret.encode() not in result.stdout


@needs_python3
@pytest.mark.parametrize(
    "network", [pytest.param(False, id="network-off"), pytest.param(True, id="network-allowed")]
)
async def test_network_connections_fail(network: bool) -> None:
    """A program cannot reach a listener on 127.0.0.1, unless [sandbox] network = true."""
    code = "import socket, sys\nsocket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=3)\nprint('up')"
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        async with Sandbox.open(settings(network=network)) as sb:
            if not network and not sb.isolation.net_namespace:
                pytest.skip("no network namespace on this machine")
            async with sb.workdir() as wd:
                result = await sb.run([PYTHON3, "-c", code, str(port)], cwd=wd, limits=limits())
        try:
            conn, _ = listener.accept()
            conn.close()
            accepted = True
        except BlockingIOError:
            accepted = False
    assert accepted == network
    assert result.ok == network
    if not network:
        assert b"unreachable" in result.stderr.lower() or b"refused" in result.stderr.lower()


@pytest.mark.skipif(not IS_ROOT, reason="needs a separate uid (root)")
async def test_each_run_has_its_own_uid(sandbox: Sandbox) -> None:
    """Concurrent runs get distinct unprivileged uids, so one's process limit is not another's."""
    uids: list[int] = []

    async def one() -> None:
        result = await run_sh(sandbox, "id -u")
        uids.append(int(result.stdout))

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(one)
    assert len(set(uids)) == 3
    assert 0 not in uids


# ---------------------------------------------------------------------------------------------------------
# Directories


async def test_workdir_copies_files_and_skips_escaping_names(
    sandbox: Sandbox, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Listed files are copied; absolute, ``..``, symlinked and missing names are skipped with a warning."""
    src = tmp_path / "task"
    (src / "sub").mkdir(parents=True)
    (src / "input.txt").write_text("data")
    (src / "sub" / "more.txt").write_text("more")
    (src / "link.txt").symlink_to("/etc/hostname")
    (tmp_path / "outside.txt").write_text("secret")
    names = ["input.txt", "sub/more.txt", "../outside.txt", "/etc/hostname", "link.txt", "missing.txt"]
    async with sandbox.workdir(src, names) as wd:
        copied = sorted(str(p.relative_to(wd)) for p in wd.rglob("*"))
        result = await sandbox.run(["sh", "-c", "echo changed > input.txt"], cwd=wd, limits=limits())
        assert result.ok
        assert (wd / "input.txt").read_text() == "changed\n"
    assert copied == ["input.txt", "sub", "sub/more.txt"]
    assert (src / "input.txt").read_text() == "data"
    skipped = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    for name in ("../outside.txt", "/etc/hostname", "link.txt", "missing.txt"):
        assert any(repr(name) in message for message in skipped), name


@pytest.mark.parametrize("failing", [pytest.param(False, id="normal-exit"), pytest.param(True, id="exception")])
async def test_scratch_is_removed_when_the_sandbox_closes(failing: bool) -> None:
    """Scratch root, workdirs and build dirs are gone afterwards, even with files a program made unremovable."""
    seen: list[Path] = []
    with pytest.raises(RuntimeError) if failing else contextlib.nullcontext():
        async with Sandbox.open(settings()) as sb:
            seen.append(sb.scratch)
            async with sb.build_dir() as bd:
                seen.append(bd)
                async with sb.workdir() as wd:
                    seen.append(wd)
                    result = await sb.run(
                        ["sh", "-c", "mkdir -p d/e && touch d/e/f && chmod 000 d/e d"], cwd=wd, limits=limits()
                    )
                    assert result.ok
                    if failing:
                        raise RuntimeError("boom")
            assert not bd.exists() and not wd.exists()
    assert seen and not any(p.exists() for p in seen)


async def test_unreachable_scratch_root_is_replaced(tmp_path: Path) -> None:
    """A scratch root others cannot enter (pytest's 0700 tmp) would lock the runs' uids out: it is not used."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    async with Sandbox.open(settings(), scratch_root=private) as sb:
        result = await run_sh(sb, "echo ok > f && cat f")
        assert result.ok and result.stdout == b"ok\n"
        if IS_ROOT:
            assert private not in sb.scratch.parents
    assert list(private.iterdir()) == []


@pytest.mark.skipif(not IS_ROOT, reason="chattr +i needs root")
async def test_a_scratch_root_that_cannot_be_removed_leaves_its_parent_alone() -> None:
    """Removing the scratch never changes the mode of the directory holding it (/tmp for real runs)."""
    import shutil
    import tempfile

    # A stand-in for /tmp that the runs' uids can reach (pytest's own tmp_path is private to root).
    parent = Path(tempfile.mkdtemp(prefix="shared-tmp-"))
    os.chmod(parent, 0o1777)
    scratch: Path | None = None
    try:
        async with Sandbox.open(settings(), scratch_root=parent) as sb:
            scratch = sb.scratch
            assert scratch.parent == parent
            await anyio.run_process(["chattr", "+i", str(scratch)])
        assert os.stat(parent).st_mode & 0o7777 == 0o1777
    finally:
        if scratch is not None:
            await anyio.run_process(["chattr", "-i", str(scratch)], check=False)
        shutil.rmtree(parent, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------
# Trusted tools and cancellation


async def test_run_process_runs_a_trusted_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """run_process reports status and output, with a minimal environment by default."""
    monkeypatch.setenv("C2R_TEST_API_KEY", "sk-not-for-tools")
    result = await run_process(["sh", "-c", "env; echo err >&2; exit 3"], cwd=tmp_path, limits=limits())
    assert result.returncode == 3 and result.describe() == "exit status 3"
    assert result.stderr == b"err\n"
    assert b"sk-not-for-tools" not in result.stdout
    assert b"LC_ALL=C" in result.stdout


async def test_run_process_timeout_kills_the_group(tmp_path: Path) -> None:
    """A trusted tool past its deadline is killed with its children."""
    command, token = sleeper()
    result = await run_process(["sh", "-c", f"{command} & wait"], cwd=tmp_path, limits=limits(wall=0.5))
    assert result.timed_out
    assert processes_with(token=token) == []


@pytest.mark.parametrize(
    "runner", [pytest.param("sandbox", id="sandbox-run"), pytest.param("trusted", id="run-process")]
)
async def test_cancelling_a_run_kills_its_process(sandbox: Sandbox, tmp_path: Path, runner: str) -> None:
    """When the caller is cancelled mid-run, the program is dead by the time cancellation completes."""
    command, token = sleeper()
    async with sandbox.workdir() as wd:
        async with anyio.create_task_group() as tg:
            if runner == "sandbox":
                tg.start_soon(lambda: sandbox.run(["sh", "-c", command], cwd=wd, limits=limits(wall=60)))
            else:
                tg.start_soon(lambda: run_process(["sh", "-c", command], cwd=tmp_path, limits=limits(wall=60)))
            await wait_for(lambda: processes_with(token=token))
            tg.cancel_scope.cancel()
        assert processes_with(token=token) == []


# ---------------------------------------------------------------------------------------------------------
# Feeding, reading and cleaning up (the event loop serves the pipes; #16)


@pytest.mark.parametrize(
    "runner", [pytest.param("sandbox", id="sandbox-run"), pytest.param("trusted", id="run-process")]
)
async def test_input_larger_than_a_pipe_reaches_a_slow_reader_whole(
    sandbox: Sandbox, tmp_path: Path, runner: str
) -> None:
    """An input many times a pipe's size reaches a program that starts reading late, byte for byte, while its
    output is read; the run ends with the program."""
    data = bytes(range(256)) * 4000  # 1 MB
    script = "sleep 0.3; od -An -v -tx1 | wc -l; echo err >&2"
    if runner == "sandbox":
        result = await run_sh(sandbox, script, stdin=data)
    else:
        result = await run_process(["sh", "-c", script], cwd=tmp_path, limits=limits(), stdin=data)
    assert result.ok, result.describe()
    assert result.stdout.strip() == str(len(data) // 16).encode()
    assert result.stderr == b"err\n"
    assert result.wall_seconds < 8.0


async def test_output_cap_ends_a_run_whose_input_is_still_unread(sandbox: Sandbox) -> None:
    """A program that floods its output and never reads its (large) input is killed at the cap, promptly."""
    command, token = sleeper()
    result = await run_sh(sandbox, f"{command} & yes", stdin=b"x" * 1_000_000,
                          lim=limits(wall=20.0, output_bytes=10_000))
    assert result.output_exceeded and not result.timed_out
    assert result.describe() == "output exceeded 10000 bytes; killed"
    assert len(result.stdout) == 10_000
    assert result.wall_seconds < 5.0
    assert processes_with(token=token) == []


async def test_timeout_with_input_pending_kills_the_group(sandbox: Sandbox) -> None:
    """A program that neither reads its input nor ends is stopped at the deadline with its whole tree."""
    command, token = sleeper()
    result = await run_sh(sandbox, f"{command} & {command}", stdin=b"y" * 500_000, lim=limits(wall=0.5))
    assert result.timed_out and not result.output_exceeded
    assert result.describe() == "timed out after 0.5 s; process tree killed"
    assert result.wall_seconds < 5.0
    assert processes_with(token=token) == []


def _leftover_dirs(sb: Sandbox) -> list[str]:
    return sorted(p.name for p in sb.scratch.iterdir() if p.name.startswith(("build-", "work-")))


@pytest.mark.parametrize("how", [pytest.param("cancelled", id="cancelled"), pytest.param("error", id="error")])
async def test_verification_dirs_are_removed_at_once_after_a_cancellation_or_an_error(
    sandbox: Sandbox, how: str
) -> None:
    """A verification cancelled mid-run or ended by an error leaves neither its build directory nor its working
    copy (even with files the program made unremovable), nor its process."""
    command, token = sleeper()
    seen: list[Path] = []

    async def verification() -> None:
        async with sandbox.verification_dirs(sources={"main.rs": "fn main() {}"}) as (build, work):
            seen.extend((build, work))
            assert (build / "main.rs").read_text() == "fn main() {}"
            result = await sandbox.run(["sh", "-c", "mkdir -p d/e && touch d/e/f && chmod 000 d/e d"], cwd=work,
                                       limits=limits())
            assert result.ok, result.describe()
            if how == "error":
                raise RuntimeError("boom")
            await sandbox.run(["sh", "-c", command], cwd=work, limits=limits(wall=60))

    if how == "error":
        with pytest.raises(RuntimeError, match="boom"):
            await verification()
    else:
        async with anyio.create_task_group() as tg:
            tg.start_soon(verification)
            await wait_for(lambda: processes_with(token=token))
            tg.cancel_scope.cancel()
    assert len(seen) == 2 and not any(p.exists() for p in seen)
    assert _leftover_dirs(sandbox) == []
    assert processes_with(token=token) == []


async def test_finished_verifications_keep_at_most_one_pair_of_directories() -> None:
    """Directories of verifications that ended are gone by the end of the next one's start, and all at close."""
    seen: list[Path] = []
    async with Sandbox.open(settings()) as sb:
        for round_ in range(3):
            async with sb.verification_dirs() as (build, work):
                seen.extend((build, work))
                result = await sb.run(["sh", "-c", "echo hi > out.txt"], cwd=work, limits=limits())
                assert result.ok, result.describe()
                assert _leftover_dirs(sb) == sorted([build.name, work.name]), round_
        assert len(_leftover_dirs(sb)) <= 2
    assert len(seen) == 6 and not any(p.exists() for p in seen)


async def test_files_put_into_a_workdir_belong_to_its_next_run(sandbox: Sandbox) -> None:
    """What the caller writes into a workdir before a run (as root, mode 0644) is the run's to change."""
    async with sandbox.workdir() as wd:
        await anyio.to_thread.run_sync((wd / "given.txt").write_text, "given\n")
        for round_ in range(2):
            result = await sandbox.run(["sh", "-c", "echo more >> given.txt"], cwd=wd, limits=limits())
            assert result.ok, (round_, result.describe(), result.stderr)
        assert (wd / "given.txt").read_text() == "given\nmore\nmore\n"


# ------------------------------------------------------------------------------------------------------------
# Where the scratch space goes ([sandbox] scratch_dir, #16)


@pytest.fixture
def no_tmpdir(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment of a user who set no TMPDIR (tempfile's cached answer forgotten, both ways)."""
    import tempfile

    monkeypatch.delenv("TMPDIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", None)


def test_a_configured_scratch_dir_wins_over_tmpdir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    assert pipeline.sandbox.choose_scratch_root("~/scratch") == (Path.home() / "scratch", "[sandbox] scratch_dir")


def test_a_users_tmpdir_is_respected(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import tempfile

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    assert pipeline.sandbox.choose_scratch_root("") == (tmp_path, "TMPDIR")


@pytest.mark.skipif(pipeline.sandbox._fs_type(Path("/dev/shm")) != "tmpfs", reason="needs /dev/shm on a tmpfs")
@pytest.mark.skipif(pipeline.sandbox._fs_type(Path("/tmp")) == "tmpfs", reason="/tmp is a tmpfs already")
def test_without_tmpdir_a_roomy_dev_shm_is_preferred_to_a_disk(
    no_tmpdir: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, why = pipeline.sandbox.choose_scratch_root("")
    if os.statvfs("/dev/shm").f_bavail * os.statvfs("/dev/shm").f_frsize < pipeline.sandbox.SHM_MIN_FREE:
        pytest.skip("/dev/shm has less than 2 GiB free here")
    assert root == Path("/dev/shm") and why.startswith("tmpfs, ") and why.endswith(" GiB free")
    # Too small (a container's 64 MiB /dev/shm): the disk, saying why.
    monkeypatch.setattr(pipeline.sandbox, "SHM_MIN_FREE", 1 << 62)
    root, why = pipeline.sandbox.choose_scratch_root("")
    assert root == Path("/tmp") and "MiB free, less than" in why


def test_a_dev_shm_that_is_not_a_tmpfs_is_not_used(
    no_tmpdir: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    if pipeline.sandbox._fs_type(tmp_path) == "tmpfs":
        pytest.skip("pytest's temporary directory is a tmpfs here")
    monkeypatch.setattr(pipeline.sandbox, "SHM_DIR", tmp_path)
    root, _why = pipeline.sandbox.choose_scratch_root("")
    assert root != tmp_path


async def test_the_sandbox_opens_its_scratch_root_in_the_configured_dir() -> None:
    """``[sandbox] scratch_dir``: builds and working copies go there, and the programs run in it."""
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="c2r-scratch-dir-", dir="/tmp"))  # pytest's 0700 tmp would be refused
    try:
        os.chmod(base, 0o711)
        async with Sandbox.open(settings(scratch_dir=str(base))) as sb:
            assert sb.scratch.parent == base
            result = await run_sh(sb, "pwd")
            assert result.ok and Path(result.stdout.decode().strip()).parent == sb.scratch
        assert os.listdir(base) == []
    finally:
        shutil.rmtree(base, ignore_errors=True)


async def test_a_scratch_dir_that_is_not_there_stops_the_run_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[sandbox\] scratch_dir = '.*/missing' is not a directory: create it"):
        async with Sandbox.open(settings(scratch_dir=str(tmp_path / "missing"))):
            pass
