"""Differential testing through the real CLI and the simulator: the C program is the oracle on generated inputs.

Our own small C programs: each passes its shipped samples with a translation that is wrong, nondeterministic or
undefined elsewhere, so what the user sees (the repair prompt, batch_summary.json, differential_samples.json,
the end-of-run table) shows what the C program was asked and what was kept.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipeline.differential import mutations
from tests.conftest import DIFFERENTIAL_VARIABLE, SHARED_CORPUS, Cli, Corpus, answer


@pytest.fixture(autouse=True)
def differential_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Differential testing as users get it: on by default (the rest of the suite runs without it)."""
    monkeypatch.delenv(DIFFERENTIAL_VARIABLE, raising=False)


def c_reading_a_long(body: str) -> str:
    """A C program that reads a long ``n`` from stdin ("none" without one), then runs ``body``."""
    return ("#include <stdio.h>\n#include <stdlib.h>\n#include <time.h>\nint main(void) {\n    long n = 0;\n"
            '    if (scanf("%ld", &n) != 1) { puts("none"); return 0; }\n' + body + "    return 0;\n}\n")


def rust_reading_a_number(kind: str, arms: str) -> str:
    """A Rust program that parses its first stdin token as ``kind`` and prints what the match ``arms`` say
    ("none" without one)."""
    return ("use std::io::Read;\nfn main() {\n    let mut text = String::new();\n"
            "    std::io::stdin().read_to_string(&mut text).unwrap();\n"
            f"    match text.split_whitespace().next().and_then(|t| t.parse::<{kind}>().ok()) {{\n"
            f"        None => println!(\"none\"),\n{arms}    }}\n}}\n")


# Doubles a long. Shipped: 3 -> 6, 21 -> 42.
DOUBLE_C = c_reading_a_long('    printf("%ld\\n", n * 2);\n')
DOUBLE_SAMPLES = [{"input": "3", "output": "6"}, {"input": "21", "output": "42"}]
# Passes both samples, but reads an i32 where C reads a long: 4294967295 is "none" here, 8589934590 in C.
DOUBLE_I32 = rust_reading_a_number("i32", '        Some(n) => println!("{}", n.wrapping_mul(2)),\n')
DOUBLE_I64 = DOUBLE_I32.replace("i32", "i64")

# Positive numbers: the next one; negative ones: a random number seeded from the clock.
CLOCK_C = c_reading_a_long(
    '    srand((unsigned) time(NULL));\n    if (n < 0) printf("lucky %d\\n", rand() % 100000);\n'
    '    else if (n < 1000000) printf("%ld\\n", n + 1);\n    else puts("big");\n'
)
CLOCK_SAMPLES = [{"input": "5", "output": "6"}, {"input": "10", "output": "11"}]
CLOCK_RS = rust_reading_a_number("i64", '        Some(n) if n < 0 => println!("lucky 7"),\n'
                                         '        Some(n) if n < 1000000 => println!("{}", n + 1),\n'
                                         '        Some(_) => println!("big"),\n')

# Multiplies by four: signed overflow (undefined) for LONG_MAX and LONG_MIN, which the sanitizer reports.
SCALE_C = c_reading_a_long('    printf("%ld\\n", n * 4);\n')
SCALE_SAMPLES = [{"input": "1", "output": "4"}, {"input": "25", "output": "100"}]
# Panics where C's behaviour is undefined: it verifies only because those inputs are not kept.
SCALE_RS = rust_reading_a_number("i64", '        Some(n) => println!("{}", n.checked_mul(4).expect("overflow")),\n')

# Self-checking tests: `%t N` exits 0 when N is 1.
SELF_CHECK_C = r"""#include <stdlib.h>
int main(int argc, char **argv) { return argc > 1 && atoi(argv[1]) == 1 ? 0 : 1; }
"""
SELF_CHECK_RS = """fn main() {
    let ok = std::env::args().nth(1).map(|a| a == "1").unwrap_or(false);
    std::process::exit(if ok { 0 } else { 1 });
}
"""


def i32_double(text: str) -> str:
    """What DOUBLE_I32 prints for ``text``."""
    n = int(text)
    if not -(2**31) <= n < 2**31:
        return "none"
    return str((2 * n + 2**31) % 2**32 - 2**31)


def run_corpus(cli: Cli, corpus: Corpus, url: str, out: Path, *extra: str) -> Any:
    return cli("--c-files", corpus.corpus, "--json-files", corpus.corpus, "--output", out,
               "--base-url", url, "--model", "sim-model", "--workers", "2", *extra)


