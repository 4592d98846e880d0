"""Specification of pipeline.extract: finding the Rust program in a model's answer."""

from __future__ import annotations

import pytest

from pipeline.extract import (
    BEGIN_MARK,
    END_MARK,
    NO_CODE,
    TRUNCATED,
    UNTERMINATED,
    extract_rust,
)

PROGRAM = 'use std::io::Read;\n\nfn main() {\n    println!("{}", 1 + 2);\n}\n'
HELPER = "fn add(a: i32, b: i32) -> i32 {\n    a + b\n}\n"
MAIN_USING_HELPER = 'fn main() {\n    println!("{}", add(1, 2));\n}\n'


def fence(body: str, tag: str = "rust", ticks: str = "```") -> str:
    return f"{ticks}{tag}\n{body}{ticks}\n"


@pytest.mark.parametrize(
    ("answer", "code", "source"),
    [
        pytest.param(f"{BEGIN_MARK}\n{PROGRAM}{END_MARK}\n", PROGRAM, "markers", id="markers"),
        pytest.param(
            f"Here you go.\n{BEGIN_MARK}\n{fence(PROGRAM)}{END_MARK}\nDone.",
            PROGRAM,
            "markers",
            id="markers-around-a-fence",
        ),
        pytest.param(
            f"  ---- rust begin ---\n{PROGRAM}------RUST END------\n",
            PROGRAM,
            "markers",
            id="markers-with-other-dash-counts-and-case",
        ),
        pytest.param(
            f"{BEGIN_MARK}\nfn main() {{}}\n{END_MARK}\nOn second thought:\n"
            f"{BEGIN_MARK}\n{PROGRAM}{END_MARK}\n",
            PROGRAM,
            "markers",
            id="two-marker-pairs-longest-main-wins",
        ),
        pytest.param(
            f"Sure! Here is the translation:\n\n{fence(PROGRAM)}\nIt reads stdin and prints.",
            PROGRAM,
            "fence",
            id="fence-with-prose",
        ),
        pytest.param(fence(PROGRAM, "rs"), PROGRAM, "fence", id="fence-rs"),
        pytest.param(fence(PROGRAM, "Rust"), PROGRAM, "fence", id="fence-Rust-capitalised"),
        pytest.param(fence(PROGRAM, "rust title=main.rs"), PROGRAM, "fence", id="fence-with-extra-info"),
        pytest.param(fence(PROGRAM, "", "~~~~"), PROGRAM, "fence", id="untagged-tilde-fence-with-main"),
        pytest.param(fence(PROGRAM, ""), PROGRAM, "fence", id="untagged-fence-with-main"),
        pytest.param(
            "The C was:\n" + fence("int main(void) { return 0; }\n", "c") + "Rust:\n" + fence(PROGRAM),
            PROGRAM,
            "fence",
            id="c-block-ignored",
        ),
        pytest.param(
            "Cargo.toml is not needed:\n" + fence("[package]\nname = 'x'\n", "") + fence(PROGRAM),
            PROGRAM,
            "fence",
            id="untagged-block-without-main-ignored",
        ),
        pytest.param(
            fence(HELPER) + "and the program:\n" + fence(MAIN_USING_HELPER),
            HELPER + "\n" + MAIN_USING_HELPER,
            "fence",
            id="helper-block-joined-in-order",
        ),
        pytest.param(
            "The bug was here:\n"
            + fence(HELPER)
            + "Full program:\n"
            + fence(HELPER + "\n" + MAIN_USING_HELPER),
            HELPER + "\n" + MAIN_USING_HELPER,
            "fence",
            id="excerpt-of-the-program-not-joined",
        ),
        pytest.param(
            fence('fn main() {\n    println!("draft");\n}\n') + "Better:\n" + fence(PROGRAM),
            PROGRAM,
            "fence",
            id="two-main-blocks-longest-wins",
        ),
        pytest.param(fence(HELPER), HELPER, "fence", id="no-main-returns-the-rust-block"),
        pytest.param(
            "<think>\nMaybe ```rust\nfn main() { wrong }\n```\n</think>\n" + fence(PROGRAM),
            PROGRAM,
            "fence",
            id="think-section-removed",
        ),
        pytest.param(
            "the template opened the reasoning... fn main() { no }\n</think>\n" + fence(PROGRAM),
            PROGRAM,
            "fence",
            id="reasoning-closed-without-open-tag",
        ),
        pytest.param("Here is the program:\n\n" + PROGRAM + "\nThat's it.", PROGRAM, "bare", id="bare-code"),
    ],
)
def test_extracts_the_program(answer: str, code: str, source: str) -> None:
    """The program is found, whatever shape the answer took."""
    result = extract_rust(answer)
    assert (result.code, result.problem, result.source) == (code, None, source)
    assert result.candidates[0] == code


@pytest.mark.parametrize(
    ("answer", "truncated", "problem", "source"),
    [
        pytest.param("I cannot translate this program.", False, NO_CODE, "none", id="no-code"),
        pytest.param(fence("int main(void) { return 0; }\n", "c"), False, NO_CODE, "none", id="only-c-code"),
        pytest.param(f"{BEGIN_MARK}\n\n{END_MARK}\n", False, NO_CODE, "none", id="empty-markers"),
        pytest.param("<think>\nlong reasoning " * 5, True, TRUNCATED, "none", id="cut-off-while-thinking"),
        pytest.param(fence(PROGRAM), True, TRUNCATED, "fence", id="truncated-flag-with-complete-block"),
        pytest.param(
            f"{BEGIN_MARK}\n{PROGRAM}{END_MARK}\n",
            True,
            TRUNCATED,
            "markers",
            id="truncated-flag-with-markers",
        ),
        pytest.param("```rust\nfn main() {\n    let x =", False, UNTERMINATED, "fence", id="unclosed-fence"),
        pytest.param(
            "```rust\nfn main() {\n    let x =", True, TRUNCATED, "fence", id="unclosed-fence-flagged"
        ),
        pytest.param(f"{BEGIN_MARK}\n{PROGRAM}", False, UNTERMINATED, "markers", id="missing-end-marker"),
        pytest.param(
            f"{BEGIN_MARK}\n{fence(PROGRAM)}",
            False,
            UNTERMINATED,
            "markers",
            id="missing-end-marker-even-around-a-closed-fence",
        ),
    ],
)
def test_reports_why_there_is_no_program(answer: str, truncated: bool, problem: str, source: str) -> None:
    """No code is returned when the answer has none or may be incomplete, and the problem says why."""
    result = extract_rust(answer, truncated=truncated)
    assert (result.code, result.problem, result.source) == (None, problem, source)


def test_every_early_end_says_cut_off() -> None:
    """Problems about answers that ended early say "cut off" (the stage loop classifies them by it)."""
    assert "cut off" in TRUNCATED and "cut off" in UNTERMINATED
    assert "cut off" not in NO_CODE


def test_markers_win_over_fences_elsewhere() -> None:
    """Code between the markers is preferred to a fenced block elsewhere in the answer."""
    answer = "Old version:\n" + fence("fn main() {\n    old();\n}\n") + f"{BEGIN_MARK}\n{PROGRAM}{END_MARK}\n"
    assert extract_rust(answer).code == PROGRAM


def test_doc_comment_fences_stay_inside_the_code() -> None:
    """A ``` inside a doc comment does not close the block."""
    program = "/// Example:\n/// ```\n/// add(1, 2);\n/// ```\n" + HELPER + "\n" + MAIN_USING_HELPER
    assert extract_rust(fence(program)).code == program
