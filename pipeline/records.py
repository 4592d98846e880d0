"""Plain values every layer passes around: a task's inputs and tests, what a model answered, what a verifier
said, how a stage ended.

This module sits at the bottom: it imports nothing of the model client, the sandbox, the toolchain or the
stage loop, so the ledger, the results writer and the report can read these records without them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

StageName = Literal["unidiomatic", "idiomatic"]


@dataclass(frozen=True)
class StageSpec:
    """One stage, declared once: its name, whether it must be safe Rust, the program its first request quotes,
    and where its results go. Its first request is ``prompts.FIRST_REQUESTS[name]``; the simulator tells the
    stages apart by ``quotes`` (the last declared stage whose fence the first user message opens)."""

    name: StageName
    safe_only: bool  # refuse any `unsafe` before compiling
    quotes: str  # the fence language of the program its first request gives the model ("c", "rust")
    short: str  # its name on the progress bar

    @property
    def result_dir(self) -> str:
        """The folder of its verified program and statistics in SACToR's layout."""
        return f"translated_code_{self.name}"


#: The stages in the order they run; progress, results, summaries and refusals follow this table.
STAGE_SPECS: dict[StageName, StageSpec] = {
    "unidiomatic": StageSpec("unidiomatic", safe_only=False, quotes="c", short="uni"),
    "idiomatic": StageSpec("idiomatic", safe_only=True, quotes="rust", short="idi"),
}
STAGES: tuple[StageName, ...] = tuple(STAGE_SPECS)

AttemptKind = Literal[
    "verified", "no_code", "truncated", "refused", "compile_error", "test_failure", "differential_mismatch",
    "request_failed",
]


@dataclass(frozen=True)
class TaskKey:
    """What a task's result depends on: its input files' digest and the fingerprint of the settings that shape
    results. Two runs with equal keys would do the same work; the ledger stores it as ``str(key)``."""

    input_hash: str
    settings: str

    def __str__(self) -> str:
        return f"{self.input_hash}:{self.settings}"


@dataclass(frozen=True)
class TaskInputs:
    """A task's files, read and checked."""

    c_source: str
    suite: TestSuite


@dataclass(frozen=True)
class TaskFiles:
    """Every file that defines a task, read once (by the producer), and their digest: the resume key's half
    that depends on the inputs. ``contents`` maps each path to its bytes (None: it could not be read)."""

    contents: Mapping[Path, bytes | None]
    digest: str


@dataclass(frozen=True)
class SampleRun:
    """One SACToR sample: ``input`` goes in as arguments or on stdin; ``output`` is what must come out."""

    input: str
    output: str
    feed: Literal["stdin", "args"]  # task.Feed
    samples_file: str
    index: int


@dataclass(frozen=True)
class TestCase:
    """One test. ``argv`` holds the command's tokens as written (``%t`` kept); for a ``run-tests`` command
    (or a sample of a samples-kind task) ``sample`` holds the resolved sample, which is what actually runs."""

    __test__ = False  # not a pytest class

    index: int
    raw: str
    argv: tuple[str, ...]
    sample: SampleRun | None


@dataclass(frozen=True)
class TestSuite:
    """A task's tests, ready to run.

    ``base_dir`` is the test JSON's directory (commands run in a private copy of it); ``files`` are the
    relative names of the files there that plain commands reference, the only ones copied into that copy.
    """

    __test__ = False

    base_dir: Path
    cases: tuple[TestCase, ...]
    files: tuple[str, ...]


@dataclass(frozen=True)
class Usage:
    """Token counts the server reported for one completion (zeros when it reported none)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens, self.completion_tokens + other.completion_tokens
        )


@dataclass(frozen=True)
class Choice:
    """One of the answers a request asked for (``n`` > 1: several, sampled from the same prompt)."""

    text: str
    finish_reason: str

    @property
    def truncated(self) -> bool:
        """True when the model stopped at max_tokens: the text is incomplete."""
        return self.finish_reason == "length"


@dataclass(frozen=True)
class Completion:
    """The model's answer to one conversation: the first choice's text, and every choice when the request asked
    for several. ``usage`` is the request's: the prompt once, the completion tokens of every choice."""

    text: str
    finish_reason: str
    usage: Usage
    seconds: float  # wall time, including retries and waiting for a request slot
    queued_seconds: float  # time spent waiting for a request slot (the limiter)
    requests: int  # chat requests sent for it (1 + retries)
    choices: tuple[Choice, ...] = ()  # empty: the one choice above

    @property
    def truncated(self) -> bool:
        """True when the model stopped at max_tokens: the text is incomplete."""
        return self.finish_reason == "length"

    @property
    def candidates(self) -> tuple[Choice, ...]:
        """Every choice in the server's order (at least one)."""
        return self.choices or (Choice(self.text, self.finish_reason),)


