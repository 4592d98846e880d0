"""Directive mode: answers the simulator writes itself, for synthetic benchmark corpora.

A task opts in with one line of its first user message (typically a comment in the C source)::

    // @sim {"id": "t42", "unidiomatic": ["compile_error", "pass"], "idiomatic": ["test_fail", "pass"],
    //       "stdout": "42", "tokens": 300}

(on ONE line). Each stage declared in :data:`pipeline.records.STAGE_SPECS` may have a list under its name. For
the request's stage and attempt the outcome is ``list[attempt - 1]`` (the last one repeats; a missing list means
``["pass"]``). Outcomes:

* ``pass``: a complete program whose ``main`` prints ``stdout`` with ``println!`` (so the output is ``stdout``
  followed by one newline) and exits 0;
* ``compile_error``: the same kind of program with a type error;
* ``test_fail``: compiles, prints something else and exits 1;
* ``unsafe``: like ``pass`` but goes through an ``unsafe`` block;
* ``no_code``: prose only, no fenced block;
* ``truncated``: the first half of a ``pass`` answer, sent with finish_reason ``length``.

Code comes in a ```rust fence wrapped in prose, padded with ``//`` lines to about ``tokens`` tokens, and names
the directive's ``id`` in a comment so programs of different tasks differ.

Requests for several choices (``n``): an attempt's entry may itself be a list, one outcome per choice (the last
repeats): ``"unidiomatic": [["test_fail", "pass"], "pass"]`` fails choice 1 of attempt 1 and passes choice 2.
``"success_rate": P`` (0 to 1) instead draws every choice of every attempt and stage: ``pass`` with probability P,
else the ``"failure"`` outcome (default ``test_fail``), from an RNG seeded with the id, stage, attempt, choice
and ``"seed"`` (default 0), so choice k of an attempt gets the same outcome whatever ``n`` the request asked for:
runs with n = 1, 2, 4 face the same per-choice success rate (and the same draws). Choice k > 1 names itself in a
comment, so the choices of one request are different programs, as a sampling model's are.
"""

from __future__ import annotations

import json
import logging
import random
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..records import STAGES
from .tokens import CHARS_PER_TOKEN

log = logging.getLogger(__name__)

OUTCOMES = ("pass", "compile_error", "test_fail", "unsafe", "no_code", "truncated")
MARKER = "@sim "


#: An attempt's entry: one outcome for every choice, or one per choice.
Entry = str | tuple[str, ...]


@dataclass(frozen=True)
class Directive:
    """A parsed ``@sim`` line."""

    id: str
    plans: Mapping[str, tuple[Entry, ...]] = field(default_factory=dict)  # outcomes by stage name
    stdout: str = ""
    tokens: int | None = None
    success_rate: float | None = None  # set: every choice passes with this probability (seeded)
    failure: str = "test_fail"  # the outcome of a choice that does not pass under success_rate
    seed: int = 0

    def outcome(self, stage: str, attempt: int, choice: int = 1) -> str:
        """The outcome for ``stage`` at ``attempt`` and ``choice`` (1-based); the last listed outcome repeats."""
        if self.success_rate is not None:
            draw = random.Random(f"{self.id}\0{stage}\0{attempt}\0{choice}\0{self.seed}").random()
            return "pass" if draw < self.success_rate else self.failure
        plan = self.plans.get(stage, ("pass",))
        if not plan:
            return "pass"
        entry = plan[min(max(attempt, 1), len(plan)) - 1]
        if isinstance(entry, str):
            return entry
        return entry[min(max(choice, 1), len(entry)) - 1] if entry else "pass"


def _outcomes(value: Any) -> tuple[Entry, ...]:
    if value is None:
        return ("pass",)
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        return tuple(tuple(str(i) for i in item) if isinstance(item, list) else str(item) for item in value)
    return ("pass",)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def find_directive(text: str) -> Directive | None:
    """The first ``@sim {JSON}`` line of ``text`` as a :class:`Directive`, or None when there is none.

    Lines whose JSON does not parse as an object are skipped (with a log warning).
    """
    if MARKER not in text:
        return None
    decoder = json.JSONDecoder()
    for line in text.splitlines():
        at = line.find(MARKER)
        if at < 0:
            continue
        rest = line[at + len(MARKER):].lstrip()
        try:
            obj, _ = decoder.raw_decode(rest)
        except ValueError:
            log.warning("ignoring an @sim line whose JSON does not parse: %.200s", line)
            continue
        if not isinstance(obj, dict):
            continue
        tokens = _number(obj.get("tokens"))
        rate = _number(obj.get("success_rate"))
        return Directive(
            id=str(obj.get("id", "")),
            plans={stage: _outcomes(obj.get(stage)) for stage in STAGES},
            stdout=str(obj.get("stdout", "")),
            tokens=int(tokens) if tokens is not None else None,
            success_rate=min(1.0, max(0.0, rate)) if rate is not None else None,
            failure=str(obj.get("failure", "test_fail")),
            seed=int(_number(obj.get("seed")) or 0),
        )
    return None


