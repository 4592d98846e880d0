"""What the benchmark scripts share: synthetic corpora, the simulator as a child process, measured runs of a
command (wall time, CPU, peak memory), the simulator's request log, and small statistics.

Use :func:`write_corpus` for a flat corpus of ``@sim`` directive tasks, :func:`simulator` to serve it,
:func:`run_measured` to run the real CLI (or a baseline) as a child process and measure it, and
:func:`slot_seconds` / :func:`utilisation` on :func:`read_log`'s records.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.records import STAGE_SPECS

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CLI = ROOT / "batch_translate_generic.py"
MODEL = "sim-model"
CHAT_PATH = "/v1/chat/completions"
#: /proc/PID/status and /proc/PID/stat are read this often while a measured process runs.
POLL_SECONDS = 0.1
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------------------------------------
# Corpora


@dataclass(frozen=True)
class TaskPlan:
    """One synthetic task: what the simulator answers at each attempt of each stage (see directive.py)."""

    name: str
    directive_id: str
    unidiomatic: tuple[str, ...] = ("pass",)
    idiomatic: tuple[str, ...] = ("pass",)
    stdout: str = "ok"
    tokens: int = 300

    def directive(self) -> str:
        plan = {"id": self.directive_id, "unidiomatic": list(self.unidiomatic), "idiomatic": list(self.idiomatic),
                "stdout": self.stdout, "tokens": self.tokens}
        return f"// @sim {json.dumps(plan)}"

    def expected(self, max_attempts: int, *, idiomatic: bool = True) -> Expected:
        """The work this task costs when every request is answered (no fault exhausts its retries)."""
        total = Expected()
        stages = [("unidiomatic", self.unidiomatic)] + ([("idiomatic", self.idiomatic)] if idiomatic else [])
        for stage, plan in stages:
            verified = False
            for attempt in range(1, max_attempts + 1):
                outcome = plan[min(attempt, len(plan)) - 1] if plan else "pass"
                total = total.add(requests=1)
                if outcome == "unsafe" and STAGE_SPECS[stage].safe_only:
                    continue  # refused without compiling
                if outcome in ("no_code", "truncated"):
                    continue
                if outcome == "compile_error":
                    total = total.add(failed_compiles=1)
                    continue
                total = total.add(compiles=1, tests=1)
                if outcome in ("pass", "unsafe"):
                    verified = True
                    total = total.add(clippies=1)
                    break
            if not verified:
                return total
        return total.add(verified=1)


@dataclass(frozen=True)
class Expected:
    """Counts of work for one task or a corpus: chat requests, successful and failing compiles, test runs."""

    requests: int = 0
    compiles: int = 0
    failed_compiles: int = 0
    tests: int = 0
    verified: int = 0
    #: clippy runs (``[toolchain] clippy = true``): one per verified stage
    clippies: int = 0

    def add(self, **counts: int) -> Expected:
        return Expected(**{k: getattr(self, k) + counts.get(k, 0) for k in self.__dataclass_fields__})

    def __add__(self, other: Expected) -> Expected:
        return self.add(**{k: getattr(other, k) for k in self.__dataclass_fields__})


def c_source(plan: TaskPlan, index: int) -> str:
    """A small C program carrying the task's directive (the simulator only reads the directive line)."""
    return (
        f"{plan.directive()}\n"
        "#include <stdio.h>\n"
        "#include <stdlib.h>\n\n"
        f"static int step_{index}(int x) {{\n"
        f"    return (x * {index % 97 + 3}) % 1009;\n"
        "}\n\n"
        "int main(void) {\n"
        "    int acc = 0;\n"
        f"    for (int i = 0; i < {index % 13 + 5}; i++) {{\n"
        f"        acc += step_{index}(i);\n"
        "    }\n"
        f"    (void)acc;\n"
        f"    puts({json.dumps(plan.stdout)});\n"
        "    return 0;\n"
        "}\n"
    )


