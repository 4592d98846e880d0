"""FFI verification of one translated function (or recursion group) inside the running C program.

SACToR's method, which lets a small model translate a large program one function at a time: the C program
is compiled with the function's definition removed, the Rust translation is compiled as a static library
that provides it, the two are linked, and the task's tests run against the result. A test failure then
points at that function and nothing else.

What :func:`harness_c_source` changes in the C program, and why:

- each function of the group: its definition becomes a prototype (the Rust library defines it now), without
  ``static``, since the symbol must now link from outside; the same for its other prototypes. ``main`` is
  removed, and the Rust library exports a C ``main`` that calls the translation's ``fn main()``
  (:func:`wrap_main`);
- each C function the group calls, and each global it uses: ``static`` dropped, so that the Rust side can
  name them in an ``extern "C"`` block (globals stay defined in C until the program is combined).

:func:`harness_rust_source` puts the Rust type definitions (:mod:`pipeline.c_types`), an ``extern "C"``
block declaring those C functions and globals, and the translation into one crate.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio

from .build import STATICLIB_LINK_FLAGS, Toolchain
from .c_program import CItem, CProgram
from .c_types import TypeTranslation
from .records import TestSuite
from .sandbox import Limits, Sandbox, run_process, tool_env
from .testing import TestVerdict, run_test_suite

log = logging.getLogger(__name__)

RUST_PRELUDE = (
    "#![allow(non_camel_case_types, non_snake_case, non_upper_case_globals, dead_code, unused_imports, "
    "unused_mut, unused_unsafe, unused_variables, unused_assignments, unused_parens)]\n"
)
GCC_FLAGS = ("-std=gnu11", "-O1", "-w")
_LINK_LIMITS = Limits(wall_seconds=120.0, memory_bytes=2 << 30, output_bytes=1 << 20)


@dataclass(frozen=True)
class FfiVerdict:
    """How one function's translation fared inside the C program.

    ``stage`` says where it ended: ``"passed"``, ``"rust_build"`` (the translation does not compile),
    ``"link"`` (C and Rust do not link: a missing or mistyped ``#[no_mangle]`` function, usually),
    ``"tests"`` (tests failed: ``verdict`` holds them), or ``"unsupported"`` (the harness cannot be built
    for this group yet). ``feedback`` is the text for the model, naming the function(s).
    """

    stage: str
    feedback: str = ""
    verdict: TestVerdict | None = None

    @property
    def passed(self) -> bool:
        return self.stage == "passed"


def _names(group: Sequence[CItem]) -> str:
    return ", ".join(f"`{item.name}`" for item in group)


def _group(program: CProgram, keys: Sequence[str]) -> list[CItem]:
    items = [program[key] for key in keys]
    wrong = [item.key for item in items if item.kind != "function"]
    if wrong:
        raise ValueError(f"an FFI group holds functions only, not {', '.join(wrong)}")
    return items


def _outside_uses(program: CProgram, group: Sequence[CItem], kind: str) -> list[CItem]:
    """The program's items of ``kind`` the group uses, in source order, the group's own excluded."""
    inside = {item.key for item in group}
    used = {key for item in group for key in item.uses if key.startswith(f"{kind}:")} - inside
    return [item for item in program.items if item.key in used]


def drop_static(text: str, name: str) -> str:
    """``text`` (a declaration of ``name``) without the ``static`` before the name, so it links externally."""
    match = re.search(rf"\b{re.escape(name)}\b", text)
    head = text[: match.start()] if match else text
    return re.sub(r"\bstatic\b\s*", "", head, count=1) + text[len(head):]


_MAIN = re.compile(r"\bfn\s+main\s*\(\s*\)\s*\{")


def wrap_main(rust_code: str) -> str | None:
    """``rust_code`` with its ``fn main()`` renamed and a C ``main`` exported that calls it, so a Rust main
    runs inside the linked C program (std reads the arguments itself on Linux; ``std::process::exit``
    flushes C's stdio). None when there is no ``fn main()`` without parameters and return type."""
    if len(_MAIN.findall(rust_code)) != 1:
        return None
    renamed = _MAIN.sub("fn c2rust_ffi_rust_main() {", rust_code)
    return (
        f"{renamed.rstrip()}\n\n#[no_mangle]\npub extern \"C\" fn main(_argc: libc::c_int, "
        "_argv: *mut *mut libc::c_char) -> libc::c_int {\n    c2rust_ffi_rust_main();\n    0\n}\n"
    )


def harness_c_source(program: CProgram, keys: Sequence[str]) -> str:
    """The C program with the group's definitions turned into prototypes and what the Rust side names made
    linkable (see the module docstring). Raises ValueError when ``keys`` name anything but functions."""
    group = _group(program, keys)
    edits: list[tuple[int, int, str]] = []

    def source(start: int, end: int) -> str:
        return program.source[start:end].decode("utf-8", "surrogateescape")

    for item in group:
        # main goes entirely: nothing in C calls it, and the Rust library exports the C entry point.
        prototype = "" if item.name == "main" else drop_static(item.signature, item.name) + ";"
        edits.append((item.span.start, item.span.end, prototype))
        for span in item.declarations:
            edits.append((span.start, span.end, drop_static(source(span.start, span.end), item.name)))
    for item in (*_outside_uses(program, group, "function"), *_outside_uses(program, group, "global")):
        if not item.is_static:
            continue
        for span in (item.span, *item.declarations):
            edits.append((span.start, span.end, drop_static(source(span.start, span.end), item.name)))
    text = program.source
    for start, end, replacement in sorted(edits, reverse=True):
        text = text[:start] + replacement.encode("utf-8", "surrogateescape") + text[end:]
    return text.decode("utf-8", "surrogateescape")


def harness_rust_source(
    program: CProgram, translation: TypeTranslation, keys: Sequence[str], rust_code: str
) -> str | None:
    """The crate that provides the group: type definitions, ``extern "C"`` declarations of the C functions
    and globals it uses, then ``rust_code``. None when one of those has no Rust declaration (see
    :attr:`TypeTranslation.unsupported`)."""
    group = _group(program, keys)
    externs = []
    for item in _outside_uses(program, group, "function"):
        signature = translation.signatures.get(item.key)
        if signature is None:
            return None
        externs.append(f"    pub {signature};")
    for item in _outside_uses(program, group, "global"):
        declaration = translation.globals.get(item.key)
        if declaration is None:
            return None
        externs.append(f"    pub {declaration};")
    block = 'extern "C" {\n' + "\n".join(externs) + "\n}\n" if externs else ""
    return f"{RUST_PRELUDE}\n{translation.rust_source()}\n{block}\n{rust_code.strip()}\n"


async def verify_function(
    program: CProgram,
    translation: TypeTranslation,
    keys: Sequence[str],
    rust_code: str,
    suite: TestSuite,
    *,
    toolchain: Toolchain,
    sandbox: Sandbox,
    limits: Limits,
) -> FfiVerdict:
    """Link ``rust_code`` (the group's translation) into the C program in place of the group and run
    ``suite``. Failures are verdicts; raises ValueError for a group that is not functions, OSError when the
    build directory cannot be written, and what the sandbox raises for its own errors.
    """
    group = _group(program, keys)
    names = _names(group)
    if any(item.name == "main" for item in group):
        wrapped = wrap_main(rust_code)
        if wrapped is None:
            return FfiVerdict("rust_build", "The Rust translation of `main` must define `fn main()` (no arguments, "
                                            "no return value; read arguments with std::env::args)")
        rust_code = wrapped
    rust_source = harness_rust_source(program, translation, keys, rust_code)
    if rust_source is None:
        missing = [item.key for kind in ("function", "global") for item in _outside_uses(program, group, kind)
                   if item.key not in translation.signatures and item.key not in translation.globals]
        reasons = "; ".join(f"{key}: {translation.unsupported.get(key, 'no Rust declaration')}" for key in missing)
        return FfiVerdict("unsupported", f"{names} uses what has no Rust declaration yet: {reasons}")
    c_source = harness_c_source(program, keys)
    async with sandbox.build_dir() as build_dir:
        work = Path(build_dir)
        built = await toolchain.build_staticlib(rust_source, work)
        if not built.ok or built.binary is None:
            return FfiVerdict("rust_build", f"The Rust translation of {names} does not compile:\n{built.diagnostics}")
        await anyio.to_thread.run_sync((work / "harness.c").write_text, c_source)
        linked = await run_process(
            ["gcc", *GCC_FLAGS, "-o", "program", "harness.c", built.binary.name, *STATICLIB_LINK_FLAGS],
            cwd=work, limits=_LINK_LIMITS, env=tool_env(),
        )
        if not linked.ok:
            errors = linked.stderr.decode("utf-8", "replace").strip()[-3000:]
            return FfiVerdict(
                "link",
                f"The Rust translation of {names} does not link with the C program (each function must be "
                f"`#[no_mangle] pub unsafe extern \"C\" fn` with the C signature):\n{errors or linked.describe()}",
            )
        verdict = await run_test_suite(work / "program", suite, sandbox=sandbox, limits=limits)
    if verdict.passed:
        return FfiVerdict("passed", verdict=verdict)
    log.debug("ffi: %s fails %d test(s)", names, len(verdict.failures))
    return FfiVerdict(
        "tests",
        f"With the Rust translation of {names} linked into the C program, tests fail:\n{verdict.feedback()}",
        verdict,
    )