def rust_string_literal(text: str) -> str:
    """``text`` as a Rust ``"..."`` literal equal to ``text`` (lone surrogates become U+FFFD)."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif 0xD800 <= code <= 0xDFFF:
            out.append("\\u{fffd}")
        elif unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            out.append(f"\\u{{{code:x}}}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _comment_safe(text: str) -> str:
    # json.dumps escapes newlines and control characters, so the id cannot break out of a // comment.
    return json.dumps(text, ensure_ascii=True)


def _program(d: Directive, stage: str, outcome: str, choice: int = 1) -> str:
    """The Rust source for a code outcome (without padding)."""
    which = f" (choice {choice})" if choice > 1 else ""
    header = (
        f"// Rust translation ({stage}) of task {_comment_safe(d.id)}{which}, written by the simulator.\n"
        "// @@PAD@@\n"
    )
    output = f"const OUTPUT: &str = {rust_string_literal(d.stdout)};\n\n"
    if outcome == "compile_error":
        body = (
            "fn main() {\n"
            "    let count: i32 = \"not a number\";\n"
            "    println!(\"{} {}\", OUTPUT, count);\n"
            "}\n"
        )
    elif outcome == "test_fail":
        wrong = f"sim: wrong output for task {d.id}"
        if wrong == d.stdout:
            wrong += "!"
        output = f"const OUTPUT: &str = {rust_string_literal(wrong)};\n\n"
        body = (
            "fn main() {\n"
            "    println!(\"{}\", OUTPUT);\n"
            "    std::process::exit(1);\n"
            "}\n"
        )
    elif outcome == "unsafe":
        body = (
            "fn main() {\n"
            "    let bytes = OUTPUT.as_bytes();\n"
            "    // SAFETY: the bytes come from a &str, so they are valid UTF-8.\n"
            "    let text = unsafe { std::str::from_utf8_unchecked(bytes) };\n"
            "    println!(\"{}\", text);\n"
            "}\n"
        )
    else:
        body = (
            "fn main() {\n"
            "    println!(\"{}\", OUTPUT);\n"
            "}\n"
        )
    return header + output + body


def _pad(text: str, marker: str, target_chars: int, filler: Callable[[int], str]) -> str:
    """Replace the line holding ``marker`` with filler lines so ``text`` is about ``target_chars`` long."""
    lines: list[str] = []
    deficit = target_chars - (len(text) - len(marker) - 1)
    n = 0
    while deficit > 0:
        line = filler(n)
        lines.append(line)
        deficit -= len(line) + 1
        n += 1
    replacement = "\n".join(lines)
    if not lines:
        return text.replace(marker + "\n", "", 1)
    return text.replace(marker, replacement, 1)


def _prose_filler(n: int) -> str:
    return f"I would need more context about the intended behaviour before writing code ({n:04d})."


def render(d: Directive, stage: str, attempt: int, choice: int = 1) -> tuple[str, str]:
    """The assistant message for ``d`` at ``stage``/``attempt`` (choice ``choice`` of the request), and its
    finish_reason."""
    outcome = d.outcome(stage, attempt, choice)
    target = (d.tokens or 0) * CHARS_PER_TOKEN
    name = _comment_safe(d.id)
    if outcome == "no_code" or outcome not in OUTCOMES:
        why = "" if outcome == "no_code" else f" (unknown simulator outcome {outcome!r})"
        prose = (
            f"I am sorry, but I cannot produce a Rust translation of task {name} right now{why}. "
            "The program relies on behaviour I could not reproduce with confidence.\n"
            "@@PAD@@\n"
        )
        return _pad(prose, "@@PAD@@", target, _prose_filler), "stop"
    code_outcome = "pass" if outcome == "truncated" else outcome
    text = (
        f"Here is the {stage} Rust translation of the C program.\n\n"
        "```rust\n"
        f"{_program(d, stage, code_outcome, choice)}"
        "```\n\n"
        "The translation keeps the observable behaviour of the original: the same output and exit code.\n"
    )
    text = _pad(text, "// @@PAD@@", target, lambda n: f"// filler line {n:05d} for task {name}: padding.")
    if outcome == "truncated":
        return text[: len(text) // 2], "length"
    return text, "stop"