#: The revision of what "verified" requires (what is refused before compiling, how a test run is judged, what the
#: sandbox hides from programs), in the settings fingerprint: a task verified under weaker rules is not kept as it
#: is. 2: assembly and running other code refused, a run killed by a signal fails, the corpus hidden, the
#: self-check control (pipeline/self_check.py).
VERIFY_RULES_REVISION = "2"
#: Earlier revisions (None: before the fingerprint held one) whose verified tasks a rerun checks again from their
#: stored programs, without the model: kept when every stage verifies under the current rules, else redone.
EARLIER_VERIFY_RULES: tuple[str | None, ...] = (None,)


@dataclass(frozen=True)
class Candidate:
    """What a stage asks a verifier to judge: the complete programs of one answer, in order of preference."""

    stage: StageName
    programs: tuple[str, ...]
    #: The C program runs other programs or code itself (``system``, ``exec*``, ``dlopen``, ...), so its
    #: translation may too; otherwise a program that does is refused (it could run a copy of the C program).
    c_runs_other_code: bool = False
    #: The task is self-checking (TransCoder: the C program's main checks f_filled against f_gold, the tests judge
    #: its exit status): the translation must define f_filled and fail its tests once f_filled answers wrong
    #: (:mod:`pipeline.self_check`).
    self_check: bool = False


@dataclass(frozen=True)
class TestCounts:
    """How far a program got: shipped tests passed of those run, then generated inputs (differential testing)
    on which it agreed with the C program of those run (the run stops at the first disagreement)."""

    __test__ = False  # not a pytest class

    passed: int = 0
    run: int = 0
    agreed: int = 0
    generated: int = 0

    def summary(self) -> dict[str, int]:
        return {"tests_passed": self.passed, "tests_run": self.run, "differential_tried": self.generated,
                "differential_agreed": self.agreed}


@dataclass(frozen=True)
class Verdict:
    """A verifier's judgement of a candidate. ``code`` is the program it is about (the one that compiled,
    or the first when none did); ``feedback`` is what the model is told in the repair prompt."""

    kind: AttemptKind
    message: str
    feedback: str = ""
    code: str | None = None
    build_seconds: float = 0.0
    test_seconds: float = 0.0
    counts: TestCounts = TestCounts()

    @property
    def verified(self) -> bool:
        return self.kind == "verified"


@dataclass(frozen=True)
class Attempt:
    """One try of a stage: what the model sent and what became of it."""

    number: int
    kind: AttemptKind
    message: str
    code: str | None
    usage: Usage
    llm_seconds: float
    build_seconds: float = 0.0
    test_seconds: float = 0.0
    counts: TestCounts = TestCounts()


@dataclass(frozen=True)
class StageResult:
    """How a stage ended. ``code`` is the verified program, present only when ``status == "verified"``."""

    stage: StageName
    status: Literal["verified", "failed", "skipped"]
    attempts: tuple[Attempt, ...] = ()
    code: str | None = None
    reason: str | None = None
    wall_seconds: float = 0.0
    requests: int = 0
    clippy: dict[str, Any] | None = None
    #: A function-level stage's account per item (None for a whole-file stage): ``failure_info`` (item key ->
    #: status, attempts, reason, blocker) and ``llm_stat`` (group label -> SACToR's llm_stat figures).
    items: Mapping[str, Any] | None = None

    @property
    def usage(self) -> Usage:
        total = Usage()
        for attempt in self.attempts:
            total = total + attempt.usage
        return total

    @property
    def verified(self) -> bool:
        return self.status == "verified"

    @property
    def counts(self) -> TestCounts:
        """The test figures of the last attempt that ran tests (the verified one when the stage verified)."""
        return next((a.counts for a in reversed(self.attempts) if a.counts.run), TestCounts())


