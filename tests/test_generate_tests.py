"""``generate-tests`` and the differential oracle it stands on: tests recorded from the C program itself.

Through the real CLI: the files it writes load in our runner and pass against the C program; they run the same
under an independent reimplementation of SACToR's ``sactor run-tests`` (feed as stdin or as arguments, stdout
and stderr joined, lines stripped, compared for equality; exit status not judged); a batch run over them rejects
a wrong translation and repairs it; inputs with undefined behaviour or time-dependent output are not written;
inputs the model proposes (through the simulator) are used, and the simulator's log shows the request.
Directly: :func:`build_oracle`'s rules (nondeterministic and UB inputs rejected, clean ones kept, seeded) and
the parsing of proposals.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from pipeline.config import SandboxSettings
from pipeline.differential import build_oracle, mutations
from pipeline.proposals import REQUEST_HEAD, parse_proposals
from pipeline.sandbox import Sandbox
from pipeline.task import Feed, Task
from pipeline.testing import load_test_suite, run_test_suite
from tests.conftest import Cli, answer

ADD_C = r"""#include <stdio.h>
/* add.c: the sum of two numbers on stdin */
int main(void) {
    long a, b;
    if (scanf("%ld %ld", &a, &b) != 2) { puts("bad input"); return 1; }
    printf("%ld\n", a + b);
    return 0;
}
"""
# The same program, wrong for sums above 100 (a translation bug of the kind tests should catch).
ADD_WRONG_C = ADD_C.replace('printf("%ld\\n", a + b);', 'printf("%ld\\n", a + b > 100 ? a + b + 1 : a + b);')
MUL_C = r"""#include <stdio.h>
#include <stdlib.h>
/* mul.c: the product of its arguments */
int main(int argc, char **argv) {
    long p = 1;
    if (argc < 2) { fprintf(stderr, "usage: mul N...\n"); return 2; }
    for (int i = 1; i < argc; i++) p *= atol(argv[i]);
    printf("product %ld\n", p);
    return 0;
}
"""
MUL_WRONG_C = MUL_C.replace("p *= atol(argv[i]);", "p *= atol(argv[i]); if (p > 100) p--;")
# Squares its input: signed overflow (undefined behaviour) from 46341 on.
SQUARE_C = r"""#include <stdio.h>
/* sq.c */
int main(void) {
    int x = 0;
    if (scanf("%d", &x) != 1) { puts("none"); return 0; }
    printf("%d\n", x * x);
    return 0;
}
"""
# Prints the time for negative inputs (nondeterministic), twice the input otherwise.
CLOCK_C = r"""#include <stdio.h>
#include <time.h>
/* clock.c */
int main(void) {
    long n = 0;
    if (scanf("%ld", &n) != 1) { puts("none"); return 0; }
    if (n < 0) printf("now %ld\n", (long)time(NULL));
    else printf("%ld\n", n % 1000 * 2);
    return 0;
}
"""
# Seeds rand() from the clock for inputs above 5.
RAND_C = r"""#include <stdio.h>
#include <stdlib.h>
#include <time.h>
/* dice.c */
int main(void) {
    int n = 0;
    if (scanf("%d", &n) != 1) return 0;
    if (n > 5) { srand((unsigned)time(NULL)); printf("%d\n", rand()); }
    else printf("%d\n", n + 1);
    return 0;
}
"""

RUST_ADD = """use std::io::Read;