def summary(out: Path) -> dict[str, Any]:
    return json.loads((out / "batch_summary.json").read_text())


def task_record(out: Path, name: str) -> dict[str, Any]:
    return next(t for t in summary(out)["tasks"] if t["task_id"] == name)


def kinds(out: Path, name: str, stage: str = "unidiomatic") -> list[str]:
    info = json.loads((out / name / f"{stage}_failure_info.json").read_text())
    return [a["kind"] for a in info["attempts"]]


def requests_for(sim: Any, name: str) -> list[dict[str, Any]]:
    return [r.body for r in sim.chat_requests
            if any(f"{name}.c" in m["content"] for m in r.body["messages"] if m["role"] == "user")]


def kept_samples(out: Path, name: str) -> list[dict[str, str]]:
    return json.loads((out / name / "differential_samples.json").read_text())


def test_a_translation_wrong_beyond_the_shipped_tests_is_rejected_and_repaired(
    cli: Cli, corpus: Corpus, simulator_factory: Any, tmp_path: Path
) -> None:
    """i32 where C reads a long passes both samples but not C's answer on a generated input: the repair prompt shows
    that input, the C program's output and the translation's, and the repaired program verifies."""
    corpus.add_task("double", c_source=DOUBLE_C, samples=DOUBLE_SAMPLES,
                    unidiomatic=[answer(DOUBLE_I32), answer(DOUBLE_I64)], idiomatic=[answer(DOUBLE_I64)])
    sim, url = simulator_factory(answers_dir=corpus.answers)
    out = tmp_path / "out"
    result = run_corpus(cli, corpus, url, out)
    assert result.returncode == 0, result.output
    assert kinds(out, "double") == ["differential_mismatch"]
    samples = kept_samples(out, "double")
    assert {"input": "4294967295", "output": "8589934590"} in samples or \
        {"input": "2147483647", "output": "4294967294"} in samples
    info = json.loads((out / "double" / "unidiomatic_failure_info.json").read_text())
    message = info["attempts"][0]["message"]
    assert message.startswith("all 2 tests passed, but generated input ")
    counterexample = samples[int(message.split("generated input ")[1].split()[0])]
    repair = requests_for(sim, "double")[1]["messages"][-1]["content"]
    assert f"Standard input:\n{counterexample['input']}\n" in repair
    assert f"Expected output:\n{counterexample['output']}\n" in repair
    assert "C program's own output" in repair and "Diff (expected -> actual):" in repair
    assert f"\n+{i32_double(counterexample['input'])}\n" in repair  # the translation's output, in the diff
    record = task_record(out, "double")
    assert record["differential"]["status"] == "checked"
    kept = len(samples)
    assert record["differential"]["inputs"] == kept >= 15  # every distinct mutation of two numbers but two
    assert record["differential"]["rejected"].get("undefined_behaviour", 0) >= 1  # LONG_MAX * 2 overflows in C
    unidiomatic = record["stages"]["unidiomatic"]
    assert (unidiomatic["tests_passed"], unidiomatic["tests_run"]) == (2, 2)
    assert (unidiomatic["differential_tried"], unidiomatic["differential_agreed"]) == (kept, kept)
    assert unidiomatic["differential_mismatches"] == 1
    result_json = json.loads((out / "double" / "result.json").read_text())
    assert result_json["stages"]["idiomatic"]["differential_agreed"] == kept
    transcript = (out / "double" / "transcript.jsonl").read_text()
    assert f"all 2 tests passed; agrees with C on {kept} generated inputs" in transcript
    totals = summary(out)["totals"]["differential"]
    assert (totals["tasks_checked"], totals["inputs"], totals["mismatches"]) == (1, kept, 1)
    assert f"differential: {kept} generated inputs kept of" in result.stdout
    assert "1 attempts disagreed with C" in result.stdout


def test_inputs_on_which_the_c_program_reads_the_clock_are_excluded(
    cli: Cli, corpus: Corpus, simulator_factory: Any, tmp_path: Path
) -> None:
    """Negative inputs make the C program print a number seeded from time(NULL): they are rejected as
    nondeterministic, never kept, and the translation (which cannot match a random number) verifies."""
    corpus.add_task("clock", c_source=CLOCK_C, samples=CLOCK_SAMPLES,
                    unidiomatic=[answer(CLOCK_RS)], idiomatic=[answer(CLOCK_RS)])
    _sim, url = simulator_factory(answers_dir=corpus.answers)
    out = tmp_path / "out"
    result = run_corpus(cli, corpus, url, out)
    assert result.returncode == 0, result.output
    record = task_record(out, "clock")
    assert record["differential"]["rejected"]["nondeterministic"] >= 2  # -1 and -5 at least
    kept = kept_samples(out, "clock")
    assert kept and not any(s["output"].startswith("lucky") for s in kept)
    assert record["stages"]["unidiomatic"]["differential_agreed"] == len(kept)
    assert summary(out)["totals"]["differential"]["rejected"]["nondeterministic"] >= 2
    assert "nondeterministic" in result.stdout


