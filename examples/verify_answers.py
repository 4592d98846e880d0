#!/usr/bin/env python3
"""Check the bundled example corpus and its canned model answers against a real toolchain.

For every answer folder examples/answers/KEY/ (the task is the C file named in match.txt, default KEY.c):

* each ``unidiomatic-N.md`` / ``idiomatic-N.md`` holds one ```rust block; it is compiled with rustc against a
  libc rlib built here from Debian's librust-libc-dev source, and its tests are run;
* the outcome must be the one listed in EXPECTED below (a compile error, a failing test, `unsafe` in an
  idiomatic answer), and ``pass`` for everything else, which includes every stage's last attempt;
* a passing idiomatic answer must be safe Rust: no ``unsafe``, no ``libc``.

It also builds every C program of the corpus with gcc and runs its own tests (skip with --no-gcc).

Tests are the corpus's SACToR test tasks: ``%t ARGS`` passes when the program exits 0; ``sactor run-tests
--type bin ./SAMPLES.json %t N --feed-as-args|--feed-as-stdin`` feeds sample N's input as whitespace-separated
arguments or as standard input plus a newline, and passes when stdout and stderr joined, each line stripped,
equal the sample's output treated the same way.

Usage: python3 examples/verify_answers.py [--no-gcc] [--verbose]. Stdlib only. Exit status 0 when everything
matches, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
STAGES = ("unidiomatic", "idiomatic")
#: (key, stage, attempt) -> outcome; anything not listed must be "pass".
EXPECTED = {
    ("wordfreq", "unidiomatic", 1): "compile-error",
    ("gcdlcm", "unidiomatic", 1): "test-failure",
    ("reverse", "idiomatic", 1): "unsafe",
}
#: What libc's build.rs would print for a current rustc on Linux.
LIBC_CFGS = (
    "freebsd11", "libc_priv_mod_use", "libc_union", "libc_const_size_of", "libc_align", "libc_int128",
    "libc_core_cvoid", "libc_packedN", "libc_cfg_target_vendor", "libc_non_exhaustive", "libc_ptr_addr_of",
    "libc_underscore_const_names", "libc_const_extern_fn",
)
RUN_TESTS = re.compile(r"^sactor run-tests --type bin (\S+) %t (\d+) --feed-as-(args|stdin)$")
RUST_BLOCK = re.compile(r"```rust[ \t]*\n(.*?)```", re.DOTALL)
TIMEOUT = 20.0
OUTPUT_CAP = 1 << 20


def normalise(text: str) -> str:
    return "\n".join(line.strip() for line in text.splitlines())


def run(argv: list[str], *, stdin: str = "", cwd: Path) -> tuple[int, str]:
    """Run argv in its own process group with a deadline; the whole group dies on timeout."""
    proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(stdin.encode(), timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return -1, f"timed out after {TIMEOUT:.0f} s"
    text = (out[:OUTPUT_CAP] + err[:OUTPUT_CAP]).decode("utf-8", "replace")
    return proc.returncode, text


def run_tests(binary: Path, test_file: Path) -> list[str]:
    """Every failing test of the task, described; an empty list means all passed."""
    failures: list[str] = []
    for number, test in enumerate(json.loads(test_file.read_text())):
        command = test["command"]
        found = RUN_TESTS.match(command)
        if found:
            samples_path, index, feed = found.groups()
            sample = json.loads((test_file.parent / samples_path).read_text())[int(index)]
            if feed == "args":
                code, output = run([str(binary), *sample["input"].split()], cwd=test_file.parent)
            else:
                code, output = run([str(binary)], stdin=sample["input"] + "\n", cwd=test_file.parent)
            if normalise(output) != normalise(sample["output"]):
                failures.append(f"test {number} ({command}): expected {sample['output']!r}, got {output!r}")
        else:
            argv = [str(binary) if word == "%t" else word for word in shlex.split(command)]
            code, output = run(argv, cwd=test_file.parent)
            if code != 0:
                failures.append(f"test {number} ({command}): exit status {code}, output {output!r}")
    return failures


def build_libc(out_dir: Path) -> Path:
    sources = sorted(Path("/usr/share/cargo/registry").glob("libc-0.2.*/src/lib.rs"))
    if not sources:
        sys.exit("verify_answers: the libc crate source is missing: apt-get install librust-libc-dev")
    argv = ["rustc", "--edition", "2015", "--crate-type", "rlib", "--crate-name", "libc", str(sources[-1]),
            "--cfg", 'feature="std"', "--cap-lints", "allow", "-O", "--out-dir", str(out_dir)]
    for cfg in LIBC_CFGS:
        argv += ["--cfg", cfg]
    code, output = run(argv, cwd=out_dir)
    if code != 0:
        sys.exit(f"verify_answers: building libc failed:\n{output}")
    return out_dir / "liblibc.rlib"


def outcome(answer: Path, c_name: str, libc_dir: Path, work: Path, stage: str) -> tuple[str, str]:
    """(outcome, detail) of one canned answer: compile-error, test-failure, unsafe or pass."""
    blocks = RUST_BLOCK.findall(answer.read_text())
    if len(blocks) != 1:
        return "malformed", f"{len(blocks)} ```rust blocks (want exactly one)"
    source = work / f"{answer.parent.name}-{answer.stem}.rs"
    source.write_text(blocks[0])
    binary = source.with_suffix("")
    code, output = run(["rustc", "--edition", "2021", "--crate-name", "main", "--extern",
                        f"libc={libc_dir / 'liblibc.rlib'}", "-L", str(libc_dir), "-o", str(binary),
                        str(source)], cwd=work)
    if code != 0:
        first = next((line for line in output.splitlines() if line.startswith("error")), output[:200])
        return "compile-error", first
    failures = run_tests(binary, HERE / "corpus" / f"{Path(c_name).stem}.json")
    if failures:
        return "test-failure", f"{len(failures)} failing; first: {failures[0]}"
    if stage == "idiomatic" and re.search(r"\bunsafe\b", blocks[0]):
        return "unsafe", "compiles and passes, but uses unsafe"
    if stage == "idiomatic" and re.search(r"\blibc\b", blocks[0]):
        return "libc", "idiomatic answer uses libc"
    return "pass", "compiles and passes every test"


def check_c_programs(work: Path, verbose: bool) -> int:
    problems = 0
    for c_file in sorted((HERE / "corpus").glob("*.c")):
        binary = work / f"gcc-{c_file.stem}"
        code, output = run(["gcc", "-O0", "-Wall", "-Wextra", "-Werror", "-o", str(binary), str(c_file)],
                           cwd=work)
        failures = [f"gcc: {output}"] if code != 0 else run_tests(binary, c_file.with_suffix(".json"))
        problems += bool(failures)
        if failures or verbose:
            print(f"{'FAIL' if failures else 'ok  '} {c_file.name} (gcc)" + "".join(f"\n     {f}" for f in failures))
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-gcc", action="store_true", help="do not build and test the C programs")
    parser.add_argument("--verbose", action="store_true", help="also list what passed")
    args = parser.parse_args()
    problems = 0
    with tempfile.TemporaryDirectory(prefix="verify-answers-") as tmp:
        work = Path(tmp)
        if not args.no_gcc:
            if shutil.which("gcc"):
                problems += check_c_programs(work, args.verbose)
            else:
                print("skip C programs: gcc not found")
        libc_dir = work / "libc"
        libc_dir.mkdir()
        build_libc(libc_dir)
        seen = set()
        for folder in sorted(p for p in (HERE / "answers").iterdir() if p.is_dir()):
            match = folder / "match.txt"
            c_name = match.read_text().strip() if match.exists() else f"{folder.name}.c"
            for stage in STAGES:
                attempts = sorted(folder.glob(f"{stage}-*.md"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))
                if not attempts:
                    print(f"FAIL {folder.name}: no {stage} answers")
                    problems += 1
                for answer in attempts:
                    number = int(answer.stem.rsplit("-", 1)[1])
                    key = (folder.name, stage, number)
                    seen.add(key)
                    want = EXPECTED.get(key, "pass")
                    if answer == attempts[-1] and want != "pass":
                        want = "pass (a stage's last attempt)"
                    got, detail = outcome(answer, c_name, libc_dir, work, stage)
                    ok = want.startswith(got)
                    problems += not ok
                    if not ok or args.verbose:
                        print(f"{'ok  ' if ok else 'FAIL'} {folder.name}/{answer.name}: expected {want}, "
                              f"got {got}: {detail}")
        for key in sorted(set(EXPECTED) - seen):
            print(f"FAIL {'/'.join(map(str, key))}: listed in EXPECTED but there is no such answer")
            problems += 1
    print(f"verify_answers: {'all good' if problems == 0 else f'{problems} problem(s)'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
