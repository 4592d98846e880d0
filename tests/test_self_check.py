"""The control for self-checking tests (pipeline/self_check.py): which tasks it applies to, and the program it
builds with f_filled answering wrong. The CLI-level behaviour is in tests/test_cheating_e2e.py."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline.self_check import RENAMED, applies, missing, perturbed
from pipeline.task import Task
from pipeline.testing import load_test_suite
from tests.conftest import SHARED_CORPUS

MAIN = """
fn main() {
    let i: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(0);
    std::process::exit(if @CALL@ { 0 } else { 1 });
}
"""

#: f_filled as a translation may write it -> how main calls it, comparing with the right answer.
BUILDABLE = {
    "int": ("fn f_filled(x: i32) -> i32 { x * x + 1 }", "f_filled([3, 7][i]) == [10, 50][i]"),
    "mut-param-usize": ("fn f_filled(mut n: usize) -> usize { n += 1; n }", "f_filled(i) == i + 1"),
    "bool-false-everywhere": ("pub fn f_filled(a: &[i32], n: i32) -> bool { a.len() as i32 > n }",
                              "f_filled(&[1, 2], 5) == false"),
    "float": ("fn f_filled(x: f64) -> f64 { x / 2.0 }", "(f_filled(4000.0) - 2000.0).abs() / 2000.0 < 0.001"),
    "float-zero": ("fn f_filled(x: f64) -> f64 { x * 0.0 }", "f_filled(5.0) == 0.0"),
    "unsafe-extern-c-raw-types": (
        'pub unsafe extern "C" fn f_filled(arr: *mut std::os::raw::c_int, n: std::os::raw::c_int)\n'
        "    -> std::os::raw::c_int { *arr.add(0) + n }",
        "unsafe { let mut a = [5]; f_filled(a.as_mut_ptr(), 1) == 6 }"),
    "returns-a-fn-pointer-param": ("fn f_filled(f: fn(i32) -> i32, x: i32) -> i32 { f(x) }",
                                   "f_filled(|v| v + 1, 1) == 2"),
}


def _compile(source: str, tmp_path: Path) -> subprocess.CompletedProcess[bytes]:
    (tmp_path / "main.rs").write_text(source)
    subprocess.run(["rustc", "--edition", "2021", "-o", str(tmp_path / "main"), str(tmp_path / "main.rs")],
                   check=True, capture_output=True, timeout=120)
    return subprocess.run([str(tmp_path / "main"), "0"], capture_output=True, timeout=30)


@pytest.mark.skipif(shutil.which("rustc") is None, reason="needs rustc")
@pytest.mark.parametrize(("function", "call"), list(BUILDABLE.values()), ids=list(BUILDABLE))
def test_the_program_with_f_filled_answering_wrong_builds_and_fails_its_check(
    function: str, call: str, tmp_path: Path
) -> None:
    """The original passes its own check; the perturbed program compiles and fails it, whatever the type."""
    source = function + MAIN.replace("@CALL@", call)
    assert _compile(source, tmp_path).returncode == 0
    wrong = perturbed(source)
    assert wrong is not None and RENAMED in wrong
    assert _compile(wrong, tmp_path).returncode == 1


@pytest.mark.parametrize(
    "function",
    [
        pytest.param("fn f_filled<T: Copy>(x: T) -> T { x }", id="generic"),
        pytest.param("struct S;\nimpl S { fn f_filled(&self, x: i32) -> i32 { x } }", id="method"),
        pytest.param("mod m { pub fn f_filled(x: i32) -> i32 { x } }", id="in-a-module"),
        pytest.param("fn f_filled(x: i32) -> String { x.to_string() }", id="returns-a-string"),
        pytest.param("fn f_filled(a: &mut [i32]) { a[0] = 1; }", id="returns-nothing"),
        pytest.param("fn f_filled((a, b): (i32, i32)) -> i32 { a + b }", id="pattern-parameter"),
        pytest.param("#[cfg(unix)]\nfn f_filled(x: i32) -> i32 { x }\n#[cfg(not(unix))]\nfn f_filled(x: i32) -> i32 "
                     "{ x }", id="two-definitions"),
    ],
)
def test_forms_the_control_cannot_build_leave_the_verdict_alone(function: str) -> None:
    """No perturbed program where a wrapper beside f_filled would not replace it or its type has no wrong value."""
    assert perturbed(function + MAIN.replace("@CALL@", "true")) is None


def test_a_translation_without_f_filled_is_named() -> None:
    assert missing("fn main() {}\n") is not None
    assert "defines no f_filled" in (missing("// fn f_filled(x: i32) -> i32\nfn main() {}") or "")
    assert missing("fn f_filled(x: i32) -> i32 { x }\nfn main() {}") is None


@pytest.mark.skipif(not SHARED_CORPUS.is_dir(), reason="needs ../shared/corpus")
def test_the_shared_corpus_transcoder_tasks_are_self_checking_and_the_others_are_not() -> None:
    """Every transcoder_ir task (f_gold, f_filled, `%t N` tests) gets the control; no codenet task does."""
    seen = {"transcoder_ir": 0, "codenet": 0}
    for c_path in sorted(SHARED_CORPUS.glob("*/*.c")):
        test_path = c_path.with_suffix(".json")
        if not test_path.exists():
            continue
        suite = load_test_suite(Task(c_path.stem, c_path, test_path))
        family = "transcoder_ir" if c_path.parent.name == "transcoder_ir" else "codenet"
        assert applies(c_path.read_text(errors="replace"), suite) == (family == "transcoder_ir"), c_path
        seen[family] += 1
    assert seen["transcoder_ir"] > 0 and seen["codenet"] > 0, seen