def test_inputs_with_undefined_behaviour_in_c_are_excluded(
    cli: Cli, corpus: Corpus, simulator_factory: Any, tmp_path: Path
) -> None:
    """LONG_MAX * 4 and LONG_MIN * 4 overflow in C (UndefinedBehaviorSanitizer says so): neither input is kept, so a
    translation that panics on overflow verifies (through `translate`, the one-task command)."""
    corpus.add_task("scale", c_source=SCALE_C, samples=SCALE_SAMPLES,
                    unidiomatic=[answer(SCALE_RS)], idiomatic=[answer(SCALE_RS)])
    _sim, url = simulator_factory(answers_dir=corpus.answers)
    out = tmp_path / "out"
    result = cli("translate", corpus.corpus / "scale.c", corpus.corpus / "scale.json", "-r", out,
                 "--base-url", url, "--model", "sim-model")
    assert result.returncode == 0, result.output
    record = json.loads((out / "result.json").read_text())
    assert record["differential"]["rejected"] == {"undefined_behaviour": 2}
    kept = {s["input"]: s["output"] for s in json.loads((out / "differential_samples.json").read_text())}
    assert not {str(2**63 - 1), str(-(2**63))} & set(kept)
    assert kept[str(2**31 - 1)] == str(4 * (2**31 - 1)) and kept[""] == "none"
    assert record["stages"]["unidiomatic"]["differential_agreed"] == len(kept)
    assert f"unidiomatic: verified after 1 attempt(s): all 2 tests passed; agrees with C on {len(kept)} " \
        "generated inputs" in result.stdout
    assert f"differential: {len(kept)} generated inputs kept of {len(kept) + 2} tried (rejected: 2 undefined " \
        "behaviour)" in result.stdout


@pytest.mark.parametrize(("name", "status", "note", "table"), [
    pytest.param("selfcheck", "not_applicable", ("does not apply", "self-checking"), "not applicable: 1",
                 id="self-checking-tests"),
    pytest.param("broken", "unavailable", ("does not build with gcc", "undeclared_thing"), "C not built: 1",
                 id="c-does-not-build"),
])
def test_without_inputs_to_vary_or_a_c_build_the_shipped_tests_decide(
    cli: Cli, corpus: Corpus, simulator_factory: Any, tmp_path: Path, name: str, status: str,
    note: tuple[str, ...], table: str,
) -> None:
    """Self-checking `%t N` tests (judged by exit status) give no inputs to vary, and C that gcc refuses gives no
    oracle: the task's summary says which (with gcc's error), and the translation verifies on the shipped tests."""
    if name == "selfcheck":
        corpus.add_task(name, c_source=SELF_CHECK_C, tests=[{"command": "%t 1"}],
                        unidiomatic=[answer(SELF_CHECK_RS)], idiomatic=[answer(SELF_CHECK_RS)])
    else:
        broken = DOUBLE_C.replace("int main(void) {", "int main(void) { undeclared_thing();")
        corpus.add_task(name, c_source=broken, samples=DOUBLE_SAMPLES,
                        unidiomatic=[answer(DOUBLE_I32)], idiomatic=[answer(DOUBLE_I32)])
    _sim, url = simulator_factory(answers_dir=corpus.answers)
    out = tmp_path / "out"
    result = run_corpus(cli, corpus, url, out)
    assert result.returncode == 0, result.output
    report = task_record(out, name)["differential"]
    assert report["status"] == status
    assert all(part in report["note"] for part in note), report["note"]
    assert not (out / name / "differential_samples.json").exists()
    assert summary(out)["totals"]["differential"][status] == 1
    assert table in result.stdout