def write_corpus(root: Path, plans: Sequence[TaskPlan], *, num_tests: int = 1) -> None:
    """A flat corpus: NAME.c, NAME.json (``sactor run-tests`` commands) and NAME_samples.json per plan."""
    root.mkdir(parents=True, exist_ok=True)
    for index, plan in enumerate(plans):
        samples = [{"input": "", "output": plan.stdout}] * num_tests
        commands = [{"command": f"sactor run-tests --type bin ./{plan.name}_samples.json %t {i} --feed-as-stdin"}
                    for i in range(num_tests)]
        (root / f"{plan.name}.c").write_text(c_source(plan, index))
        (root / f"{plan.name}_samples.json").write_text(json.dumps(samples))
        (root / f"{plan.name}.json").write_text(json.dumps(commands))


def write_config(path: Path, *, compile_cache: bool, clippy: bool = False, differential: int = 0,
                 extra: str = "") -> Path:
    """A sactor.toml for benchmark runs (passed with --config). Differential testing is off unless asked for:
    the figures measure scheduling (model slots, compile and test), and the directive tasks' C programs print a
    constant, so the C program's answers would only add gcc runs (its cost is in the README)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "[toolchain]\n"
        f"compile_cache = {str(compile_cache).lower()}\n"
        f"clippy = {str(clippy).lower()}\n"
        f"[differential]\ninputs = {differential}\n"
        f"{extra}"
    )
    return path


# ------------------------------------------------------------------------------------------------------------
# The simulator as a separate process


@dataclass(frozen=True)
class LoadSpec:
    """The simulator's load model and fault rate, as given on its command line."""

    capacity: int
    latency: float
    decode_per_token: float
    fault_rate: float = 0.0
    fault_kinds: tuple[str, ...] = ("503",)
    retry_after: float = 0.5
    prefill_per_token: float = 0.0

    def service_time(self, completion_tokens: int) -> float:
        return self.latency + self.decode_per_token * completion_tokens


@dataclass(frozen=True)
class SimHandle:
    url: str
    pid: int
    log_path: Path


