"""The globals and types the deterministic translation leaves, translated by the model one item at a time.

:mod:`pipeline.c_types` writes the Rust of most types and of globals whose initializer is absent or a plain
literal; what it cannot write (a table initializer such as ``SORT_KEYS``, a bit-field struct) is listed in
:attr:`~pipeline.c_types.TypeTranslation.unsupported` with the reason. Each of those items gets one prompt
(:func:`item_prompt`): fixed instructions first (byte-identical for every item and task, for the server's
prefix cache), then the marker line ``Global-level item: NAME`` the simulator answers by, then the item's
C definition and what it needs in declared form (its Rust declaration, the Rust types, the signatures of the
functions it points at, its macros).

An answer is checked by building (:func:`verify_item`): the Rust types, an ``extern "C"`` block declaring the
functions and globals it refers to, and the answer, as a static library; a global's definition must have
exactly its declared Rust type (a probe takes its address as that type); a type's layout is compared with
gcc's (:func:`~pipeline.c_types.verify_layouts`). A failure goes back to the model naming the item, up to the
attempt limit. During FFI verification the C global stays in C; the verified Rust definitions serve the
combined program (:func:`translate_leftovers`, called by :func:`pipeline.function_stage.translate_by_function`).
An item that fails is recorded in the item book with the reason and blocks the combine only.

The prompt text is :data:`pipeline.prompts.GLOBAL_REQUEST`, beside the function-level one.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import anyio

from .build import Toolchain
from .c_program import CProgram
from .c_types import RustType, TypeTranslation, verify_layouts
from .ffi import RUST_PRELUDE
from .function_context import TYPE_KINDS, function_context
from .interfaces import Model
from .item_loop import Check, ask_until_verified
from .items import ItemBook
from .prompts import GLOBAL_REPLY, global_request
from .rust_source import given_names, strip_given, top_level_items
from .sandbox import Sandbox

log = logging.getLogger(__name__)

def leftover_items(program: CProgram, translation: TypeTranslation) -> list[str]:
    """The type and global keys the model must translate, in source order."""
    return [item.key for item in program.items
            if item.key in translation.unsupported and item.kind in (*TYPE_KINDS, "global")]


def item_prompt(program: CProgram, translation: TypeTranslation, key: str) -> str:
    """The first request for the global or type ``key``: instructions, the marker line, then its context."""
    item = program[key]
    context = function_context(program, translation, [key])
    parts = [
        ("C macros it uses", "c", context.macros),
        ("Rust types it uses (already defined, do not redefine)", "rust", context.rust_types),
        ("C types it uses that are translated separately", "c", "\n\n".join(context.c_types.values())),
        ("Globals it uses (declared for you)", "rust", context.rust_globals),
        ("Functions it refers to (declared for you)", "rust", context.callee_signatures),
        (f"The C {'global' if item.kind == 'global' else 'type'} to translate", "c", item.text),
    ]
    declared = translation.globals.get(key)
    if declared is not None:
        parts.append(("Its Rust declaration (keep this type)", "rust", f"pub {_as_mut(declared)};"))
    body = "\n\n".join(f"{title}:\n```{lang}\n{text}\n```" for title, lang, text in parts if text)
    return global_request(name=item.name, kind="global" if item.kind == "global" else "type",
                          program=program.path.name, context=body)


@dataclass(frozen=True)
class ItemVerdict:
    """How one item's answer fared: ``stage`` passed, missing (it defines no such item), rust_build, layout."""

    stage: str
    feedback: str = ""
    code: str = ""  # the answer without what the prompt gave

    @property
    def passed(self) -> bool:
        return self.stage == "passed"


def _as_mut(declaration: str) -> str:
    """``static NAME: T`` as ``static mut NAME: T`` (a Rust static holding raw pointers must be mut)."""
    return declaration if " mut " in declaration else declaration.replace("static ", "static mut ", 1)


def _declared_type(declaration: str) -> str:
    return declaration.split(":", 1)[1].strip()


def _given(program: CProgram, translation: TypeTranslation, key: str) -> set[str]:
    names = given_names(translation.rust_source())
    names |= {item.name for item in program.items if item.kind in ("function", "global") and item.key != key}
    return names - {program[key].name}


def _type_entry(program: CProgram, key: str, code: str) -> RustType:
    """The model's definition of type ``key`` as a :class:`RustType` for the layout probe: its fields are
    the ones named like a C member that is not a bit-field (offsetof cannot take those)."""
    item = program[key]
    text = item.text
    kind = "union" if re.search(r"\bpub\s+union\s", code) else "struct"
    fields = []
    for name in re.findall(r"^\s*pub\s+(?:r#)?(\w+)\s*:", code, re.MULTILINE):
        if re.search(rf"\b{name}\s*(?:\[[^\]]*\]\s*)*;", text) and not re.search(rf"\b{name}\s*:\s*\d", text):
            fields.append((name, name))
    c_type = item.name if key.startswith("typedef:") else f"{key.split(':', 1)[0]} {item.name}"
    return RustType(key, item.name, kind, code.strip(), c_type, tuple(fields))


