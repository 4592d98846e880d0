"""SACToR test tasks: load them, run them against a translated binary, and say what went wrong.

A task's tests come in one of two shapes (:attr:`Task.test_kind`):

``"task"``
    SACToR's test task: a JSON list of objects with a ``"command"`` (a string split on whitespace, or a
    list of strings; other keys are ignored). ``%t`` stands for the program under test. A command
    ``sactor run-tests --type bin SAMPLES.json %t N [--feed-as-args | --feed-as-stdin]`` is not run as
    written: we read sample ``N`` from ``SAMPLES.json`` ourselves and run the program on it (no SACToR, no
    Python per test). Any other command runs as written, ``%t`` replaced by the program, and passes when it
    exits with status 0 in time.
``"samples"``
    The JSON itself is a list of ``{"input", "output"}`` samples, fed as :attr:`Task.feed` says.

A sample run judges output the way SACToR's ``ExecutableTestRunner`` does: the program's stdout and stderr
are decoded and concatenated (stdout first), split into lines (``str.splitlines``), each line stripped of
surrounding whitespace, and the lines joined with ``"\\n"``; the result must equal the sample's ``output``
*exactly* (the expected side is not normalised). The exit status is not judged (SACToR does not judge it
either: a C program whose ``main`` has no ``return`` exits with any status); a run that times out or exceeds the
output cap fails, and so does one killed by a signal (a crash after the right output: SACToR would pass it, but
the C programs end normally on their samples, and the differential oracle drops inputs on which they do not).
An expected output that this normalisation can never produce (a trailing newline, a line with surrounding
blanks, ``\\r\\n`` line ends) would fail every translation, so loading rejects it with
:class:`~pipeline.errors.TaskInputError`.

Without a feed flag, ``sactor run-tests`` feeds the sample as arguments (``args``), as SACToR's command does.

The published SACToR datasets name samples files by absolute paths of the authors' machines. When such a
path does not exist here, the file of the same name beside the test task is used (a warning says so once).
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import os
import shlex
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import anyio

from .errors import TaskInputError

# The test records live with the other plain values (records.py); named here as well so that code written before
# they moved (verifier.py, differential.py on other branches) keeps importing them from here.
from .records import SampleRun, TestCase, TestSuite
from .task import Feed, Task

if TYPE_CHECKING:
    from .sandbox import Limits, ProcessResult, Sandbox

log = logging.getLogger(__name__)

TARGET_TOKEN = "%t"
#: The feed of ``sactor run-tests --type bin`` without ``--feed-as-args``/``--feed-as-stdin`` (SACToR's).
DEFAULT_RUN_TESTS_FEED: Feed = "args"

_FEED_FLAGS: dict[str, Feed] = {"--feed-as-args": "args", "--feed-as-stdin": "stdin"}
# Bounds of the pieces of one failure's feedback, so that one huge output cannot crowd out everything else.
_TEXT_CHARS = 600
_DIFF_LINES = 30
_STDERR_CHARS = 400
_OUTCOME_CHARS = 2500


@dataclass(frozen=True)
class TestOutcome:
    """How one test went: a one-line ``summary`` for logs, and ``feedback`` for the model (bounded size)."""

    __test__ = False

    case: TestCase
    passed: bool
    summary: str
    feedback: str
    seconds: float


@dataclass(frozen=True)
class TestVerdict:
    """The outcomes of one suite run, in order (fewer than the suite's cases after a ``fail_fast`` stop)."""

    __test__ = False

    outcomes: tuple[TestOutcome, ...]

    @property
    def passed(self) -> bool:
        """True when at least one test ran and every test that ran passed."""
        return bool(self.outcomes) and all(o.passed for o in self.outcomes)

    @property
    def failures(self) -> tuple[TestOutcome, ...]:
        return tuple(o for o in self.outcomes if not o.passed)

    def feedback(self, max_chars: int = 4000) -> str:
        """The feedback of the first failures that fit in ``max_chars``, then how many more failed.

        Returns ``""`` when nothing failed. The first failure is always included, cut if it alone is too long.
        """
        failures = self.failures
        if not failures:
            return ""
        shown: list[str] = []
        for number, outcome in enumerate(failures):
            tail = _more_failures(len(failures) - number - 1)
            size = len("\n\n".join([*shown, outcome.feedback])) + (len(tail) + 2 if tail else 0)
            if size > max_chars:
                break
            shown.append(outcome.feedback)
        if not shown:
            tail = _more_failures(len(failures) - 1)
            shown.append(_cut(failures[0].feedback, max(0, max_chars - (len(tail) + 2 if tail else 0))))
        text = "\n\n".join(shown)
        tail = _more_failures(len(failures) - len(shown))
        if tail:
            text = f"{text}\n\n{tail}"
        return text[:max_chars]


def _more_failures(count: int) -> str:
    if count <= 0:
        return ""
    return f"({count} further failing test{'s' if count != 1 else ''} not shown.)"


# ----------------------------------------------------------------------------------------------------
# Loading

#: Reading a task's input file stops past this many bytes (pipeline.translate); a larger test file is refused.
MAX_INPUT_BYTES = 64 * 1024 * 1024


def load_test_suite(
    task: Task, *, num_tests: int | None = None, files: Mapping[Path, bytes] | None = None
) -> TestSuite:
    """Read a task's tests (synchronous: the files are small). ``num_tests`` keeps only the first N cases.
    ``files`` holds contents already read (see :func:`pipeline.translate.read_task`); others are read here.

    Raises :class:`~pipeline.errors.TaskInputError`, naming the file, when a file cannot be read or is not
    UTF-8, the JSON is invalid or not of the expected shape, a command is missing or empty, a ``run-tests``
    command is malformed, names a samples file that does not exist or a sample index out of range, a sample
    lacks ``input``/``output`` or expects an output no program can produce, or there are no tests at all.
    """
    path = task.test_path
    base_dir = path.parent
    data = _read_json(path, files)
    if not isinstance(data, list):
        raise TaskInputError(f"{path}: the tests must be a JSON list, not {_json_type(data)}")
    entries = data if num_tests is None else data[: max(num_tests, 0)]
    cases: list[TestCase] = []
    referenced: set[str] = set()
    if task.test_kind == "samples":
        for index, entry in enumerate(entries):
            sample = _sample_from(entry, path, index, task.feed)
            flag = "--feed-as-args" if task.feed == "args" else "--feed-as-stdin"
            argv: tuple[str, ...] = (
                "sactor", "run-tests", "--type", "bin", path.name, TARGET_TOKEN, str(index), flag,
            )
            cases.append(TestCase(index, " ".join(argv), argv, sample))
    else:
        samples_cache: dict[Path, list[Any]] = {}
        for index, entry in enumerate(entries):
            argv = _command_of(entry, path, index)
            raw = entry["command"] if isinstance(entry["command"], str) else shlex.join(argv)
            if _is_run_tests(argv):
                sample = _resolve_run_tests(argv, path, index, samples_cache, files)
                cases.append(TestCase(index, raw, argv, sample))
            else:
                referenced.update(_referenced_files(argv, base_dir))
                cases.append(TestCase(index, raw, argv, None))
    if not cases:
        raise TaskInputError(f"{path}: the test file contains no tests")
    return TestSuite(base_dir=base_dir, cases=tuple(cases), files=tuple(sorted(referenced)))


def input_files(task: Task, test_json: bytes | None = None) -> list[Path]:
    """Every file whose content defines the task, sorted and de-duplicated, for the resume hash.

    That is the C file, the test JSON, the samples files its ``run-tests`` commands name and the files its
    plain commands reference (only those that exist). Never raises: for a broken JSON it returns what it can.
    """
    found: set[Path] = {task.c_path, task.test_path}
    if task.test_kind != "task":
        return sorted(found)
    try:
        data = json.loads(test_json if test_json is not None else task.test_path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return sorted(found)
    if not isinstance(data, list):
        return sorted(found)
    base_dir = task.test_path.parent
    for entry in data:
        command = entry.get("command") if isinstance(entry, dict) else None
        if isinstance(command, str):
            argv = tuple(command.split())
        elif isinstance(command, list) and all(isinstance(t, str) for t in command):
            argv = tuple(command)
        else:
            continue
        if _is_run_tests(argv):
            parsed = _parse_run_tests(argv)
            if isinstance(parsed, tuple):
                candidate = _samples_path(base_dir, parsed[0])
                if _is_file(candidate):
                    found.add(candidate)
        else:
            found.update(base_dir / name for name in _referenced_files(argv, base_dir))
    return sorted(found)


def _read_json(path: Path, files: Mapping[Path, bytes] | None = None) -> Any:
    try:
        raw = files.get(path) if files is not None else None
        data = raw if raw is not None else path.read_bytes()
        if len(data) > MAX_INPUT_BYTES:  # read_task_files stops one byte past the limit: never parse a part
            raise TaskInputError(
                f"{path}: larger than the {MAX_INPUT_BYTES >> 20} MiB limit of a test file; keep fewer tests or "
                "samples in it (or split the program's tests)")
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise TaskInputError(f"{path}: the file does not exist") from None
    except UnicodeDecodeError as exc:
        raise TaskInputError(f"{path}: the file is not UTF-8 (byte {exc.start})") from exc
    except OSError as exc:
        raise TaskInputError(f"{path}: the file cannot be read: {exc.strerror or exc}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise TaskInputError(
            f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from exc
    except RecursionError:
        raise TaskInputError(f"{path}: the JSON is nested too deeply") from None
    except ValueError as exc:  # an integer longer than Python converts (sys.get_int_max_str_digits)
        raise TaskInputError(f"{path}: invalid JSON: a number is too long ({str(exc).split(':')[0]})") from None


def _is_file(path: Path) -> bool:
    """Whether ``path`` is a regular file; False for names the system rejects (too long, NUL bytes)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _json_type(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return "null" if value is None else type(value).__name__


def _command_of(entry: Any, path: Path, index: int) -> tuple[str, ...]:
    where = f"{path}: test {index}"
    if not isinstance(entry, dict) or "command" not in entry:
        raise TaskInputError(f'{where} is not an object with a "command"')
    command = entry["command"]
    if isinstance(command, str):
        argv = tuple(command.split())
    elif isinstance(command, list) and all(isinstance(token, str) for token in command):
        argv = tuple(command)
    else:
        raise TaskInputError(f'{where}: "command" must be a string or a list of strings')
    if not argv or not any(token.strip() for token in argv):
        raise TaskInputError(f"{where}: the command is empty")
    if any("\0" in token for token in argv):
        raise TaskInputError(f"{where}: the command contains a NUL character, which no command line can hold")
    if (bad := _not_text(" ".join(argv), "surrogateescape")) is not None:
        raise TaskInputError(f"{where}: the command holds {bad}, which is not a character; fix the test file")
    if (size := len(" ".join(argv).encode("utf-8", "surrogateescape"))) > COMMAND_BYTES:
        raise TaskInputError(f"{where}: the command is {size} bytes long, more than a command line holds "
                             f"({COMMAND_BYTES})")
    return argv


#: The longest command (or argument-fed input) a test may have: Linux's limit on one argument (MAX_ARG_STRLEN),
#: well within the whole command line's (ARG_MAX).
COMMAND_BYTES = 128 * 1024 - 1


def _not_text(text: str, errors: str = "strict") -> str | None:
    """The first code point of ``text`` that UTF-8 cannot hold (a lone surrogate, as JSON's "\\ud800" makes),
    shown as an escape, or None. ``errors="surrogateescape"`` accepts the surrogates that stand for the bytes of a
    file name that are not UTF-8 ("\\udce9"), as the command line's encoding does."""
    try:
        text.encode("utf-8", errors)
    except UnicodeEncodeError as exc:
        return repr(text[exc.start])
    return None


def _is_run_tests(argv: Sequence[str]) -> bool:
    return len(argv) >= 2 and os.path.basename(argv[0]) == "sactor" and argv[1] == "run-tests"


def _parse_run_tests(argv: Sequence[str]) -> tuple[str, str, str, Feed] | str:
    """``(samples, target, number, feed)`` of a ``sactor run-tests`` command, or why it is malformed."""
    positional: list[str] = []
    kind: str | None = None
    feeds: set[Feed] = set()
    tokens = list(argv[2:])
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == "--type":
            if i + 1 >= len(tokens):
                return "--type needs a value"
            kind = tokens[i + 1]
            i += 2
            continue
        if token.startswith("--type="):
            kind = token.partition("=")[2]
        elif token in _FEED_FLAGS:
            feeds.add(_FEED_FLAGS[token])
        elif token.startswith("-") and not token.lstrip("-").isdigit():
            return f"unknown option {token}"
        else:
            positional.append(token)
        i += 1
    if kind is None:
        return "--type is required (--type bin)"
    if kind != "bin":
        return f"--type {kind} is not supported (only --type bin)"
    if len(feeds) > 1:
        return "only one of --feed-as-args and --feed-as-stdin can be given"
    if len(positional) != 3:
        return "expected SAMPLES.json %t N"
    samples, target, number = positional
    return samples, target, number, (feeds.pop() if feeds else DEFAULT_RUN_TESTS_FEED)


def _resolve(base_dir: Path, name: str) -> Path:
    return Path(os.path.normpath(base_dir / name))  # an absolute name replaces base_dir


_moved_samples_told = threading.Lock()  # held for good once the warning is out: said once per process (run)


def _samples_path(base_dir: Path, name: str) -> Path:
    """Where a ``run-tests`` command's samples file is: as named, or, for an absolute path that does not
    exist here (one from the dataset authors' machine), the file of the same name beside the test task."""
    named = _resolve(base_dir, name)
    if not os.path.isabs(name) or _is_file(named):
        return named
    beside = base_dir / PurePosixPath(name).name
    if not _is_file(beside):
        return named
    if _moved_samples_told.acquire(blocking=False):
        log.warning(
            "test tasks name samples files by absolute paths that do not exist on this machine (first: %s, in "
            "a test task in %s); using the file of the same name beside each test task instead",
            name, base_dir,
        )
    return beside


def _resolve_run_tests(
    argv: Sequence[str], path: Path, index: int, cache: dict[Path, list[Any]],
    files: Mapping[Path, bytes] | None = None,
) -> SampleRun:
    where = f"{path}: test {index}"
    parsed = _parse_run_tests(argv)
    if isinstance(parsed, str):
        raise TaskInputError(f"{where}: malformed `sactor run-tests` command: {parsed}")
    samples_name, target, number, feed = parsed
    if target != TARGET_TOKEN:
        raise TaskInputError(f"{where}: the run-tests target must be {TARGET_TOKEN}, not {target!r}")
    try:
        sample_index = int(number)
    except ValueError:
        raise TaskInputError(f"{where}: the sample number {number!r} is not an integer") from None
    samples_path = _samples_path(path.parent, samples_name)
    samples = cache.get(samples_path)
    if samples is None:
        if not _is_file(samples_path):
            beside = "" if not os.path.isabs(samples_name) else (
                f", nor does {path.parent / PurePosixPath(samples_name).name} beside the test task")
            raise TaskInputError(f"{where}: the samples file {samples_path} does not exist{beside}")
        loaded = _read_json(samples_path, files)
        if not isinstance(loaded, list):
            raise TaskInputError(f"{samples_path}: the samples must be a JSON list, not {_json_type(loaded)}")
        samples = cache[samples_path] = loaded
    if not 0 <= sample_index < len(samples):
        raise TaskInputError(
            f"{where}: sample {sample_index} is out of range: {samples_path} has {len(samples)} samples"
        )
    return _sample_from(samples[sample_index], samples_path, sample_index, feed)


def _sample_from(entry: Any, samples_path: Path, index: int, feed: Feed) -> SampleRun:
    where = f"{samples_path}: sample {index}"
    if not isinstance(entry, dict) or "input" not in entry or "output" not in entry:
        raise TaskInputError(f'{where} is not an object with "input" and "output"')
    given, expected = entry["input"], entry["output"]
    if not isinstance(given, str) or not isinstance(expected, str):
        raise TaskInputError(f'{where}: "input" and "output" must be strings')
    if feed == "args" and "\0" in given:
        raise TaskInputError(f"{where}: the input contains a NUL character, which no argument can hold; feed it "
                             "on stdin (--feed-as-stdin)")
    # Encoded as the run will: strictly for stdin, as file names are for arguments.
    if (bad := _not_text(given, "surrogateescape" if feed == "args" else "strict")) is not None:
        raise TaskInputError(f"{where}: the input holds {bad}, which is not a character; fix the samples file")
    if feed == "args" and (size := len(given.encode("utf-8", "surrogateescape"))) > COMMAND_BYTES:
        raise TaskInputError(f"{where}: the input is {size} bytes long, more than the arguments of a command line "
                             "hold; feed it on stdin (--feed-as-stdin)")
    if normalize_output(expected) != expected:
        raise TaskInputError(
            f"{where}: the expected output {_preview(expected)} can never match: the program's output is "
            "compared with each line stripped and no trailing newline; "
            f"store {_preview(normalize_output(expected))}"
        )
    return SampleRun(given, expected, feed, str(samples_path), index)


def _preview(text: str, limit: int = 60) -> str:
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 4] + "...'"


def _referenced_files(argv: Sequence[str], base_dir: Path) -> set[str]:
    """Relative names of the files in ``base_dir`` (or below) that a plain command's tokens name."""
    names: set[str] = set()
    for token in argv:
        if token == TARGET_TOKEN or not token or os.path.isabs(token):
            continue
        relative = os.path.normpath(token)
        if relative == os.pardir or relative.startswith(os.pardir + os.sep):
            continue  # outside the test directory: not ours to copy
        if _is_file(base_dir / relative):
            names.add(Path(relative).as_posix())
    return names


# ----------------------------------------------------------------------------------------------------
# Running


def normalize_output(text: str) -> str:
    """SACToR's ``normalize_string``: split into lines, strip each, join with ``"\\n"``."""
    return "\n".join(line.strip() for line in text.splitlines())


async def run_test_suite(
    binary: Path,
    suite: TestSuite,
    *,
    sandbox: Sandbox,
    limits: Limits,
    fail_fast: bool = False,
    cpu: anyio.CapacityLimiter | None = None,
    workdir: Path | None = None,
) -> TestVerdict:
    """Run every case of ``suite`` against ``binary``, one after another, in one private copy of ``base_dir``.

    Each case runs through ``sandbox.run`` under ``limits`` with ``LC_ALL=C``. ``fail_fast`` stops at the
    first failure. ``cpu`` (the engine's CPU limiter) is held by each case only while its process lives: the
    working copy, its removal and the checks of the output hold no slot. ``workdir``: a fresh working copy of
    the suite's files the caller made (:meth:`~pipeline.sandbox.Sandbox.verification_dirs`) and removes; by
    default one is made and removed here. A failing program is an outcome, not an exception; errors of the
    sandbox itself propagate.
    """
    # The builds' binaries are absolute already (the sandbox's scratch root is a real path): no worker-thread trip.
    program = str(binary) if os.path.isabs(binary) else str(await anyio.to_thread.run_sync(Path(binary).resolve))
    shown = f"./{Path(binary).name}"
    # The sandbox builds the environment from scratch (PATH, HOME, ...) and adds ours: only the locale here.
    env = {"LC_ALL": "C"}
    outcomes: list[TestOutcome] = []
    async with (
        sandbox.workdir(suite.base_dir, suite.files) if workdir is None else contextlib.nullcontext(workdir)
    ) as cwd:
        for case in suite.cases:
            if case.sample is None:
                outcome = await _run_command(case, program, shown, Path(cwd), sandbox, limits, env, cpu)
            else:
                outcome = await _run_sample(
                    case, case.sample, program, shown, Path(cwd), sandbox, limits, env, cpu
                )
            log.debug("%s (%.2f s)", outcome.summary, outcome.seconds)
            outcomes.append(outcome)
            if fail_fast and not outcome.passed:
                break
    return TestVerdict(tuple(outcomes))


def _ended(result: ProcessResult) -> str | None:
    """Why a run is failed regardless of its output (timeout, output cap), else None."""
    if result.timed_out or result.output_exceeded:
        return result.describe()
    return None


async def _run_command(
    case: TestCase, program: str, shown: str, cwd: Path, sandbox: Sandbox, limits: Limits, env: dict[str, str],
    cpu: anyio.CapacityLimiter | None,
) -> TestOutcome:
    argv = [program if token == TARGET_TOKEN else token for token in case.argv]
    result = await sandbox.run(argv, cwd=cwd, stdin=None, limits=limits, env=env, slot=cpu)
    display = shlex.join(shown if token == TARGET_TOKEN else token for token in case.argv)
    passed = result.returncode == 0 and not result.timed_out and not result.output_exceeded
    how = result.describe()
    if passed:
        return TestOutcome(case, True, f"test {case.index} passed", "", result.wall_seconds)
    lines = [
        f"Test {case.index} failed: {how}.",
        f"Command ({shown} is your program): {display}",
    ]
    output = _decode(result.stdout)
    if output.strip():
        lines.append(f"Standard output (end):\n{_tail(output, _TEXT_CHARS)}")
    errors = _decode(result.stderr)
    if errors.strip():
        lines.append(f"Standard error (end):\n{_tail(errors, _STDERR_CHARS)}")
    return TestOutcome(
        case, False, f"test {case.index} failed: {how}", _cut("\n".join(lines), _OUTCOME_CHARS),
        result.wall_seconds,
    )


async def _run_sample(
    case: TestCase,
    sample: SampleRun,
    program: str,
    shown: str,
    cwd: Path,
    sandbox: Sandbox,
    limits: Limits,
    env: dict[str, str],
    cpu: anyio.CapacityLimiter | None,
) -> TestOutcome:
    if sample.feed == "args":
        args = sample.input.split()
        result = await sandbox.run([program, *args], cwd=cwd, stdin=None, limits=limits, env=env, slot=cpu)
        invocation = shlex.join([shown, *args])
    else:
        stdin = (sample.input + "\n").encode()
        result = await sandbox.run([program], cwd=cwd, stdin=stdin, limits=limits, env=env, slot=cpu)
        invocation = f"{shown} < input"
    actual = normalize_output(_decode(result.stdout) + _decode(result.stderr))
    stopped = _ended(result)
    passed = stopped is None and result.signal is None and actual == sample.output
    if passed:
        return TestOutcome(case, True, f"test {case.index} passed", "", result.wall_seconds)
    if stopped is not None:
        reason = stopped
    elif actual == sample.output:
        reason = f"the output matched, but the program was {result.describe()}"
    elif result.signal is not None or result.limit_hit is not None:
        # The program died of a signal or a limit; "wrong output" alone would hide why.
        reason = f"wrong output; the program ended: {result.describe()}"
    elif not actual and sample.output:
        reason = "wrong output (nothing printed)"
    else:
        reason = "wrong output"
    lines = [f"Test {case.index} failed: {reason}.", f"Command: {invocation}"]
    if stopped is None:
        lines.append(f"The program ended with {result.describe()}.")
    if sample.feed == "stdin":
        lines.append(f"Standard input:\n{_cut(sample.input, _TEXT_CHARS) or '(empty)'}")
    lines.append(f"Expected output:\n{_cut(sample.output, _TEXT_CHARS) or '(nothing)'}")
    shown_actual = _cut(actual, _TEXT_CHARS) or "(nothing)"
    lines.append(f"Actual output (stdout then stderr, lines stripped):\n{shown_actual}")
    if stopped is None:  # a diff against the partial output of a killed run would only mislead
        lines.append(_diff(sample.output, actual))
    errors = _decode(result.stderr).strip()
    if errors:
        lines.append(f"Standard error (end):\n{_tail(errors, _STDERR_CHARS)}")
    return TestOutcome(
        case, False, f"test {case.index} failed: {reason}", _cut("\n".join(lines), _OUTCOME_CHARS),
        result.wall_seconds,
    )


def _diff(expected: str, actual: str) -> str:
    diff = list(difflib.unified_diff(
        expected.splitlines(), actual.splitlines(), "expected", "actual", lineterm="", n=1,
    ))
    if not diff:
        return f"The outputs differ only in whitespace or line ends: expected {_preview(expected)}, " \
               f"got {_preview(actual)}."
    if len(diff) > _DIFF_LINES:
        hidden = len(diff) - _DIFF_LINES
        diff = [*diff[:_DIFF_LINES], f"... ({hidden} more diff lines)"]
    return "Diff (expected -> actual):\n" + "\n".join(_cut(line, 200) for line in diff)


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _cut(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, marking the cut."""
    if len(text) <= limit:
        return text
    marker = " [...]"
    return text[: max(0, limit - len(marker))] + marker


def _tail(text: str, limit: int) -> str:
    text = text.rstrip()
    if len(text) <= limit:
        return text
    return "[...] " + text[-(limit - 6):]