@contextlib.contextmanager
def simulator(load: LoadSpec, log_path: Path, *, stderr_path: Path, seed: int = 0,
              extra: Sequence[str] = ()) -> Iterator[SimHandle]:
    """Run ``python -m pipeline.simulator`` (``extra``: more of its flags) in its own process group until the block
    ends.

    Raises RuntimeError when it does not print its URL within 30 s.
    """
    log_path = log_path.resolve()
    argv = [
        sys.executable, "-m", "pipeline.simulator", "--port", "0", "--model", MODEL,
        "--capacity", str(load.capacity), "--latency", str(load.latency),
        "--decode-per-token", str(load.decode_per_token), "--prefill-per-token", str(load.prefill_per_token),
        "--fault-rate", str(load.fault_rate),
        "--fault-kinds", ",".join(load.fault_kinds), "--retry-after", str(load.retry_after),
        "--seed", str(seed), "--log", str(log_path), "--no-bodies", *extra,
    ]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with stderr_path.open("ab") as err:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, start_new_session=True)
    try:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout=30.0):
                raise RuntimeError(f"the simulator did not start in 30 s; see {stderr_path}")
        line = proc.stdout.readline().decode().strip()
        if not line.startswith("listening on "):
            raise RuntimeError(f"the simulator said {line!r}; see {stderr_path}")
        yield SimHandle(line.removeprefix("listening on "), proc.pid, log_path)
    finally:
        _stop_group(proc)


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def system_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (/proc/stat: everything but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    # guest time is already counted in user time
    return (sum(fields[:8]) - idle) / _CLOCK_TICKS


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (itself only), from /proc/PID/stat; 0.0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


# ------------------------------------------------------------------------------------------------------------
# Measured runs


@dataclass(frozen=True)
class ProcessRun:
    """A finished child process, measured.

    ``peak_rss_mb`` is the process's own VmHWM (its children, rustc and the tests, not included), sampled every
    :data:`POLL_SECONDS`; ``self_cpu_seconds`` its own user+system CPU (sampled, so up to one interval short);
    ``tree_cpu_seconds`` and ``tree_maxrss_mb`` come from wait4 and include every descendant it waited for.
    ``started``/``ended`` are time.monotonic() values (the simulator's log uses the same clock).
    ``system_cpu_seconds`` is what every process on the machine used meanwhile (other users' load included).
    """

    argv: tuple[str, ...]
    returncode: int
    wall_seconds: float
    peak_rss_mb: float
    self_cpu_seconds: float
    tree_cpu_seconds: float
    tree_maxrss_mb: float
    started: float
    ended: float
    started_wall: float
    system_cpu_seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def _vm_hwm_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def run_measured(
    argv: Sequence[str],
    *,
    cwd: Path,
    stdout_path: Path,
    stderr_path: Path,
    env: dict[str, str] | None = None,
    timeout: float = 3600.0,
) -> ProcessRun:
    """Run ``argv`` to completion in its own process group, sampling its memory and CPU.

    The group is killed when ``timeout`` passes (the run then has returncode -9). Output goes to the files.
    """
    stdout_path.parent.mkdir(parents=True, exist_ok=True)
    started_wall = time.time()
    started = time.monotonic()
    busy0 = system_busy_seconds()
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        proc = subprocess.Popen(list(argv), cwd=cwd, stdout=out, stderr=err, env=env, start_new_session=True)
    peak_kb = 0
    self_cpu = 0.0
    deadline = started + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            break
        hwm = _vm_hwm_kb(proc.pid)
        if hwm is not None:
            peak_kb = max(peak_kb, hwm)
            self_cpu = max(self_cpu, process_cpu_seconds(proc.pid))
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        time.sleep(POLL_SECONDS)
    ended = time.monotonic()
    busy = system_busy_seconds() - busy0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return ProcessRun(
        argv=tuple(argv), returncode=proc.returncode, wall_seconds=ended - started, peak_rss_mb=peak_kb / 1024,
        self_cpu_seconds=self_cpu, tree_cpu_seconds=usage.ru_utime + usage.ru_stime,
        tree_maxrss_mb=usage.ru_maxrss / 1024, started=started, ended=ended, started_wall=started_wall,
        system_cpu_seconds=busy,
    )


# ------------------------------------------------------------------------------------------------------------
# The simulator's request log


def read_log(path: Path) -> list[dict[str, Any]]:
    """Every request record of the simulator's JSON-lines log (an incomplete last line is skipped)."""
    records: list[dict[str, Any]] = []
    if not path.exists():
        return records
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.endswith("\n"):
                records.append(json.loads(line))
    return records


def window(records: Sequence[dict[str, Any]], t0: float, t1: float) -> list[dict[str, Any]]:
    """The records of requests that arrived within [t0, t1] (monotonic seconds)."""
    return [r for r in records if t0 <= r["arrival"] <= t1]


def chat(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["path"] == CHAT_PATH and r["method"] == "POST"]


def slot_seconds(records: Sequence[dict[str, Any]], t0: float = -math.inf, t1: float = math.inf,
                 capacity: int = 1 << 30) -> float:
    """Generation-slot seconds the chat requests held within [t0, t1] (a fault answered at once holds none); a
    request for n choices holds n slots (``capacity`` caps them, as the simulator does)."""
    return sum(max(0.0, min(float(r["end"]), t1) - max(float(r["start"]), t0)) * min(int(r.get("n") or 1), capacity)
               for r in chat(records))


def utilisation(records: Sequence[dict[str, Any]], capacity: int, t0: float, t1: float) -> float:
    """Time-weighted busy generation slots over capacity, within [t0, t1]."""
    if t1 <= t0:
        return 0.0
    return slot_seconds(records, t0, t1, capacity) / (capacity * (t1 - t0))


# ------------------------------------------------------------------------------------------------------------
# Statistics and output


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "n/a" if math.isnan(v) else f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def clean_env() -> dict[str, str]:
    """The environment for measured runs: ours without VLLM_* overrides."""
    return {k: v for k, v in os.environ.items() if not k.startswith("VLLM_")}