fn main() {{
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text).unwrap();
    let v: Vec<{int}> = text.split_whitespace().filter_map(|t| t.parse().ok()).collect();
    if v.len() < 2 {{
        println!("bad input");
        std::process::exit(1);
    }}
    println!("{{}}", v[0] + v[1]);
}}
"""


def gcc(source: str, out: Path) -> Path:
    src = out.with_suffix(".c")
    src.write_text(source)
    subprocess.run(["gcc", "-O0", "-w", "-o", str(out), str(src)], check=True)
    return out


def generate(cli: Cli, *args: str | Path) -> Any:
    return cli("generate-tests", *args)


def samples_of(path: Path) -> list[dict[str, str]]:
    return json.loads(path.read_text())  # type: ignore[no-any-return]


# -- an independent reading of SACToR's `sactor run-tests --type bin` ----------------------------------------------


def sactor_run_tests(command: str, cwd: Path, target: Path) -> bool:
    """One test command as SACToR runs it: the samples file read relative to the test task's folder; the sample
    fed as arguments (``f"{target} {input}".split()``, the default) or on stdin (``input + "\\n"``); passes when
    stdout + stderr, each line stripped, equals ``output``. Written from SACToR's documented behaviour."""
    words = command.split()
    assert words[:4] == ["sactor", "run-tests", "--type", "bin"], command
    positional = [w for w in words[4:] if not w.startswith("--")]
    samples_name, placeholder, number = positional
    assert placeholder == "%t"
    sample = json.loads((cwd / samples_name).read_text())[int(number)]
    if "--feed-as-stdin" in words:
        proc = subprocess.run([str(target)], input=sample["input"] + "\n", capture_output=True, text=True,
                              cwd=cwd, timeout=30)
    else:
        proc = subprocess.run(f"{target} {sample['input']}".split(), capture_output=True, text=True, cwd=cwd,
                              timeout=30)
    lines = (proc.stdout + proc.stderr).splitlines()
    return "\n".join(line.strip() for line in lines) == str(sample["output"])


async def our_runner(task_json: Path, binary: Path, feed: Feed) -> list[bool]:
    task = Task(task_json.stem, task_json.with_suffix(".c"), task_json, "task", feed)
    suite = load_test_suite(task)
    async with Sandbox.open(SandboxSettings()) as sandbox, sandbox.build_dir() as work:
        # The sandbox's uid cannot enter pytest's private tmp_path: the program goes where builds go.
        program = work / binary.name
        shutil.copy2(binary, program)
        verdict = await run_test_suite(program, suite, sandbox=sandbox,
                                       limits=sandbox.limits(wall_seconds=30, output_bytes=40_000))
    return [outcome.passed for outcome in verdict.outcomes]


# -- generate-tests through the CLI ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("feed", "name", "source", "wrong", "seeds"),
    [
        pytest.param("stdin", "add", ADD_C, ADD_WRONG_C, ["1 2", "40 2", "99 2", "-5 5", "70 70"], id="stdin"),
        pytest.param("args", "mul", MUL_C, MUL_WRONG_C, ["2 3", "7", "10 11 12", "", "-3 4"], id="args"),
    ],
)
async def test_generated_tests_run_identically_under_sactor_semantics_and_our_runner(
    cli: Cli, tmp_path: Path, feed: str, name: str, source: str, wrong: str, seeds: list[str]
) -> None:
    """NAME.json and NAME_samples.json load in our runner, pass against the C program, and every test gives
    the same verdict under SACToR's run-tests semantics and ours, on the C program and on a wrong variant."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / f"{name}.c").write_text(source)
    flags = [arg for seed in seeds for arg in ("--input", seed)]
    result = generate(cli, corpus / f"{name}.c", *flags, f"--feed-as-{feed}", "--mutations", "4")
    assert result.returncode == 0, result.output
    task_json, samples = corpus / f"{name}.json", corpus / f"{name}_samples.json"
    assert f"{name}.c: " in result.stdout and str(task_json) in result.stdout
    written = samples_of(samples)
    assert [s["input"] for s in written][: len(seeds)] == seeds
    assert len(written) == len(seeds) + 4
    commands = json.loads(task_json.read_text())
    assert commands[0] == {"command": f"sactor run-tests --type bin ./{name}_samples.json %t 0 --feed-as-{feed}",
                           "test_id": 0}
    assert len(commands) == len(written)

    for program, expect_all in ((source, True), (wrong, False)):
        binary = gcc(program, tmp_path / f"bin-{expect_all}")
        sactor = [sactor_run_tests(c["command"], corpus, binary) for c in commands]
        ours = await our_runner(task_json, binary, feed)  # type: ignore[arg-type]
        assert ours == sactor
        if expect_all:
            assert all(ours)
        else:
            assert any(ours) and not all(ours), "the wrong variant must fail some tests and pass others"


def test_batch_run_uses_generated_tests_and_repairs_a_translation_they_reject(
    cli: Cli, tmp_path: Path, simulator_factory: Any
) -> None:
    """A batch run over generate-tests' output (--c-files DIR --json-files DIR) rejects a translation that is
    wrong on a recorded input (i32 instead of long), and the repair request quotes that input."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "add.c").write_text(ADD_C)
    made = generate(cli, corpus, "--input", "1 2", "--input", "3000000000 4")
    assert made.returncode == 0, made.output
    answers = tmp_path / "answers"
    (answers / "add").mkdir(parents=True)
    (answers / "add" / "match.txt").write_text("add.c")
    (answers / "add" / "unidiomatic-1.md").write_text(answer(RUST_ADD.format(int="i32")))
    for stage in ("unidiomatic-2", "idiomatic-1"):
        (answers / "add" / f"{stage}.md").write_text(answer(RUST_ADD.format(int="i64")))
    sim, url = simulator_factory(answers_dir=answers)
    out = tmp_path / "out"
    run = cli("--c-files", corpus, "--json-files", corpus, "--output", out, "--base-url", url, "--model",
              "sim-model", "--workers", "2")
    assert run.returncode == 0, run.output
    result = json.loads((out / "add" / "result.json").read_text())
    assert result["status"] == "verified"
    translations = [r for r in sim.chat_requests if r.stage == "unidiomatic"]
    assert len(translations) == 2
    repair = translations[1].body["messages"][-1]["content"]
    assert "3000000000 4" in repair and "3000000004" in repair


