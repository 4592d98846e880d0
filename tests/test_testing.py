"""Specification of pipeline.testing: loading SACToR test tasks and running them against a program."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

from pipeline.config import SandboxSettings
from pipeline.errors import TaskInputError
from pipeline.records import SampleRun, TestCase, TestSuite
from pipeline.sandbox import Sandbox
from pipeline.task import Task
from pipeline.testing import (
    TestOutcome,
    TestVerdict,
    input_files,
    load_test_suite,
    run_test_suite,
)

# ---------------------------------------------------------------------------------------------------------
# The real sandbox, and programs under test


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    """The sandbox with default settings, as a batch run opens it."""
    async with Sandbox.open(SandboxSettings()) as opened:
        yield opened


PROGRAM_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(int argc, char **argv) {
    long sum = 0, x;
    if (argc > 1 && strcmp(argv[1], "loop") == 0) for (;;) {}
    if (argc > 1 && strcmp(argv[1], "flood") == 0) for (;;) fputs("yyyyyyyyyyyyyyyyyyyyyyyy\n", stdout);
    if (argc > 2 && strcmp(argv[1], "exit") == 0) return atoi(argv[2]);
    if (argc > 1 && strcmp(argv[1], "write") == 0) {
        FILE *f = fopen("written.txt", "w");
        if (!f) return 9;
        fputs("hello\n", f);
        fclose(f);
        puts("wrote");
        return 0;
    }
    if (argc > 1) for (int i = 1; i < argc; i++) sum += atol(argv[i]);
    else while (scanf("%ld", &x) == 1) sum += x;
    printf("   sum = %ld  \n\t\n", sum);
    fprintf(stderr, "  checked\n");
    return 0;
}
"""


