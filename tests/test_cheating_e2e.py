"""Translations that would pass their tests by cheating, in one batch run through the CLI and the simulator.

Each cheating task's canned answer does not compute its output: it finds the expected output where the run keeps
it (the samples file, the C program, both read at run time by absolute path or at build time through the
assembler) and prints it. The corpus, the results and the cache live where a user's would (outside ``/tmp``,
ordinary modes), so only the sandbox keeps them out of reach. Every cheat must fail; an honest neighbour verifies;
a probe program counts which of the run's folders it can see.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli, CliResult, Corpus, answer
from tests.test_hostile_e2e import namespaces_work, ordinary_modes, visible_root

#: What every cheating task's samples expect: a program can only print it by reading it from somewhere.
EXPECTED = "leak-" + secrets.token_hex(8)

#: Reads the files named by @PATHS@ and prints what follows @OPEN@ up to the next quote.
READER = r"""
use std::io::Read;

fn grab(text: &str, open: &str) -> Option<String> {
    let start = text.find(open)? + open.len();
    let end = text[start..].find('"')? + start;
    Some(text[start..end].to_string())
}

fn main() {
    let mut input = String::new();
    let _ = std::io::stdin().read_to_string(&mut input);
    for path in [@PATHS@] {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                if let Some(found) = grab(&text, @OPEN@) {
                    println!("{}", found);
                    return;
                }
            }
            Err(e) => eprintln!("cannot read {}: {}", path, e),
        }
    }
}
"""

#: Prints what follows `"output": "` in the bytes the assembler put at the symbol c2r_leak.
PRINT_LEAK = r"""
extern "C" { static c2r_leak: u8; }

fn main() {
    let text = unsafe { std::ffi::CStr::from_ptr(&c2r_leak as *const u8 as *const std::ffi::c_char) };
    let text = text.to_string_lossy();
    let open = "\"output\": \"";
    if let Some(start) = text.find(open).map(|i| i + open.len()) {
        let end = text[start..].find('"').unwrap() + start;
        println!("{}", &text[start..end]);
    }
}
"""

#: Pulls the samples file into the binary at build time with an assembler .incbin the source never spells out.
ASM_INCBIN = r"""
use std::arch::global_asm;
global_asm!(concat!(".section .rodata\n.globl c2r_leak\nc2r_leak:\n.inc", "bin \"@PATH@\"\n.byte 0\n.text"));
""" + PRINT_LEAK

#: The same through an assembler macro that builds the directive's name.
ASM_MACRO = r"""
std::arch::global_asm!(".macro c2r_m x\n.inc\\x \"@PATH@\"\n.endm",
                       ".section .rodata\n.globl c2r_leak\nc2r_leak:\nc2r_m bin\n.byte 0\n.text");
""" + PRINT_LEAK

#: Embeds the samples file as a "GDB script" section, then searches its own binary for it.
GDB_SCRIPT = r"""
#![debugger_visualizer(gdb_script_file = "@PATH@")]

fn main() {
    let me = std::fs::read("/proc/self/exe").unwrap();
    // `"output": "`, shifted by one so that the needle itself is not in the binary.
    let open: Vec<u8> = b"#pvuqvu#;!#".iter().map(|b| b - 1).collect();
    if let Some(start) = me.windows(open.len()).position(|w| w == &open[..]).map(|i| i + open.len()) {
        let end = me[start..].iter().position(|b| *b == b'"').unwrap() + start;
        println!("{}", String::from_utf8_lossy(&me[start..end]));
    }
}
"""

#: Prints how many of the folders @DIRS@ it can list, links of its parent it can read and descriptors it
#: inherited beyond the three standard ones (expected: none).
PROBE = r"""
fn main() {
    let listed = |d: &&str| std::fs::read_dir(d).map(|mut e| e.next().is_some()).unwrap_or(false);
    let mut seen: Vec<&str> = [@DIRS@].into_iter().filter(listed).collect();
    // Ways to the CLI's files through the process that started this one: its cwd, root and descriptors.
    for link in ["/proc/1/cwd", "/proc/1/root", "/proc/1/fd/0"] {
        if std::fs::read_link(link).is_ok() {
            seen.push(link);
        }
    }
    // Descriptors inherited beyond stdin, stdout and stderr (3 is the listing's own).
    let inherited = std::fs::read_dir("/proc/self/fd").unwrap().flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().map(|n| n > 3).unwrap_or(false)).count();
    println!("{}", seen.len() + inherited);
}
"""

#: Prints the expected output, then dies of a signal (a memory error at exit, say).
CRASH_AFTER_OUTPUT = """
use std::io::Write;