def test_inputs_with_undefined_behaviour_or_time_dependent_output_are_not_written(
    cli: Cli, tmp_path: Path
) -> None:
    """Seeds on which the C program overflows a signed int, prints the time or seeds rand() from the clock are
    left out of the samples, and the output names each with the reason; the clean ones are written."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name, source in (("sq", SQUARE_C), ("clock", CLOCK_C), ("dice", RAND_C)):
        (corpus / f"{name}.c").write_text(source)
    seeds = tmp_path / "seeds.json"
    seeds.write_text(json.dumps([{"input": "3", "output": "ignored"}, "100000", "-4", "7", "0"]))
    result = generate(cli, corpus, "--seeds", seeds)
    assert result.returncode == 0, result.output
    assert samples_of(corpus / "sq_samples.json") == [
        {"input": "3", "output": "9"}, {"input": "-4", "output": "16"}, {"input": "7", "output": "49"},
        {"input": "0", "output": "0"}]
    assert samples_of(corpus / "clock_samples.json") == [
        {"input": "3", "output": "6"}, {"input": "100000", "output": "0"}, {"input": "7", "output": "14"},
        {"input": "0", "output": "0"}]
    assert samples_of(corpus / "dice_samples.json") == [
        {"input": "3", "output": "4"}, {"input": "-4", "output": "-3"}, {"input": "0", "output": "1"}]
    out = result.stdout
    assert "seed input 1 '100000' not used: undefined behaviour under AddressSanitizer/UndefinedBehaviorSanitizer" \
        in out
    assert "seed input 2 '-4' not used: the C program's output differs between two runs" in out
    assert "seed input 3 '7' not used: the C program's output differs between two runs" in out


def test_model_proposed_inputs_are_judged_and_written(
    cli: Cli, tmp_path: Path, simulator_factory: Any
) -> None:
    """--model-inputs N asks the configured server (the simulator's log shows one input-proposal request quoting
    the C program and the seeds); proposals are parsed from prose and a fenced list, and judged like seeds:
    the overflowing one is left out, the duplicate of a seed counted once."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "sq.c").write_text(SQUARE_C)
    answers = tmp_path / "answers" / "sq"
    answers.mkdir(parents=True)
    (answers / "match.txt").write_text("sq.c")
    (answers / "inputs-1.md").write_text(
        "Here are inputs covering edge cases:\n\n```json\n"
        '["3", "-7", 0, {"input": "100000"}, "46340"]\n```\n\nThe last one is the largest square that fits.\n')
    sim, url = simulator_factory(answers_dir=tmp_path / "answers")
    result = generate(cli, corpus, "--input", "3", "--model-inputs", "5", "--base-url", url, "--model", "sim-model")
    assert result.returncode == 0, result.output
    assert samples_of(corpus / "sq_samples.json") == [
        {"input": "3", "output": "9"}, {"input": "-7", "output": "49"}, {"input": "0", "output": "0"},
        {"input": "46340", "output": "2147395600"}]
    assert "sq.c: 4 tests (1 seed, 3 model)" in result.stdout
    asked = [r for r in sim.chat_requests if r.stage == "inputs"]
    assert len(asked) == 1 and asked[0].answer_key == "sq"
    prompt = asked[0].body["messages"][-1]["content"]
    assert prompt.startswith(REQUEST_HEAD) and "`sq.c`" in prompt and "x * x" in prompt
    assert '"3"' in prompt and "5 strings" in prompt and "standard input" in prompt