async def verify_item(
    program: CProgram, translation: TypeTranslation, key: str, answer: str, *, toolchain: Toolchain, work: Path
) -> ItemVerdict:
    """Build the answer for ``key`` (see the module docstring). Failures are verdicts; raises OSError when
    ``work`` cannot be written."""
    item = program[key]
    code, removed = strip_given(answer, _given(program, translation, key))
    if removed:
        log.debug("global_stage: %s: removed what the prompt gave: %s", key, ", ".join(removed))
    kinds = {"static"} if item.kind == "global" else {"struct", "union", "type", "enum"}
    if not any(kind in kinds and name == item.name for kind, name, _, _ in top_level_items(code)):
        what = f"`pub static mut {item.name}`" if item.kind == "global" else f"the type `{item.name}`"
        return ItemVerdict("missing", f"The answer does not define {what}: define it between the marks.", code)
    externs = []
    context = function_context(program, translation, [key])
    for line in (context.callee_signatures + "\n" + context.rust_globals).splitlines():
        if line.strip():
            externs.append(f"    pub {line.strip()}")
    block = 'extern "C" {\n' + "\n".join(externs) + "\n}\n" if externs else ""
    probe = ""
    if item.kind == "global" and key in translation.globals:
        probe = (f"\npub fn c2rust_item_type_probe() -> *const {_declared_type(translation.globals[key])} "
                 f"{{\n    unsafe {{ std::ptr::addr_of!({item.name}) }}\n}}\n")
    source = f"{RUST_PRELUDE}\n{translation.rust_source()}\n{block}\n{code.strip()}\n{probe}"
    build_dir = work / "build"
    await _mkdir(build_dir)
    built = await toolchain.build_staticlib(source, build_dir)
    if not built.ok:
        return ItemVerdict("rust_build", f"The Rust translation of `{item.name}` does not compile:\n"
                                         f"{built.diagnostics}", code)
    if item.kind != "global":
        augmented = dataclasses.replace(translation, types=(*translation.types, _type_entry(program, key, code)))
        await _mkdir(work / "layout")
        report = await verify_layouts(program, augmented, toolchain, work / "layout")
        if not report.ok:
            problem = report.error or "; ".join(report.mismatches)
            return ItemVerdict("layout", f"The Rust type `{item.name}` does not have the C layout: {problem}", code)
    return ItemVerdict("passed", code=code)


async def _mkdir(path: Path) -> None:
    await anyio.to_thread.run_sync(lambda: path.mkdir(parents=True, exist_ok=True))


class ItemEnv(Protocol):
    """What translating an item needs (the function stage's FunctionEnv has it)."""

    @property
    def model(self) -> Model: ...
    @property
    def toolchain(self) -> Toolchain: ...
    @property
    def sandbox(self) -> Sandbox: ...
    @property
    def max_attempts(self) -> int: ...
    @property
    def system(self) -> str: ...
    @property
    def record(self) -> Callable[[dict[str, Any]], None]: ...


@dataclass(frozen=True)
class ItemOutcome:
    """One global's or type's end: ``status`` verified, resumed, or failed (with the reason)."""

    key: str
    status: str
    attempts: tuple[tuple[str, str], ...] = ()
    rust: str | None = None
    reason: str = ""
    requests: int = 0


@dataclass(frozen=True)
class Leftovers:
    """What :func:`translate_leftovers` produced: the translation with the model's types added, the globals'
    Rust definitions (item key -> code, for :func:`pipeline.combine.combine`) and each item's outcome."""

    translation: TypeTranslation
    globals_code: dict[str, str]
    outcomes: tuple[ItemOutcome, ...]

    @property
    def failed(self) -> list[str]:
        return [outcome.key for outcome in self.outcomes if outcome.status == "failed"]


async def translate_leftovers(
    env: ItemEnv, program: CProgram, translation: TypeTranslation, book: ItemBook, digests: Mapping[str, str]
) -> Leftovers:
    """Ask the model for each item of :func:`leftover_items` (resumed from ``book`` when verified at its
    current digest), verify, record in ``book``. Raises only fatal errors and OSError from the book."""
    globals_code: dict[str, str] = {}
    outcomes: list[ItemOutcome] = []
    for key in leftover_items(program, translation):
        earlier = book.verified_rust((key,), digests)
        if earlier is not None:
            outcome = ItemOutcome(key, "resumed", rust=earlier)
        else:
            outcome = await _translate_item(env, program, translation, key)
            if outcome.rust is not None:
                book.record((key,), "verified", digests, attempts=len(outcome.attempts), rust=outcome.rust)
            else:
                book.record((key,), "failed", digests, attempts=len(outcome.attempts), reason=outcome.reason)
        outcomes.append(outcome)
        if outcome.rust is None:
            continue
        if program[key].kind == "global":
            globals_code[key] = outcome.rust
        else:
            unsupported = {k: v for k, v in translation.unsupported.items() if k != key}
            translation = dataclasses.replace(
                translation, types=(*translation.types, _type_entry(program, key, outcome.rust)),
                unsupported=unsupported)
    return Leftovers(translation, globals_code, tuple(outcomes))


async def _translate_item(env: ItemEnv, program: CProgram, translation: TypeTranslation, key: str) -> ItemOutcome:
    async def check(code: str) -> Check:
        async with env.sandbox.build_dir() as build_dir:
            verdict = await verify_item(program, translation, key, code, toolchain=env.toolchain,
                                        work=Path(build_dir))
        return Check(verdict.stage, verdict.feedback, verdict.code)

    end = await ask_until_verified(
        env.model, system=env.system, first=item_prompt(program, translation, key), reply=GLOBAL_REPLY,
        max_attempts=env.max_attempts, purpose=f"{program.path.name}:{program[key].name}", check=check,
        record=env.record, tag={"item": key})
    return ItemOutcome(key, "verified" if end.rust is not None else "failed", end.attempts, rust=end.rust,
                       reason=end.reason, requests=end.requests)
