"""What one function-level prompt shows, and whether a program needs function-level translation at all.

:func:`function_context` gathers, for one function or recursion group, only what translating it needs: the
group's full C definitions, and in declared form the Rust definitions of the types it uses (with the types
those need), Rust declarations of the globals it uses, Rust signatures of the functions it calls, and the C
text of the macros it uses. No other function's body appears: that is the context function-level
translation exists to save. :func:`choose_granularity` decides, for ``--granularity auto``, whether the
whole file and its expected answer fit the model's context with room to spare.

Both are pure functions over :class:`~pipeline.c_program.CProgram` and
:class:`~pipeline.c_types.TypeTranslation`; the prompt wording itself belongs to :mod:`pipeline.prompts`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .c_program import CProgram
from .c_types import TypeTranslation
from .llm import estimate_tokens

Granularity = Literal["auto", "file", "function"]
TYPE_KINDS = ("struct", "union", "enum", "typedef")
#: Rust answers run longer than their C: the expected answer is this many times the C program's tokens.
ANSWER_RATIO = 1.5
#: auto goes whole-file only when prompt and expected answer fill at most this share of the context.
CONTEXT_SHARE = 0.75


@dataclass(frozen=True)
class FunctionContext:
    """The pieces of one function-level prompt, each a block of text ("" when there is nothing).

    ``c_types`` holds the C text of types :mod:`pipeline.c_types` could not write in Rust (the model must
    define them), keyed by item.
    """

    group: tuple[str, ...]
    c_definitions: str
    rust_types: str
    rust_globals: str
    callee_signatures: str
    macros: str
    c_types: dict[str, str]

    def render(self) -> str:
        """The context as one text, in the order a reader needs it: macros, types, globals, callees, then the
        function(s) to translate."""
        parts = [
            ("C macros it uses", "c", self.macros),
            ("Rust types it uses (already defined, do not redefine)", "rust", self.rust_types),
            ("C types it uses that have no Rust definition yet (define them)", "c",
             "\n\n".join(self.c_types.values())),
            ("Globals it uses (declared for you)", "rust", self.rust_globals),
            ("Functions it calls (declared for you)", "rust", self.callee_signatures),
            (f"The C function{'s' if len(self.group) > 1 else ''} to translate", "c", self.c_definitions),
        ]
        return "\n\n".join(f"{title}:\n```{lang}\n{text}\n```" for title, lang, text in parts if text)

    def tokens(self) -> int:
        """The estimate :func:`pipeline.llm.estimate_tokens` gives the rendered context as one message."""
        return estimate_tokens([{"role": "user", "content": self.render()}])


def _type_closure(program: CProgram, start: set[str]) -> list[str]:
    """``start``'s type items and every type item they use, in source order (macros and functions excluded:
    a Rust definition has its array sizes resolved already)."""
    seen: set[str] = set()
    todo = [key for key in start if key.split(":", 1)[0] in TYPE_KINDS]
    while todo:
        key = todo.pop()
        if key in seen or key not in program:
            continue
        seen.add(key)
        todo.extend(k for k in program[key].uses if k.split(":", 1)[0] in TYPE_KINDS)
    return [item.key for item in program.items if item.key in seen]


def _macro_closure(program: CProgram, start: set[str]) -> list[str]:
    seen: set[str] = set()
    todo = [key for key in start if key.startswith("macro:")]
    while todo:
        key = todo.pop()
        if key in seen or key not in program:
            continue
        seen.add(key)
        todo.extend(k for k in program[key].uses if k.startswith("macro:"))
    return [item.key for item in program.items if item.key in seen]


def function_context(program: CProgram, translation: TypeTranslation, keys: Sequence[str]) -> FunctionContext:
    """The context for translating the functions ``keys`` (one, or a recursion group) together.

    Raises KeyError for a key the program does not have.
    """
    group = [program[key] for key in keys]
    inside = set(keys)
    uses = {key for item in group for key in item.uses} - inside
    callees = [item.key for item in program.items if item.key in uses and item.kind == "function"]
    globals_ = [item.key for item in program.items if item.key in uses and item.kind == "global"]
    signatures = [translation.signatures[key] for key in callees if key in translation.signatures]
    declarations = [translation.globals[key] for key in globals_ if key in translation.globals]
    # Types reached through callee signatures and global types count too: the model passes those values.
    rust_names = {t.rust_name: t.key for t in translation.types}
    named = {
        rust_names[word]
        for text in (*signatures, *declarations)
        for word in re.findall(r"\b\w+\b", text) if word in rust_names
    }
    type_keys = _type_closure(program, uses | named | {k for g in globals_ for k in program[g].uses})
    rust_types: list[str] = []
    c_types: dict[str, str] = {}
    shown: set[str] = set()
    for key in type_keys:
        if key in translation.unsupported:
            c_types[key] = program[key].text
            continue
        code = translation.code_for(key)
        if code and code not in shown:
            shown.add(code)
            rust_types.append(code)
    return FunctionContext(
        group=tuple(keys),
        c_definitions="\n\n".join(item.text for item in group),
        rust_types="\n\n".join(rust_types),
        rust_globals="\n".join(f"{d};" for d in declarations),
        callee_signatures="\n".join(f"{s};" for s in signatures),
        macros="\n".join(program[key].text for key in _macro_closure(program, uses)),
        c_types=c_types,
    )


@dataclass(frozen=True)
class GranularityChoice:
    """What ``--granularity`` came to for one program, with the numbers behind an ``auto`` decision."""

    granularity: Literal["file", "function"]
    reason: str
    program_tokens: int
    needed_tokens: int
    context_tokens: int | None


def choose_granularity(
    setting: Granularity, c_source: str, *, max_model_len: int | None, prompt_overhead_tokens: int = 600,
    answer_ratio: float = ANSWER_RATIO, context_share: float = CONTEXT_SHARE,
) -> GranularityChoice:
    """``file`` or ``function`` for a program of text ``c_source``.

    ``auto`` goes whole-file when the program's prompt (its tokens plus ``prompt_overhead_tokens`` of
    instructions) and the expected answer (``answer_ratio`` times the program) fill at most
    ``context_share`` of ``max_model_len`` (the engine passes its own, laxer, figures: see
    :mod:`pipeline.function_task`); when the server does not say its context length, whole-file
    (as before function-level existed).
    """
    program = estimate_tokens([{"role": "user", "content": c_source}])
    needed = program + prompt_overhead_tokens + int(program * answer_ratio)
    if setting != "auto":
        return GranularityChoice(setting, f"granularity = {setting}", program, needed, max_model_len)
    if max_model_len is None:
        return GranularityChoice("file", "the server does not say its context length", program, needed, None)
    budget = int(max_model_len * context_share)
    if needed <= budget:
        return GranularityChoice("file", f"program and answer need about {needed} tokens of {budget}",
                                 program, needed, max_model_len)
    return GranularityChoice("function", f"program and answer need about {needed} tokens, more than {budget} "
                             f"({context_share:.0%} of max_model_len {max_model_len})", program, needed,
                             max_model_len)
