"""A control for self-checking tests: a translation passes them only if its tests can fail.

TransCoder-style tasks (the shared corpus's ``transcoder_ir``) test a program by its own ``main``: the C program
holds ``f_gold`` (the reference) and ``f_filled`` (the function under test), and ``%t N`` exits 0 when the two
agree on parameter set N. The translation carries that ``main`` too, so a translation whose ``main`` checks
nothing (``fn main() {}``, or one that ignores the comparison) passes every test: the exit status alone cannot
tell. The control: after the tests pass, the translation is built once more with its ``f_filled`` returning a
value it cannot return (an integer with its lowest bit flipped, a negated bool, a float tripled or made 1.0 from
0.0) and the same tests run; at least one must now fail. A translation without ``f_filled`` is refused before
that, since its ``main`` cannot be checking it.

Where the control cannot be built (``f_filled`` generic, a method, inside a module, with patterns for parameters,
returning anything but a number or a bool, or the perturbed program does not compile), the tests' verdict
stands as it is: the control never fails a translation for the way it is written.
"""

from __future__ import annotations

import re

from .records import TestSuite
from .rust_source import mask_comments_and_strings

#: The function under test and the reference, by TransCoder's names.
UNDER_TEST = "f_filled"
REFERENCE = "f_gold"
#: What the original ``f_filled`` is renamed to in the perturbed program.
RENAMED = "f_filled__c2rust_original"

_C_DEFINES = re.compile(r"(?<![A-Za-z0-9_])(f_filled|f_gold)\s*\(")
_RUST_DEF = re.compile(r"(?<![A-Za-z0-9_])fn\s+f_filled(?![A-Za-z0-9_])\s*(<?)")
#: The qualifiers an ``fn`` item may carry, read backwards from ``fn``: kept on the wrapper.
_QUALIFIERS = re.compile(r"((?:pub(?:\s*\([^)]*\))?\s+)?(?:const\s+)?(?:async\s+)?(?:unsafe\s+)?"
                         r"(?:extern\s*(?:\"[^\"]*\"\s*)?)?)$")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INTEGERS = frozenset({
    "i8", "i16", "i32", "i64", "i128", "isize", "u8", "u16", "u32", "u64", "u128", "usize", "c_char", "c_schar",
    "c_uchar", "c_short", "c_ushort", "c_int", "c_uint", "c_long", "c_ulong", "c_longlong", "c_ulonglong"})
_FLOATS = frozenset({"f32", "f64", "c_float", "c_double"})
_TYPE_PATH = re.compile(r"^(?:::)?(?:(?:std|core)\s*::\s*(?:os\s*::\s*raw|ffi)|libc)\s*::\s*")


def applies(c_source: str, suite: TestSuite) -> bool:
    """Whether the task is self-checking: the C program defines ``f_filled`` and ``f_gold``, and every test is a
    command judged by its exit status (no sample to compare output with)."""
    if not suite.cases or any(case.sample is not None for case in suite.cases):
        return False
    return {m.group(1) for m in _C_DEFINES.finditer(c_source)} == {UNDER_TEST, REFERENCE}


def missing(code: str) -> str | None:
    """Why a translation of a self-checking task is refused before compiling (it defines no ``f_filled``), or
    None."""
    if _RUST_DEF.search(mask_comments_and_strings(code)) is not None:
        return None
    return ("the program defines no f_filled: the tests check the translation of f_filled against f_gold, so "
            "translate every function of the C program, f_filled and main included, under their C names")


def perturbed(code: str) -> str | None:
    """``code`` with ``f_filled`` answering wrong (see the module's docstring), or None when that cannot be
    built reliably from the text."""
    masked = mask_comments_and_strings(code)
    found = list(_RUST_DEF.finditer(masked))
    if len(found) != 1 or found[0].group(1):  # none, several (cfg'd variants), or generic
        return None
    match = found[0]
    if _depth(masked, match.start()) != 0:  # a method or inside a module: a wrapper beside it changes nothing
        return None
    open_paren = masked.find("(", match.end())
    if open_paren < 0 or masked[match.end():open_paren].strip():
        return None
    close = _closing(masked, open_paren)
    if close is None:
        return None
    params = _params(code, masked, open_paren + 1, close)
    body = masked.find("{", close)
    arrow = re.fullmatch(r"\s*->\s*(.+?)\s*", masked[close + 1:body] if body > 0 else "", re.S)
    if params is None or arrow is None:
        return None
    returned = code[close + 1 + arrow.start(1):close + 1 + arrow.end(1)]
    change = _change(returned)
    qualifiers = _QUALIFIERS.search(masked[max(0, match.start() - 80):match.start()])
    if change is None or qualifiers is None:
        return None
    prefix = code[match.start() - len(qualifiers.group(1)):match.start()]
    call = f"{RENAMED}({', '.join(name for name, _ in params)})"
    if "unsafe" in prefix:
        call = f"unsafe {{ {call} }}"
    signature = ", ".join(f"{name}: {ty}" for name, ty in params)
    wrapper = (f"\n\n#[allow(dead_code, unused_unsafe)]\n{prefix}fn {UNDER_TEST}({signature}) -> {returned} {{\n"
               f"    let answer = {call};\n    {change}\n}}\n")
    name_at = masked.index(UNDER_TEST, match.start())
    return f"{code[:name_at]}{RENAMED}{code[name_at + len(UNDER_TEST):]}{wrapper}"


def _depth(masked: str, end: int) -> int:
    return masked.count("{", 0, end) - masked.count("}", 0, end)


def _closing(masked: str, open_paren: int) -> int | None:
    depth = 0
    for i in range(open_paren, len(masked)):
        if masked[i] in "([{":
            depth += 1
        elif masked[i] in ")]}":
            depth -= 1
            if depth == 0:
                return i if masked[i] == ")" else None
    return None


def _params(code: str, masked: str, start: int, end: int) -> list[tuple[str, str]] | None:
    """(name, type) of each parameter, the type as written; None for ``self`` or a pattern."""
    pieces: list[tuple[int, int]] = []
    depth, begin = 0, start
    for i in range(start, end):
        ch = masked[i]
        if ch in "([{<":
            depth += 1
        elif ch in ")]}>" and not (ch == ">" and masked[i - 1] == "-"):
            depth -= 1
        elif ch == "," and depth == 0:
            pieces.append((begin, i))
            begin = i + 1
    pieces.append((begin, end))
    params: list[tuple[str, str]] = []
    for a, b in pieces:
        text = masked[a:b]
        if not text.strip():
            continue
        colon = text.find(":")
        if colon < 0 or text[colon:colon + 2] == "::":
            return None
        pattern = text[:colon].strip()
        if pattern.startswith("mut "):
            pattern = pattern[4:].strip()
        if not _NAME.fullmatch(pattern) or pattern in ("self", "_"):
            return None
        params.append((pattern, code[a + colon + 1:b].strip()))
    return params


def _change(returned: str) -> str | None:
    """The expression that turns ``answer`` (of type ``returned``) into a value it is not, or None."""
    name = _TYPE_PATH.sub("", returned.strip())
    if name in _INTEGERS:
        return "answer ^ 1"
    if name == "bool":
        return "!answer"
    if name in _FLOATS:
        return "if answer == 0.0 { 1.0 } else { answer * 3.0 }"
    return None


__all__ = ["REFERENCE", "RENAMED", "UNDER_TEST", "applies", "missing", "perturbed"]