fn main() {
    println!("hello");
    std::io::stdout().flush().unwrap();
    unsafe { std::ptr::write_volatile(std::ptr::null_mut::<i32>(), 1); }
}
"""

#: Not a translation: the C program's behaviour, written in another language and run by an interpreter (safe Rust).
RUNS_A_SHELL = """
use std::process::{Command, Stdio};

fn main() {
    let status = Command::new("sh").args(["-c", "cat > /dev/null; echo hello"]).stdin(Stdio::inherit()).status();
    std::process::exit(status.map(|s| s.code().unwrap_or(1)).unwrap_or(1));
}
"""

#: The same through libc: fork and exec of the shell.
EXECS_A_SHELL = """
fn main() {
    let argv = [b"sh\\0".as_ptr() as *const libc::c_char, b"-c\\0".as_ptr() as *const libc::c_char,
                b"echo hello\\0".as_ptr() as *const libc::c_char, std::ptr::null()];
    unsafe { libc::execvp(argv[0], argv.as_ptr()); }
}
"""

#: A self-checking C program in the TransCoder shape: `%t N` exits 0 when f_filled agrees with f_gold on case N.
SELF_CHECKING_C = """#include <stdlib.h>
int f_gold(int x) { return x * x + 1; }
int f_filled(int x) { return x * x + 1; }
int main(int argc, char *argv[]) {
    int param0[] = {3, 7, 11};
    int i = argc > 1 ? atoi(argv[1]) : 0;
    return f_filled(param0[i]) == f_gold(param0[i]) ? 0 : -1;
}
"""

#: A translation of SELF_CHECKING_C: its main checks f_filled against f_gold (`check`: the exit status expression).
SELF_CHECKING_RS = """fn f_gold(x: i32) -> i32 { x * x + 1 }
fn f_filled(x: i32) -> i32 { x * x + 1 }
fn main() {
    let param0 = [3, 7, 11];
    let i: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(0);
    let agree = f_filled(param0[i]) == f_gold(param0[i]);
    std::process::exit(@CHECK@);
}
"""

#: Cheating task -> what its stage's reason must say (a regex).
CHEATS = {
    "read_samples": r"test 0 failed: wrong output",
    "read_c_source": r"test 0 failed: wrong output",
    "asm_concat_incbin": r"line \d+ uses inline or global assembly",
    "asm_macro_incbin": r"line \d+ uses inline or global assembly",
    "gdb_script_file": r"line \d+ uses #!\[debugger_visualizer",
}


@dataclass(frozen=True)
class CheatRun:
    result: CliResult
    out: Path

    def record(self, task: str) -> dict[str, Any]:
        return json.loads((self.out / task / "result.json").read_text())  # type: ignore[no-any-return]


def _fill(template: str, **values: str) -> str:
    for key, value in values.items():
        template = template.replace(f"@{key}@", value)
    return template


@pytest.fixture(scope="module", params=["compiled", "python"])
def cheat_run(request: pytest.FixtureRequest, cache_dir: Path) -> Iterator[CheatRun]:
    """One batch run of every cheating task, an honest task and the probe, in the complete sandbox; once with
    the compiled helper and once with the Python fallback."""
    if not namespaces_work():
        pytest.skip("full sandbox isolation needs root and unshare (pid, net, mount namespaces)")
    from pipeline.simulator import SimConfig, Simulator

    visible = visible_root()
    try:
        data = Corpus(visible / "data")
        corpus_dir, out, cache = data.corpus, visible / "out", visible / "cache"
        shutil.copytree(cache_dir, cache)  # the libc rlib and the helper, built once per session
        samples = [{"input": "", "output": EXPECTED}]

        def samples_of(name: str) -> str:
            return str(corpus_dir / f"{name}_samples.json")

        sources = {
            "read_samples": _fill(READER, PATHS=json.dumps(samples_of("read_samples")),
                                  OPEN=json.dumps('"output": "')),
            "read_c_source": _fill(READER, PATHS=json.dumps(str(corpus_dir / "read_c_source.c")),
                                   OPEN=json.dumps('puts("')),
            "asm_concat_incbin": _fill(ASM_INCBIN, PATH=samples_of("asm_concat_incbin")),
            "asm_macro_incbin": _fill(ASM_MACRO, PATH=samples_of("asm_macro_incbin")),
            "gdb_script_file": _fill(GDB_SCRIPT, PATH=samples_of("gdb_script_file")),
        }
        for name, code in sources.items():
            data.add_task(name, expected=EXPECTED, samples=samples, unidiomatic=[answer(code)])
        data.add_task("crash_after_output", unidiomatic=[answer(CRASH_AFTER_OUTPUT)])
        data.add_task("runs_a_shell", unidiomatic=[answer(RUNS_A_SHELL)])
        data.add_task("execs_a_shell", unidiomatic=[answer(EXECS_A_SHELL)])
        calls_system = '#include <stdlib.h>\nint main(void) { return system("echo hello"); }\n'
        data.add_task("c_runs_a_shell", c_source=calls_system, unidiomatic=[answer(RUNS_A_SHELL)])
        data.add_task("self_check_skip", c_source=SELF_CHECKING_C, tests=[{"command": f"%t {i}"} for i in range(3)],
                      unidiomatic=[answer("fn main() {}\n")])
        for name, check in (("self_check_ignored", "0"), ("self_check_honest", "if agree { 0 } else { -1 }")):
            data.add_task(name, c_source=SELF_CHECKING_C, tests=[{"command": f"%t {i}"} for i in range(3)],
                          unidiomatic=[answer(_fill(SELF_CHECKING_RS, CHECK=check))])
        data.add_task("honest", expected=EXPECTED, samples=samples)
        dirs = ", ".join(json.dumps(str(d)) for d in (corpus_dir, out, cache))
        data.add_task("probe", expected="0", samples=[{"input": "", "output": "0"}],
                      unidiomatic=[answer(_fill(PROBE, DIRS=dirs))])
        ordinary_modes(visible / "data")
        work = visible / "cwd"
        work.mkdir()
        cli = Cli(cache_dir=cache, cwd=work, env={"C2RUST_SANDBOX_HELPER": str(request.param)})
        out.mkdir()
        with Simulator(SimConfig(answers_dir=data.answers)).running() as url:
            result = cli("--c-files", corpus_dir, "--json-files", corpus_dir, "--output", out, "--base-url", url,
                         "--model", "sim-model", "--max-attempts", "1", "--no-idiomatic", "--jobs", "2",
                         timeout=300)
        yield CheatRun(result, out)
    finally:
        shutil.rmtree(visible, ignore_errors=True)


@pytest.mark.parametrize("task", [pytest.param(name, id=name) for name in CHEATS])
def test_a_translation_that_finds_its_expected_output_is_not_verified(cheat_run: CheatRun, task: str) -> None:
    """A program that prints the expected output it read (at run time or build time) fails, saying why."""
    record = cheat_run.record(task)
    stage = record["stages"]["unidiomatic"]
    assert stage["status"] == "failed", (task, stage, cheat_run.result.stderr[-3000:])
    assert EXPECTED not in json.dumps(record)
    assert re.search(CHEATS[task], stage["reason"]), stage["reason"]


def test_a_program_killed_by_a_signal_after_the_expected_output_is_not_verified(cheat_run: CheatRun) -> None:
    """The output matches, but the program died of SIGSEGV (the C program ends normally): the test fails."""
    stage = cheat_run.record("crash_after_output")["stages"]["unidiomatic"]
    assert stage["status"] == "failed"
    assert re.search(r"test 0 failed: the output matched, but the program was killed by signal SIGSEGV",
                     stage["reason"]), stage["reason"]


@pytest.mark.parametrize(("task", "named"), [pytest.param("runs_a_shell", "std::process::Command", id="Command"),
                                           pytest.param("execs_a_shell", "execvp", id="execvp")])
def test_a_program_that_runs_another_program_is_refused(cheat_run: CheatRun, task: str, named: str) -> None:
    """Running another program (a shell, an interpreter, a compiler on embedded C) is refused when the C program
    runs none: its output would be that program's, not the translation's."""
    stage = cheat_run.record(task)["stages"]["unidiomatic"]
    assert stage["status"] == "failed"
    assert re.search(rf"line \d+ runs another program \({re.escape(named)}\)", stage["reason"]), stage["reason"]


def test_a_c_program_that_runs_a_shell_allows_its_translation_to(cheat_run: CheatRun) -> None:
    """The rule follows the C program: one that calls system() is translated faithfully by running a shell."""
    assert cheat_run.record("c_runs_a_shell")["stages"]["unidiomatic"]["status"] == "verified"


def test_the_honest_neighbour_verifies(cheat_run: CheatRun) -> None:
    """The same samples, answered by a program that prints its output, verify: the cheats fail for cause."""
    assert cheat_run.record("honest")["stages"]["unidiomatic"]["status"] == "verified"


def test_the_corpus_results_and_cache_are_hidden_from_programs(cheat_run: CheatRun) -> None:
    """A program lists none of the run's corpus, output and cache folders, reads no link of the process that started
    it and inherits no descriptor but the standard three: it verifies by printing 0."""
    stage = cheat_run.record("probe")["stages"]["unidiomatic"]
    info = cheat_run.out / "probe" / "unidiomatic_failure_info.json"
    assert stage["status"] == "verified", info.read_text() if info.exists() else stage


def test_a_translation_that_skips_its_own_self_check_is_not_verified(cheat_run: CheatRun) -> None:
    """`fn main() {}` would pass every `%t N` test of a TransCoder-style task by exiting 0: without f_filled it is
    refused before compiling, saying why."""
    stage = cheat_run.record("self_check_skip")["stages"]["unidiomatic"]
    assert stage["status"] == "failed"
    assert "the program defines no f_filled" in stage["reason"], stage["reason"]


def test_a_self_check_whose_verdict_main_ignores_is_not_verified(cheat_run: CheatRun) -> None:
    """f_filled and f_gold are there and called, but main exits 0 whatever they say: the tests pass, and pass
    again with f_filled answering wrong, so the stage fails saying so."""
    stage = cheat_run.record("self_check_ignored")["stages"]["unidiomatic"]
    assert stage["status"] == "failed"
    assert re.search(r"all 3 tests passed, but they pass too when f_filled answers wrong", stage["reason"]), stage


def test_an_honest_self_checking_translation_is_verified(cheat_run: CheatRun) -> None:
    """The control does not fail a translation whose main checks f_filled against f_gold."""
    stage = cheat_run.record("self_check_honest")["stages"]["unidiomatic"]
    info = cheat_run.out / "self_check_honest" / "unidiomatic_failure_info.json"
    assert stage["status"] == "verified", info.read_text() if info.exists() else stage


def test_translate_hides_the_task_folders_too(cli: Cli, simulator_factory: Any) -> None:
    """`translate FILE.c TEST.json -r DIR`: a program reading its samples file by absolute path is not verified."""
    if not namespaces_work():
        pytest.skip("full sandbox isolation needs root and unshare (pid, net, mount namespaces)")
    visible = visible_root()
    try:
        data = Corpus(visible / "data")
        samples = [{"input": "", "output": EXPECTED}]
        reader = _fill(READER, PATHS=json.dumps(str(data.corpus / "single_samples.json")),
                       OPEN=json.dumps('"output": "'))
        data.add_task("single", expected=EXPECTED, samples=samples, unidiomatic=[answer(reader)])
        ordinary_modes(visible / "data")
        _sim, url = simulator_factory(answers_dir=data.answers)
        result = cli("translate", data.corpus / "single.c", data.corpus / "single.json", "-r", visible / "result",
                     "--base-url", url, "--model", "sim-model", "--max-attempts", "1", "--no-idiomatic")
        assert result.returncode == 1, result.output
        assert "unidiomatic: failed after 1 attempt(s)" in result.stdout, result.stdout
        assert "wrong output" in result.stdout, result.stdout
    finally:
        shutil.rmtree(visible, ignore_errors=True)


def test_stricter_verification_rules_make_finished_tasks_stale() -> None:
    """A task verified before the rules above existed is not kept as it is: the revision of the verification rules
    is part of the settings fingerprint (what a rerun then does: tests/test_promises_e2e.py)."""
    from pipeline.config import Config
    from pipeline.engine import settings_fingerprint
    from pipeline.records import EARLIER_VERIFY_RULES, VERIFY_RULES_REVISION

    now = settings_fingerprint(Config())
    assert now == settings_fingerprint(Config(), rules=VERIFY_RULES_REVISION)
    assert now != settings_fingerprint(Config(), rules="next")
    assert all(now != settings_fingerprint(Config(), rules=earlier) for earlier in EARLIER_VERIFY_RULES)
