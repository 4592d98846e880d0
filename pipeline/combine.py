"""Assemble verified items into one pure-Rust program (``combined.rs``) and verify it like a whole-file answer.

Once every function (or recursion group) of a program has passed FFI verification (:mod:`pipeline.ffi`),
:func:`combine` writes the program with no C left: the type definitions (:mod:`pipeline.c_types`), a Rust
definition for every global (:attr:`~pipeline.c_types.TypeTranslation.global_definitions` where the
initializer was simple, else one supplied by the caller, from the model), and the functions in bottom-up
order. The functions keep their C ABI form, so they call each other exactly as they did across the FFI
boundary. :func:`verify_combined` builds it with the whole-file toolchain and runs the task's tests; a build
failure is reported per item (each rustc error attributed to the item whose lines it points at).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from .build import Toolchain
from .c_program import CProgram
from .c_types import TypeTranslation
from .records import TestSuite
from .rust_source import strip_repeated
from .sandbox import Limits, Sandbox
from .testing import TestVerdict, run_test_suite

PRELUDE = (
    "#![allow(non_camel_case_types, non_snake_case, non_upper_case_globals, dead_code, unused_imports, "
    "unused_mut, unused_unsafe, unused_variables, unused_assignments, unused_parens, static_mut_refs)]\n"
)
#: The key a build error is filed under when it points at no item's lines.
WHOLE_PROGRAM = "program"


@dataclass(frozen=True)
class CombinedProgram:
    """The assembled source, the lines each item occupies in it, and the items that had no Rust to add."""

    source: str
    lines: tuple[tuple[str, int, int], ...] = ()  # (item key, first line, last line), 1-based, inclusive
    missing: tuple[str, ...] = ()

    def item_at(self, line: int) -> str | None:
        for key, first, last in self.lines:
            if first <= line <= last:
                return key
        return None


def combine(
    program: CProgram,
    translation: TypeTranslation,
    functions: Mapping[tuple[str, ...], str],
    globals_code: Mapping[str, str] | None = None,
) -> CombinedProgram:
    """One Rust program from ``functions`` (each function group's keys -> its verified Rust) and the globals'
    definitions (``globals_code`` adds or overrides the deterministic ones, item key -> Rust).

    Items with no Rust (a function group or global not given, a type left to the model) are listed in
    :attr:`CombinedProgram.missing`; the source is still assembled from the rest.
    """
    by_group = {tuple(keys): code for keys, code in functions.items()}
    definitions = {**translation.global_definitions, **(globals_code or {})}
    blocks: list[tuple[str, str]] = [("types", translation.rust_source().strip())]
    missing: list[str] = [key for key in translation.unsupported if not key.startswith(("function:", "global:"))]
    for item in program.of_kind("global"):
        code = definitions.get(item.key)
        if code is None:
            missing.append(item.key)
        else:
            blocks.append((item.key, code.strip()))
    for group in program.function_groups():
        code = by_group.get(group)
        if code is None:
            missing.extend(group)
        else:
            blocks.append((group[0] if len(group) == 1 else "+".join(group), code.strip()))
    # Two answers may both declare a library symbol (`extern "C" { static mut stderr: ... }`) or write the
    # same helper: the program keeps the first.
    seen: dict[str, str] = {}
    blocks = [(key, strip_repeated(block, seen)[0].strip()) for key, block in blocks]
    text = PRELUDE
    lines: list[tuple[str, int, int]] = []
    for key, block in blocks:
        if not block:
            continue
        text += "\n"
        first = text.count("\n") + 1
        text += block + "\n"
        lines.append((key, first, text.count("\n")))
    return CombinedProgram(text, tuple(lines), tuple(missing))


@dataclass(frozen=True)
class CombineVerdict:
    """How the combined program fared: ``stage`` is ``"passed"``, ``"missing"`` (items without Rust),
    ``"build"`` (rustc errors, in ``per_item`` by item key, :data:`WHOLE_PROGRAM` for the rest) or
    ``"tests"`` (``verdict`` holds the failing tests)."""

    stage: str
    feedback: str = ""
    per_item: dict[str, str] = field(default_factory=dict)
    verdict: TestVerdict | None = None

    @property
    def passed(self) -> bool:
        return self.stage == "passed"


def attribute_errors(combined: CombinedProgram, diagnostics: str) -> dict[str, str]:
    """rustc's errors (as :meth:`Toolchain.build` returns them) grouped by the item each one points at."""
    per_item: dict[str, list[str]] = {}
    for chunk in re.split(r"\n\n(?=error|\.\.\. and)", diagnostics.strip()):
        where = re.search(r"-->\s*\S*?main\.rs:(\d+):\d+", chunk)
        key = combined.item_at(int(where.group(1))) if where else None
        per_item.setdefault(key or WHOLE_PROGRAM, []).append(chunk)
    return {key: "\n\n".join(chunks) for key, chunks in per_item.items()}


async def verify_combined(
    combined: CombinedProgram,
    suite: TestSuite,
    *,
    toolchain: Toolchain,
    sandbox: Sandbox,
    limits: Limits,
) -> CombineVerdict:
    """Build ``combined`` as a program (no C linked) and run ``suite`` against it. Failures are verdicts;
    raises OSError when the build directory cannot be written, and what the sandbox raises for its own errors.
    """
    if combined.missing:
        return CombineVerdict("missing", "items without a Rust translation: " + ", ".join(combined.missing))
    async with sandbox.build_dir() as build_dir:
        built = await toolchain.build(combined.source, build_dir)
        if not built.ok or built.binary is None:
            per_item = attribute_errors(combined, built.diagnostics)
            return CombineVerdict(
                "build",
                "the combined program does not compile: " + ", ".join(sorted(per_item)),
                per_item,
            )
        verdict = await run_test_suite(built.binary, suite, sandbox=sandbox, limits=limits)
    if verdict.passed:
        return CombineVerdict("passed", verdict=verdict)
    return CombineVerdict("tests", f"the combined program fails tests:\n{verdict.feedback()}", verdict=verdict)