def test_without_inputs_or_with_tests_already_nothing_is_written(cli: Cli, tmp_path: Path) -> None:
    """A C file with no seed inputs gets no tests (exit 1, the flags to give are named); a file with tests
    already (NAME.json) is skipped unless --force; a seed no program can be given is refused (exit 2);
    --seeds DIR gives each program its NAME_seeds.json."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "add.c").write_text(ADD_C)
    empty = generate(cli, corpus)
    assert empty.returncode == 1
    assert "add.c: no tests written: no inputs to record" in empty.stdout and "--input TEXT" in empty.stdout
    assert not (corpus / "add.json").exists()
    (corpus / "add.json").write_text("[]")
    kept = generate(cli, corpus, "--input", "1 2")
    assert kept.returncode == 0, kept.output
    assert "add.c: skipped: it has tests already" in kept.stdout and "--force replaces them" in kept.stdout
    assert (corpus / "add.json").read_text() == "[]"
    nul = tmp_path / "nul.json"
    nul.write_text(json.dumps(["1 2", "1\u00002"]))
    refused = generate(cli, corpus, "--seeds", nul, "--force")
    assert refused.returncode == 2
    assert "seed input 1 cannot be given to a program (a NUL character" in refused.stderr
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    (seeds / "add_seeds.json").write_text('["5 5"]')
    forced = generate(cli, corpus, "--input", "1 2", "--seeds", seeds, "--force")
    assert forced.returncode == 0, forced.output
    assert samples_of(corpus / "add_samples.json") == [{"input": "1 2", "output": "3"},
                                                       {"input": "5 5", "output": "10"}]


# -- build_oracle directly ------------------------------------------------------------------------------------


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox.open(SandboxSettings()) as sb:
        yield sb


def suite_of(tmp_path: Path, samples: list[dict[str, str]]) -> Any:
    path = tmp_path / "prog_samples.json"
    path.write_text(json.dumps(samples))
    return load_test_suite(Task("prog", tmp_path / "prog.c", path, "samples", "stdin"))


async def oracle_of(sandbox: Sandbox, source: str, suite: Any, **kw: Any) -> Any:
    kw.setdefault("budget", 20)
    kw.setdefault("seed", 0)
    return await build_oracle(source, suite, sandbox=sandbox, cpu=anyio.CapacityLimiter(1),
                              limits=sandbox.limits(wall_seconds=10, output_bytes=40_000), **kw)


async def test_oracle_rejects_time_dependent_inputs_and_keeps_clean_ones(sandbox: Sandbox, tmp_path: Path) -> None:
    """On a program printing the time for negative inputs, the negative mutations are rejected as
    nondeterministic (the clock is shifted in the second run) and the others kept with the C output."""
    oracle = await oracle_of(sandbox, CLOCK_C, suite_of(tmp_path, [{"input": "21", "output": "42"}]))
    assert oracle.rejected.get("nondeterministic", 0) >= 2
    kept = {item.input: item.output for item in oracle.inputs}
    assert kept and not any(text.startswith("-") for text in kept)
    assert kept.get("22") == "44" and kept.get("0") == "0"
    assert not any(output.startswith("now") for output in kept.values())


async def test_oracle_rejects_undefined_behaviour_and_tries_proposals_first(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """Proposed inputs are tried before mutations under the same rules: the overflowing one is rejected as
    undefined behaviour, the clean ones kept first."""
    suite = suite_of(tmp_path, [{"input": "3", "output": "9"}])
    oracle = await oracle_of(sandbox, SQUARE_C, suite, budget=2, proposed=["3", "100000", "12", "-5"])
    assert [(item.input, item.output) for item in oracle.inputs] == [("12", "144"), ("-5", "25")]
    assert oracle.tried == 3 and oracle.rejected == {"undefined_behaviour": 1}


async def test_oracle_is_seeded_and_cached_with_its_proposals(sandbox: Sandbox, tmp_path: Path) -> None:
    """The same seed tries the same inputs (another seed another order); a cached oracle is reused only for the
    same proposals."""
    suite = suite_of(tmp_path, [{"input": "4 5\n6", "output": "x"}])
    first = await oracle_of(sandbox, ADD_C, suite, budget=6, seed=7)
    again = await oracle_of(sandbox, ADD_C, suite, budget=6, seed=7)
    assert first.inputs == again.inputs and len(first.inputs) == 6
    assert mutations(["4 5\n6"], "stdin", 7) == mutations(["4 5\n6"], "stdin", 7)
    assert mutations(["4 5\n6"], "stdin", 7) != mutations(["4 5\n6"], "stdin", 8)
    cache = tmp_path / "cache"
    plain = await oracle_of(sandbox, ADD_C, suite, budget=3, cache_dir=cache, key="k")
    proposed = await oracle_of(sandbox, ADD_C, suite, budget=3, cache_dir=cache, key="k", proposed=["100 1"])
    assert proposed.inputs[0].input == "100 1" and proposed.inputs != plain.inputs
    cached = await oracle_of(sandbox, "int main(void) { return 0; }", suite, budget=3, cache_dir=cache, key="k",
                             proposed=["100 1"])
    assert cached == proposed  # read back: the C program did not run again


# -- parsing proposals ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param('Sure!\n```json\n["1 2", "3 4"]\n```\nDone.', ["1 2", "3 4"], id="fenced"),
        pytest.param('Inputs: ["a", 5, 2.5, true, null, {"input": "b"}, ["x", 1]] ok', ["a", "5", "2.5", "b", "x 1"],
                     id="bare-and-mixed"),
        pytest.param('```\nnot json [here\n```\n```json\n["ok"]\n```', ["ok"], id="second-block"),
        pytest.param('```json\n["one", "two", "thr', ["one", "two"], id="cut-off"),
        pytest.param("I cannot help with that.", [], id="no-list"),
        pytest.param("[]", [], id="empty"),
    ],
)
def test_proposals_are_parsed_from_what_models_send(text: str, expected: list[str]) -> None:
    """Prose, several blocks, mixed item types and an answer cut off mid-list still give the complete inputs."""
    assert parse_proposals(text) == expected


def test_proposals_are_capped() -> None:
    """At most 100 items are read from an answer, however long it is."""
    assert len(parse_proposals(json.dumps([str(i) for i in range(500)]))) == 100


def test_model_inputs_with_the_server_down_exit_3_and_write_nothing(cli: Cli, tmp_path: Path) -> None:
    """--model-inputs talks to the configured server: when it is down, exit 3 with the batch's message."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "add.c").write_text(ADD_C)
    result = generate(cli, corpus, "--input", "1 2", "--model-inputs", "3", "--base-url", url)
    assert result.returncode == 3, result.output
    assert "cannot connect" in result.stderr
    assert not (corpus / "add.json").exists()