@pytest.mark.parametrize("switch", [
    pytest.param(("--no-differential",), id="flag"),
    pytest.param(("--differential", "0"), id="zero-inputs"),
    pytest.param(("--config", "OFF_TOML"), id="sactor-toml"),
])
def test_switched_off_runs_as_before_and_switching_it_on_redoes_the_task(
    cli: Cli, corpus: Corpus, simulator_factory: Any, tmp_path: Path, switch: tuple[str, ...]
) -> None:
    """Off, the i32 translation verifies on the shipped tests alone (no C build, no samples file); the setting is
    part of the settings fingerprint, so a rerun with it on redoes the task and catches the translation."""
    config = tmp_path / "off.toml"
    config.write_text("[differential]\ninputs = 0\n")
    switch = tuple(str(config) if part == "OFF_TOML" else part for part in switch)
    corpus.add_task("double", c_source=DOUBLE_C, samples=DOUBLE_SAMPLES,
                    unidiomatic=[answer(DOUBLE_I32), answer(DOUBLE_I64)], idiomatic=[answer(DOUBLE_I32)])
    sim, url = simulator_factory(answers_dir=corpus.answers)
    out = tmp_path / "out"
    result = run_corpus(cli, corpus, url, out, "--max-attempts", "2", *switch)
    assert result.returncode == 0, result.output
    record = task_record(out, "double")
    assert record["differential"] == {"status": "off"}
    assert record["stages"]["unidiomatic"]["attempts"] == 1
    assert record["stages"]["unidiomatic"]["differential_tried"] == 0
    assert not (out / "double" / "differential_samples.json").exists()
    assert "differential:" not in result.stdout
    assert len(requests_for(sim, "double")) == 2
    result = run_corpus(cli, corpus, url, out, "--max-attempts", "2")
    assert result.returncode == 1, result.output  # the idiomatic answer is the i32 program: caught now
    record = task_record(out, "double")
    assert record["differential"]["status"] == "checked"
    assert kinds(out, "double") == ["differential_mismatch"]
    assert kinds(out, "double", "idiomatic")[0] == "differential_mismatch"


def test_mutations_are_seeded() -> None:
    """The same shipped inputs and seed give the same inputs in the same order; another seed reorders them; the
    shipped inputs themselves are never among them."""
    shipped = ["3 4\nabc", "100"]
    first = mutations(shipped, "stdin", seed=7)
    assert first == mutations(list(shipped), "stdin", seed=7)
    assert first != mutations(shipped, "stdin", seed=8)
    assert sorted(first) == sorted(mutations(shipped, "stdin", seed=8))
    assert not set(shipped) & set(first)
    assert {"", "-100", "101", "2147483647", "3 4 abcabcabcabcabcabcabcabc"} <= set(first)


@pytest.mark.skipif(not (SHARED_CORPUS / "codenet_scanf").is_dir(), reason="shared evaluation corpus not present")
@pytest.mark.parametrize(("folder", "name", "feed"), [
    pytest.param("codenet_scanf", "s403666666", "stdin", id="stdin-uninitialised-reads"),
    pytest.param("codenet_argv", None, "args", id="args"),
])
async def test_on_the_shared_corpus_c_agrees_with_its_own_oracle(
    folder: str, name: str | None, feed: str, cache_dir: Path
) -> None:
    """C against C (bench/differential.py): another build (-O0) of a corpus program agrees with its oracle on every
    kept input. s403666666 reads uninitialised memory on some generated inputs, which the sanitizers do not see:
    its -O2 build prints something else there, so those inputs are not kept."""
    import anyio

    from bench.differential import c_against_c
    from pipeline.config import SandboxSettings
    from pipeline.sandbox import Sandbox
    from pipeline.task import Task

    root = SHARED_CORPUS / folder
    name = name or sorted(root.glob("*.c"))[0].stem
    task = Task(name, root / f"{name}.c", root / f"{name}.json")
    async with Sandbox.open(SandboxSettings()) as sandbox:
        row = await c_against_c(task, sandbox=sandbox, cpu=anyio.CapacityLimiter(1), budget=20)
    assert row.oracle.feed == feed and row.oracle.note is None
    assert len(row.oracle.inputs) == 20
    assert row.agreed == 20, row.line()
    if name == "s403666666":
        assert row.oracle.rejected.get("optimisation_dependent", 0) >= 1, row.line()


# Doubles a long, except for one value no mutation of the samples reaches (3, 21 -> +-1, x2, x10, 0, -1, ...).
MAGIC_C = c_reading_a_long('    if (n == 1234) puts("magic"); else printf("%ld\\n", n * 2);\n')
# Passes both samples and every mutation of them: only an input the model proposes shows it wrong.
MAGIC_RS = DOUBLE_I64
MAGIC_FIXED = rust_reading_a_number("i64", '        Some(1234) => println!("magic"),\n'
                                           '        Some(n) => println!("{}", n * 2),\n')