@pytest.fixture(scope="session")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small C program: sums its arguments (or stdin), or loops, floods, exits or writes on request."""
    directory = tmp_path_factory.mktemp("program")
    source = directory / "calc.c"
    source.write_text(PROGRAM_C)
    binary = directory / "calc"
    subprocess.run(["gcc", "-O1", "-o", str(binary), str(source)], check=True, timeout=60)
    return binary


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    return path


def run_tests_task(tmp_path: Path, samples: list[dict[str, str]], flags: Sequence[str]) -> Task:
    """A SACToR test task with one run-tests command per (sample, flag)."""
    write_json(tmp_path / "samples.json", samples)
    commands = [
        {"command": f"sactor run-tests --type bin ./samples.json %t {n} {flag}".strip(), "test_id": n}
        for n, flag in enumerate(flags)
    ]
    return Task("t", tmp_path / "t.c", write_json(tmp_path / "test_task.json", commands))


# ---------------------------------------------------------------------------------------------------------
# Loading


def test_run_tests_commands_become_samples(tmp_path: Path) -> None:
    """run-tests commands resolve to their samples, with the feed of their flag (args without one)."""
    samples = [{"input": "1 2", "output": "sum = 3"}, {"input": "4", "output": "sum = 4"}]
    task = run_tests_task(tmp_path, samples + samples[:1], ["--feed-as-args", "--feed-as-stdin", ""])
    suite = load_test_suite(task)
    samples_file = str(tmp_path / "samples.json")
    assert suite.base_dir == tmp_path
    assert suite.files == ()
    assert [case.sample for case in suite.cases] == [
        SampleRun("1 2", "sum = 3", "args", samples_file, 0),
        SampleRun("4", "sum = 4", "stdin", samples_file, 1),
        SampleRun("1 2", "sum = 3", "args", samples_file, 2),
    ]
    assert suite.cases[1].argv == (
        "sactor",
        "run-tests",
        "--type",
        "bin",
        "./samples.json",
        "%t",
        "1",
        "--feed-as-stdin",
    )
    assert suite.cases[1].raw == "sactor run-tests --type bin ./samples.json %t 1 --feed-as-stdin"


def test_list_commands_absolute_samples_and_extra_keys(tmp_path: Path) -> None:
    """A command may be a list of strings, name its samples file absolutely, and carry other keys."""
    samples = write_json(tmp_path / "elsewhere" / "s.json", [{"input": "", "output": ""}])
    command = ["sactor", "run-tests", "--feed-as-stdin", "--type", "bin", str(samples), "%t", "0"]
    task = Task(
        "t",
        tmp_path / "t.c",
        write_json(
            tmp_path / "tests" / "task.json",
            [
                {"command": command, "test_id": 0, "note": {"anything": [1, 2]}},
            ],
        ),
    )
    (case,) = load_test_suite(task).cases
    assert case == TestCase(0, " ".join(command), tuple(command), SampleRun("", "", "stdin", str(samples), 0))


def test_plain_commands_keep_their_tokens_and_name_their_files(tmp_path: Path) -> None:
    """Plain commands keep %t; the files they name in the JSON's directory are listed for the copy."""
    (tmp_path / "check.sh").write_text("exit 0\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "in.txt").write_text("1\n")
    task = Task(
        "t",
        tmp_path / "t.c",
        write_json(
            tmp_path / "task.json",
            [
                {"command": "sh check.sh %t   data/in.txt missing.txt /etc/hostname"},
                {"command": ["%t", "--flag"]},
            ],
        ),
    )
    suite = load_test_suite(task)
    assert [(case.argv, case.sample) for case in suite.cases] == [
        (("sh", "check.sh", "%t", "data/in.txt", "missing.txt", "/etc/hostname"), None),
        (("%t", "--flag"), None),
    ]
    assert suite.files == ("check.sh", "data/in.txt")


def test_samples_kind_builds_one_case_per_sample(tmp_path: Path) -> None:
    """A samples-kind JSON gives one case per sample, fed as the task says."""
    path = write_json(tmp_path / "samples.json", [{"input": "1", "output": "a"}, {"input": "2", "output": "b"}])
    suite = load_test_suite(Task("t", tmp_path / "t.c", path, test_kind="samples", feed="args"))
    assert [case.sample for case in suite.cases] == [
        SampleRun("1", "a", "args", str(path), 0),
        SampleRun("2", "b", "args", str(path), 1),
    ]
    assert suite.cases[1].argv[-3:] == ("%t", "1", "--feed-as-args")


@pytest.mark.parametrize(
    ("num_tests", "expected"),
    [
        pytest.param(None, 3, id="all"),
        pytest.param(2, 2, id="first-two"),
        pytest.param(10, 3, id="more-than-there"),
    ],
)
def test_num_tests_keeps_the_first_cases(tmp_path: Path, num_tests: int | None, expected: int) -> None:
    """num_tests keeps the first N cases."""
    task = run_tests_task(tmp_path, [{"input": str(n), "output": str(n)} for n in range(3)], ["", "", ""])
    suite = load_test_suite(task, num_tests=num_tests)
    assert [case.index for case in suite.cases] == list(range(expected))


GOOD_SAMPLES = [{"input": "1", "output": "1"}]


@pytest.mark.parametrize(
    ("tests", "samples", "reason", "bad_file"),
    [
        pytest.param(None, None, "does not exist", "task.json", id="missing-file"),
        pytest.param(b'[{"command": "\xff"}]', None, "not UTF-8", "task.json", id="not-utf8"),
        pytest.param(b'[\n{"command": "x"},\n}', None, "invalid JSON at line 3", "task.json", id="invalid-json"),
        pytest.param(b"[" * 100_000, None, "nested too deeply", "task.json", id="nested-too-deeply"),
        pytest.param({"command": "x"}, None, "must be a JSON list", "task.json", id="not-a-list"),
        pytest.param([], None, "no tests", "task.json", id="zero-tests"),
        pytest.param([{"cmd": "x"}], None, '"command"', "task.json", id="entry-without-command"),
        pytest.param(["%t"], None, '"command"', "task.json", id="entry-not-an-object"),
        pytest.param([{"command": "   "}], None, "empty", "task.json", id="empty-command"),
        pytest.param([{"command": []}], None, "empty", "task.json", id="empty-command-list"),
        pytest.param([{"command": ["%t", 3]}], None, "list of strings", "task.json", id="non-string-token"),
        pytest.param(
            [{"command": "sactor run-tests --type bin nowhere.json %t 0"}],
            None,
            "does not exist",
            "task.json",
            id="missing-samples-file",
        ),
        pytest.param(
            [{"command": "sactor run-tests --type bin s.json %t 1"}],
            GOOD_SAMPLES,
            "out of range",
            "task.json",
            id="index-out-of-range",
        ),
        pytest.param(
            [{"command": "sactor run-tests --type bin s.json %t -1"}],
            GOOD_SAMPLES,
            "out of range",
            "task.json",
            id="negative-index",
        ),
        pytest.param(
            [{"command": "sactor run-tests --type bin s.json %t one"}],
            GOOD_SAMPLES,
            "not an integer",
            "task.json",
            id="index-not-a-number",
        ),
        pytest.param(
            [{"command": "sactor run-tests --type lib s.json %t 0"}],
            GOOD_SAMPLES,
            "--type lib is not supported",
            "task.json",
            id="library-type",
        ),
        pytest.param(
            [{"command": "sactor run-tests s.json %t 0"}],
            GOOD_SAMPLES,
            "--type is required",
            "task.json",
            id="type-missing",
        ),
        pytest.param(
            [{"command": "sactor run-tests --type bin s.json ./prog 0"}],
            GOOD_SAMPLES,
            "must be %t",
            "task.json",
            id="target-not-%t",
        ),
        pytest.param(
            [{"command": "sactor run-tests --type bin s.json %t 0 --feed-as-args --feed-as-stdin"}],
            GOOD_SAMPLES,
            "only one of",
            "task.json",
            id="two-feeds",
        ),
        pytest.param(
            [{"command": "sactor run-tests --type bin s.json %t 0"}],
            [{"input": "1"}],
            '"input" and "output"',
            "s.json",
            id="sample-without-output",
        ),
        pytest.param(
            [{"command": "sactor run-tests --type bin s.json %t 0"}],
            [{"input": 1, "output": "1"}],
            "must be strings",
            "s.json",
            id="sample-input-not-a-string",
        ),
        pytest.param(
            [{"command": "sactor run-tests --type bin s.json %t 0"}],
            {"0": GOOD_SAMPLES[0]},
            "must be a JSON list",
            "s.json",
            id="samples-not-a-list",
        ),
        pytest.param(
            [{"command": "sactor run-tests --type bin s.json %t 0"}],
            [{"input": "1", "output": "1\n"}],
            "can never match",
            "s.json",
            id="expected-output-with-trailing-newline",
        ),
    ],
)
def test_malformed_tests_raise_naming_the_file(
    tmp_path: Path, tests: Any, samples: Any, reason: str, bad_file: str
) -> None:
    """Every malformed test file raises TaskInputError naming the file and the reason."""
    path = tmp_path / "task.json"
    if isinstance(tests, bytes):
        path.write_bytes(tests)
    elif tests is not None:
        write_json(path, tests)
    if samples is not None:
        write_json(tmp_path / "s.json", samples)
    with pytest.raises(TaskInputError) as caught:
        load_test_suite(Task("t", tmp_path / "t.c", path))
    message = str(caught.value)
    assert str(tmp_path / bad_file) in message
    assert reason in message


def test_input_files_lists_what_defines_the_task(tmp_path: Path) -> None:
    """input_files: the C file, the test JSON, the samples files and the referenced files, sorted."""
    c_file = tmp_path / "t.c"
    write_json(tmp_path / "b.json", GOOD_SAMPLES)
    write_json(tmp_path / "a.json", GOOD_SAMPLES)
    (tmp_path / "check.sh").write_text("exit 0\n")
    task = Task(
        "t",
        c_file,
        write_json(
            tmp_path / "tests.json",
            [
                {"command": "sactor run-tests --type bin b.json %t 0"},
                {"command": "sactor run-tests --type bin a.json %t 0"},
                {"command": "sactor run-tests --type bin ./b.json %t 0"},
                {"command": "sactor run-tests --type bin gone.json %t 0"},
                {"command": "sh check.sh %t"},
                {"no": "command"},
            ],
        ),
    )
    assert input_files(task) == sorted(
        [c_file, tmp_path / "tests.json", tmp_path / "a.json", tmp_path / "b.json", tmp_path / "check.sh"]
    )


@pytest.mark.parametrize(
    "content",
    [
        pytest.param("[{", id="invalid-json"),
        pytest.param('{"a": 1}', id="not-a-list"),
        pytest.param(None, id="missing"),
        pytest.param(b"\xff[]", id="not-utf8"),
        pytest.param("[" * 100_000 + "]" * 100_000, id="nested-too-deeply"),
        pytest.param(json.dumps([{"command": "sh x\u0000y " + "z" * 5000}]), id="unusable-file-names"),
        pytest.param(json.dumps([{"command": "sactor run-tests --type bin \u0000 %t 0"}]), id="nul-samples"),
    ],
)
def test_input_files_never_raises(tmp_path: Path, content: str | bytes | None) -> None:
    """For a broken or missing test JSON, input_files still returns the C file and the JSON."""
    path = tmp_path / "tests.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    assert input_files(Task("t", tmp_path / "t.c", path)) == [tmp_path / "t.c", path]


# ---------------------------------------------------------------------------------------------------------
# Running


async def run(
    program: Path,
    task: Task,
    sandbox: Sandbox,
    *,
    wall_seconds: float = 5.0,
    output_bytes: int = 40_000,
    fail_fast: bool = False,
) -> TestVerdict:
    """Run the task's suite against a copy of ``program`` in a build directory, as the stage loop does."""
    limits = sandbox.limits(wall_seconds=wall_seconds, output_bytes=output_bytes)
    async with sandbox.build_dir() as build:
        binary = build / program.name
        await anyio.to_thread.run_sync(shutil.copy2, program, binary)
        return await run_test_suite(binary, load_test_suite(task), sandbox=sandbox, limits=limits, fail_fast=fail_fast)


async def test_samples_pass_fed_as_args_and_on_stdin(tmp_path: Path, program: Path, sandbox: Sandbox) -> None:
    """Args feed and stdin feed both pass; stdout and stderr are joined and each line is stripped."""
    samples = [{"input": " 1   2 3", "output": "sum = 6\n\nchecked"}]
    task = run_tests_task(tmp_path, samples * 2, ["--feed-as-args", "--feed-as-stdin"])
    verdict = await run(program, task, sandbox)
    assert [(o.passed, o.summary, o.feedback) for o in verdict.outcomes] == [
        (True, "test 0 passed", ""),
        (True, "test 1 passed", ""),
    ]
    assert verdict.passed and verdict.failures == () and verdict.feedback() == ""


async def test_samples_kind_runs_with_the_task_feed(tmp_path: Path, program: Path, sandbox: Sandbox) -> None:
    """A samples-kind task runs each sample with the task's feed."""
    path = write_json(tmp_path / "samples.json", [{"input": "5 6", "output": "sum = 11\n\nchecked"}])
    verdict = await run(program, Task("t", tmp_path / "t.c", path, test_kind="samples", feed="stdin"), sandbox)
    assert verdict.passed


async def test_a_program_that_prints_nothing_is_told_so(tmp_path: Path, program: Path, sandbox: Sandbox) -> None:
    """Nothing printed where output was expected: the reason says so (the report counts it as "no output")."""
    task = run_tests_task(tmp_path, [{"input": "exit 0", "output": "sum = 5"}], ["--feed-as-args"])
    verdict = await run(program, task, sandbox)
    (outcome,) = verdict.outcomes
    assert outcome.summary == "test 0 failed: wrong output (nothing printed)"


async def test_a_mismatch_shows_expected_actual_and_a_diff(tmp_path: Path, program: Path, sandbox: Sandbox) -> None:
    """A wrong output fails, and the feedback shows the input, the expected and actual output and a diff."""
    task = run_tests_task(tmp_path, [{"input": "2 2", "output": "sum = 5\n\nchecked"}], ["--feed-as-stdin"])
    verdict = await run(program, task, sandbox)
    (outcome,) = verdict.outcomes
    assert not verdict.passed and verdict.failures == (outcome,)
    assert outcome.summary == "test 0 failed: wrong output"
    for expected in [
        "Command: ./calc < input\nThe program ended with exit status 0.",
        "Standard input:\n2 2",
        "Expected output:\nsum = 5\n\nchecked",
        "Actual output (stdout then stderr, lines stripped):\nsum = 4\n\nchecked",
        "-sum = 5\n+sum = 4",
        "Standard error (end):\nchecked",
    ]:
        assert expected in outcome.feedback
    assert verdict.feedback().startswith("Test 0 failed: wrong output.")


async def test_plain_commands_pass_on_exit_zero(tmp_path: Path, program: Path, sandbox: Sandbox) -> None:
    """A plain command passes when it exits with 0 and fails, with its exit status, otherwise."""
    task = Task(
        "t",
        tmp_path / "t.c",
        write_json(
            tmp_path / "task.json",
            [
                {"command": "%t exit 0"},
                {"command": "%t exit 3"},
            ],
        ),
    )
    verdict = await run(program, task, sandbox)
    assert [(o.passed, o.summary) for o in verdict.outcomes] == [
        (True, "test 0 passed"),
        (False, "test 1 failed: exit status 3"),
    ]
    assert "Command (./calc is your program): ./calc exit 3" in verdict.failures[0].feedback


async def test_a_referenced_script_runs_from_the_copy(tmp_path: Path, program: Path, sandbox: Sandbox) -> None:
    """A plain command may run a script of the test directory, which gets the program as an argument."""
    (tmp_path / "check.sh").write_text('out=$("$1" 4 5 2>/dev/null)\n[ "$out" = "$(printf "   sum = 9  \\n\\t")" ]\n')
    task = Task("t", tmp_path / "t.c", write_json(tmp_path / "task.json", [{"command": "sh check.sh %t"}]))
    verdict = await run(program, task, sandbox)
    assert verdict.passed, verdict.feedback()


async def test_a_timeout_fails_the_test(tmp_path: Path, program: Path, sandbox: Sandbox) -> None:
    """A program that runs past the deadline fails with a timeout."""
    task = run_tests_task(tmp_path, [{"input": "loop", "output": ""}], ["--feed-as-args"])
    started = time.monotonic()
    verdict = await run(program, task, sandbox, wall_seconds=0.5)
    assert time.monotonic() - started < 4
    (outcome,) = verdict.outcomes
    assert not outcome.passed
    assert outcome.summary.startswith("test 0 failed: timed out after 0.5")


async def test_too_much_output_fails_the_test(tmp_path: Path, program: Path, sandbox: Sandbox) -> None:
    """A program that exceeds the output cap fails with that reason, even with no expected output."""
    task = run_tests_task(tmp_path, [{"input": "flood", "output": ""}], ["--feed-as-args"])
    verdict = await run(program, task, sandbox, output_bytes=10_000)
    (outcome,) = verdict.outcomes
    assert not outcome.passed
    assert outcome.summary.startswith("test 0 failed: output exceeded")
    assert len(outcome.feedback) <= 2500


async def test_programs_run_in_a_private_copy(tmp_path: Path, program: Path, sandbox: Sandbox) -> None:
    """A program that writes a file in its working directory leaves the test directory unchanged."""
    task = run_tests_task(tmp_path, [{"input": "write", "output": "wrote"}], ["--feed-as-args"])
    before = sorted(os.listdir(tmp_path))
    verdict = await run(program, task, sandbox)
    assert verdict.passed, verdict.feedback()
    assert sorted(os.listdir(tmp_path)) == before


async def test_a_cpu_slot_is_held_only_while_a_test_program_runs(
    tmp_path: Path, program: Path, sandbox: Sandbox
) -> None:
    """The working copy is made while every CPU slot is taken; each test then takes a slot for its process only."""
    (tmp_path / "data.txt").write_text("x\n")
    task = Task("t", tmp_path / "t.c", write_json(tmp_path / "task.json", [
        {"command": "%t exit 0 data.txt"}, {"command": "%t loop"}, {"command": "%t exit 0"},
    ]))
    cpu = anyio.CapacityLimiter(1)
    other = object()  # another task's compile, holding the only slot
    await cpu.acquire_on_behalf_of(other)
    verdicts: list[TestVerdict] = []
    limits = sandbox.limits(wall_seconds=0.5, output_bytes=10_000)
    async with sandbox.build_dir() as build:
        binary = build / program.name
        await anyio.to_thread.run_sync(shutil.copy2, program, binary)

        async def suite() -> None:
            verdicts.append(await run_test_suite(binary, load_test_suite(task), sandbox=sandbox, limits=limits,
                                                 cpu=cpu))

        async with anyio.create_task_group() as tg:
            tg.start_soon(suite)
            with anyio.fail_after(5):  # the copy with its file is there before any slot is free
                while not list(sandbox.scratch.glob("work-*/data.txt")):  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            assert cpu.statistics().tasks_waiting == 1 and not verdicts
            cpu.release_on_behalf_of(other)
    (verdict,) = verdicts
    assert [(o.passed, o.summary) for o in verdict.outcomes] == [
        (True, "test 0 passed"), (False, "test 1 failed: timed out after 0.5 s; process tree killed"),
        (True, "test 2 passed"),
    ]
    # Every slot is back, the timed-out run's too, and the copy is gone.
    assert cpu.borrowed_tokens == 0 and not list(sandbox.scratch.glob("work-*"))


async def test_fail_fast_stops_at_the_first_failure(tmp_path: Path, program: Path, sandbox: Sandbox) -> None:
    """fail_fast stops after the first failing test; otherwise every test runs."""
    task = Task(
        "t",
        tmp_path / "t.c",
        write_json(
            tmp_path / "task.json",
            [
                {"command": "%t exit 0"},
                {"command": "%t exit 1"},
                {"command": "%t exit 2"},
            ],
        ),
    )
    assert len((await run(program, task, sandbox, fail_fast=True)).outcomes) == 2
    assert len((await run(program, task, sandbox)).outcomes) == 3


# ---------------------------------------------------------------------------------------------------------
# Verdict feedback


def failure(index: int, size: int) -> TestOutcome:
    case = TestCase(index, "%t", ("%t",), None)
    return TestOutcome(case, False, f"test {index} failed", f"F{index}:" + "x" * (size - len(f"F{index}:")), 0.0)


@pytest.mark.parametrize(
    ("sizes", "max_chars", "shown", "more"),
    [
        pytest.param([100, 100], 4000, [0, 1], None, id="all-fit"),
        pytest.param([100, 100, 100], 200, [0], "(2 further failing tests not shown.)", id="first-fits"),
        pytest.param([100, 100, 100], 260, [0, 1], "(1 further failing test not shown.)", id="two-fit"),
        pytest.param([5000, 10], 300, [0], "(1 further failing test not shown.)", id="first-cut"),
    ],
)
def test_verdict_feedback_is_bounded(sizes: list[int], max_chars: int, shown: list[int], more: str | None) -> None:
    """The verdict's feedback holds the first failures that fit, counts the rest, and fits max_chars."""
    passed = TestOutcome(TestCase(9, "%t", ("%t",), None), True, "test 9 passed", "", 0.0)
    verdict = TestVerdict((passed, *(failure(n, size) for n, size in enumerate(sizes))))
    text = verdict.feedback(max_chars)
    assert len(text) <= max_chars
    assert [n for n in range(len(sizes)) if f"F{n}:" in text] == shown
    assert (more in text) if more else ("further" not in text)


def test_an_empty_verdict_has_not_passed() -> None:
    """A verdict with no outcomes does not count as passed."""
    assert not TestVerdict(()).passed


def test_suite_is_a_plain_value(tmp_path: Path) -> None:
    """A loaded suite compares equal to one built by hand (frozen dataclasses all the way down)."""
    task = run_tests_task(tmp_path, GOOD_SAMPLES, [""])
    sample = SampleRun("1", "1", "args", str(tmp_path / "samples.json"), 0)
    raw = "sactor run-tests --type bin ./samples.json %t 0"
    assert load_test_suite(task) == TestSuite(tmp_path, (TestCase(0, raw, tuple(raw.split()), sample),), ())


def test_absolute_samples_path_from_another_machine_uses_the_file_beside(tmp_path: Path) -> None:
    """A run-tests command naming a missing absolute path reads the samples file of that name beside the task;
    when that is missing too, the error names both places."""
    gone = "/home/sactor-author/data/p1/p1_samples.json"
    tests = write_json(tmp_path / "test_task.json",
                       [{"command": f"sactor run-tests --type bin {gone} %t 0 --feed-as-stdin"}])
    task = Task("t", tmp_path / "t.c", tests)
    with pytest.raises(TaskInputError, match=r"nor does .*p1_samples\.json beside the test task"):
        load_test_suite(task)
    beside = write_json(tmp_path / "p1_samples.json", [{"input": "1", "output": "2"}])
    suite = load_test_suite(task)
    assert suite.cases[0].sample == SampleRun("1", "2", "stdin", str(beside), 0)
    assert beside in input_files(task)


@pytest.mark.parametrize(
    "made_by", [pytest.param("suite", id="own-copy"), pytest.param("verifier", id="verification-dirs")]
)
async def test_each_test_can_write_the_copy_the_tests_before_it_wrote(
    tmp_path: Path, program: Path, sandbox: Sandbox, made_by: str
) -> None:
    """The tests of a suite share one working copy: each, under a uid of its own (as root), may change the files
    the tests before it changed, whether the suite made the copy or the verifier made it with the build directory."""
    (tmp_path / "data.txt").write_text("start\n")
    (tmp_path / "count.sh").write_text(
        'echo run >> "$3" || exit 7\n[ "$(wc -l < "$3")" -eq "$1" ] || exit 8\n'
        'u=$(id -u); if [ "$2" = distinct ] && grep -qx "$u" uids.txt 2>/dev/null; then exit 9; fi\n'
        'echo "$u" >> uids.txt || exit 10\n'
    )
    distinct = "distinct" if sandbox.isolation.unprivileged else "any"
    task = Task("t", tmp_path / "t.c", write_json(tmp_path / "task.json", [
        {"command": f"sh count.sh {n} {distinct} data.txt %t"} for n in (2, 3, 4)
    ]))
    suite = load_test_suite(task)
    assert set(suite.files) == {"count.sh", "data.txt"}
    limits = sandbox.limits(wall_seconds=5.0, output_bytes=10_000)
    if made_by == "suite":
        verdict = await run(program, task, sandbox)
    else:
        async with sandbox.verification_dirs(suite.base_dir, suite.files, sources={"note.txt": "x"}) as (build, work):
            assert (build / "note.txt").read_text() == "x"
            binary = build / program.name
            await anyio.to_thread.run_sync(shutil.copy2, program, binary)
            verdict = await run_test_suite(binary, suite, sandbox=sandbox, limits=limits, workdir=work)
            assert (work / "data.txt").read_text() == "start\nrun\nrun\nrun\n"
    assert [(o.passed, o.summary) for o in verdict.outcomes] == [(True, f"test {n} passed") for n in range(3)]
    assert (tmp_path / "data.txt").read_text() == "start\n"