@dataclass(frozen=True)
class TaskResult:
    """How one task ended: its stages, or the reason it could not start."""

    task_id: str
    c_path: str
    test_path: str
    input_hash: str
    stages: tuple[StageResult, ...] = ()
    reason: str | None = None
    #: Why a task that never reached its stages failed: "input_error" or "vacuous_tests" (None otherwise).
    failure_kind: str | None = None
    wall_seconds: float = 0.0
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: Differential testing of the task: inputs kept, tried and rejected, or why it did not apply (None: the
    #: task never reached it); and the kept inputs with the C program's outputs, as SACToR samples.
    differential: Mapping[str, Any] | None = None
    differential_samples: tuple[Mapping[str, str], ...] = ()
    #: How the task was cut for the model: ``granularity`` ("file" or "function"), ``reason`` (why), and for
    #: function-level tasks the item counts (``items``: verified, failed, blocked, total). None: not decided
    #: (the task never reached its stages).
    granularity: Mapping[str, Any] | None = None

    def stage(self, name: str) -> StageResult | None:
        return next((s for s in self.stages if s.stage == name), None)

    @property
    def status(self) -> str:
        """"verified" when every stage that ran verified, else "failed"."""
        if self.reason is not None or not self.stages:
            return "failed"
        return "verified" if all(s.verified for s in self.stages if s.status != "skipped") else "failed"

    def summary(self) -> dict[str, Any]:
        """The task's record in result.json, the ledger and batch_summary.json, as JSON."""
        return self.record().to_json()

    def record(self) -> TaskSummary:
        """The task's summary record (see :meth:`summary` for its JSON)."""
        stages: dict[str, StageSummary] = {}
        for name in STAGES:
            s = self.stage(name)
            if s is None:
                stages[name] = StageSummary("not_run")
                continue
            usage = s.usage
            stages[name] = StageSummary(
                s.status, len(s.attempts), s.requests, usage.prompt_tokens, usage.completion_tokens,
                round(s.wall_seconds, 3),
                # Local work (compile and test wall time holding a CPU slot), for the report's cost per task.
                round(sum(a.build_seconds + a.test_seconds for a in s.attempts), 3),
                s.reason, s.counts, sum(a.kind == "differential_mismatch" for a in s.attempts))
        return TaskSummary(self.task_id, self.c_path, self.test_path, self.input_hash, self.status,
                           self.reason or self._first_stage_reason(), self.failure_kind,
                           round(self.wall_seconds, 3),
                           dict(self.differential) if self.differential is not None else None, stages,
                           dict(self.granularity) if self.granularity is not None else None)

    def _first_stage_reason(self) -> str | None:
        for s in self.stages:
            if s.status == "failed":
                return f"{s.stage}: {s.reason}"
        return None


@dataclass(frozen=True)
class StageSummary:
    """One stage in a task's summary record; a stage that did not run has only its status ("not_run")."""

    status: str
    attempts: int = 0
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    reason: str | None = None
    counts: TestCounts = TestCounts()
    differential_mismatches: int = 0

    def to_json(self) -> dict[str, Any]:
        if self.status == "not_run":
            return {"status": self.status}
        return {"status": self.status, "attempts": self.attempts, "requests": self.requests,
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "wall_seconds": self.wall_seconds, "cpu_seconds": self.cpu_seconds, "reason": self.reason,
                **self.counts.summary(), "differential_mismatches": self.differential_mismatches}


@dataclass(frozen=True)
class TaskSummary:
    """A task's summary record: what result.json, the ledger and batch_summary.json hold for it. The JSON
    names of the files are ``c_file`` and ``test_file``."""

    task_id: str
    c_path: str
    test_path: str
    input_hash: str
    status: str
    reason: str | None
    failure_kind: str | None
    wall_seconds: float
    differential: dict[str, Any] | None
    stages: Mapping[str, StageSummary]
    granularity: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "c_file": self.c_path,
            "test_file": self.test_path,
            "input_hash": self.input_hash,
            "status": self.status,
            "reason": self.reason,
            "failure_kind": self.failure_kind,
            "wall_seconds": self.wall_seconds,
            "differential": self.differential,
            "stages": {name: stage.to_json() for name, stage in self.stages.items()},
            **(_granularity_json(self.granularity) if self.granularity is not None else {}),
        }


def _granularity_json(cut: Mapping[str, Any]) -> dict[str, Any]:
    """A task record's ``granularity`` ("file" or "function"), ``granularity_reason`` and, for function-level
    tasks, ``items`` (verified, failed, blocked, total)."""
    return {"granularity": cut.get("granularity"), "granularity_reason": cut.get("reason"),
            **({"items": dict(cut["items"])} if cut.get("items") else {})}


@dataclass(frozen=True)
class OracleInput:
    """An input on which the C program is a trustworthy oracle, and its output (normalised)."""

    input: str
    output: str


@dataclass(frozen=True)
class Oracle:
    """What the C program says on generated inputs, and how many were tried."""

    feed: Literal["stdin", "args"] | None  # task.Feed
    inputs: tuple[OracleInput, ...] = ()
    tried: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> count
    note: str | None = None  # why there are no inputs (not applicable, the C program does not build)
    cpu_seconds: float = 0.0

    def suite(self, base_dir: Path) -> TestSuite | None:
        """The kept inputs as sample tests (expected output: the C program's), or None without inputs."""
        if not self.inputs or self.feed is None:
            return None
        cases = tuple(
            TestCase(index, f"differential input {index}", ("differential", str(index)),
                     SampleRun(item.input, item.output, self.feed, "differential_samples.json", index))
            for index, item in enumerate(self.inputs)
        )
        return TestSuite(base_dir=base_dir, cases=cases, files=())

    def samples(self) -> list[dict[str, str]]:
        """The kept inputs in SACToR's samples format, to save beside the results and reuse as tests."""
        return [{"input": item.input, "output": item.output} for item in self.inputs]

    def report(self) -> dict[str, Any]:
        """What a task's summary shows: ``status`` (checked, no_inputs: every input rejected, not_applicable,
        unavailable: the C program does not build), inputs kept, tried, rejected per reason, CPU s, note."""
        if self.feed is None:
            status = "not_applicable"
        elif self.note is not None:
            status = "unavailable"
        else:
            status = "checked" if self.inputs else "no_inputs"
        return {"status": status, "inputs": len(self.inputs), "tried": self.tried, "rejected": dict(self.rejected),
                "cpu_seconds": self.cpu_seconds, "note": self.note}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Oracle:
        inputs = tuple(OracleInput(**item) for item in data.get("inputs", ()))
        return cls(data.get("feed"), inputs, int(data.get("tried", 0)), dict(data.get("rejected", {})),
                   data.get("note"), float(data.get("cpu_seconds", 0.0)))