@pytest.mark.parametrize("asked", [pytest.param(3, id="three-asked"), pytest.param(0, id="off-by-default")])
def test_model_proposed_inputs_catch_what_mutations_miss(
    cli: Cli, corpus: Corpus, simulator_factory: Any, tmp_path: Path, asked: int
) -> None:
    """--differential-model-inputs N asks the model once per task for inputs before the oracle is built: the
    proposed 1234 is the counterexample that rejects a translation every mutation agrees with, and the request's
    tokens count in the task's totals. Off (the default), no proposal request is sent and the translation
    verifies on mutations alone; switching it on then redoes the task (the settings fingerprint changed)."""
    corpus.add_task("magic", c_source=MAGIC_C, samples=DOUBLE_SAMPLES,
                    unidiomatic=[answer(MAGIC_RS), answer(MAGIC_FIXED)], idiomatic=[answer(MAGIC_FIXED)])
    (corpus.answers / "magic" / "inputs-1.md").write_text('Edge cases:\n\n```json\n["0", "1234", "-8"]\n```\n')
    sim, url = simulator_factory(answers_dir=corpus.answers)
    out = tmp_path / "out"
    flags = ("--differential-model-inputs", str(asked)) if asked else ()
    result = run_corpus(cli, corpus, url, out, *flags)
    assert result.returncode == 0, result.output
    proposals = [r for r in sim.chat_requests if r.stage == "inputs"]
    record = task_record(out, "magic")
    if not asked:
        assert proposals == [] and "proposals" not in record["differential"]
        assert record["stages"]["unidiomatic"]["attempts"] == 1  # the wrong translation verified
        assert "1234" not in [s["input"] for s in kept_samples(out, "magic")]
        fingerprint = summary(out)["run"]["settings_fingerprint"]
        # Asking for inputs is part of the settings fingerprint: the rerun redoes the task and catches it.
        result = run_corpus(cli, corpus, url, out, "--differential-model-inputs", "3")
        assert result.returncode == 0, result.output
        assert summary(out)["run"]["settings_fingerprint"] != fingerprint
        assert kinds(out, "magic") == ["differential_mismatch"]
        assert len([r for r in sim.chat_requests if r.stage == "inputs"]) == 1
        return
    assert len(proposals) == 1 and proposals[0].answer_key == "magic"
    assert "3 inputs" in proposals[0].body["messages"][-1]["content"]
    assert kinds(out, "magic") == ["differential_mismatch"]
    assert {"input": "1234", "output": "magic"} in kept_samples(out, "magic")
    info = json.loads((out / "magic" / "unidiomatic_failure_info.json").read_text())
    assert "generated input 1 ('1234')" in info["attempts"][0]["message"]
    assert "Standard input:\n1234\n" in requests_for(sim, "magic")[2]["messages"][-1]["content"]
    asked_record = record["differential"]["proposals"]
    assert (asked_record["asked"], asked_record["usable"], asked_record["kept"]) == (3, 3, 3)
    assert asked_record["requests"] == 1 and asked_record["prompt_tokens"] > 0
    stage_tokens = sum(s.get("prompt_tokens", 0) for s in record["stages"].values())
    assert summary(out)["totals"]["prompt_tokens"] == stage_tokens + asked_record["prompt_tokens"]


def test_a_proposal_answer_without_inputs_is_noted_and_the_task_goes_on(
    cli: Cli, corpus: Corpus, simulator_factory: Any, tmp_path: Path
) -> None:
    """When the model's answer to the proposal request holds no inputs, the task is not failed: the record says
    why, and the oracle is built from mutations alone."""
    corpus.add_task("magic", c_source=MAGIC_C, samples=DOUBLE_SAMPLES, unidiomatic=[answer(MAGIC_FIXED)],
                    idiomatic=[answer(MAGIC_FIXED)])
    (corpus.answers / "magic" / "inputs-1.md").write_text("I would rather not choose inputs.\n")
    _sim, url = simulator_factory(answers_dir=corpus.answers)
    out = tmp_path / "out"
    result = run_corpus(cli, corpus, url, out, "--differential-model-inputs", "4")
    assert result.returncode == 0, result.output
    record = task_record(out, "magic")
    assert record["status"] == "verified" and record["differential"]["status"] == "checked"
    asked = record["differential"]["proposals"]
    assert (asked["asked"], asked["usable"], asked["kept"]) == (4, 0, 0)
    assert asked["note"] == "the answer held no JSON list of inputs"
    assert record["differential"]["inputs"] >= 15  # every usable mutation of two one-number samples
